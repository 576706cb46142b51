"""What the build's sbom stage leaves out to stay fast, and that the bytes it writes are the same:
the SPDX document is not validated by spdx-tools at build time (the writer tests validate every
form of it), and the formats' libraries are imported in a thread while the disk is hashed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream
from test_sbom_writers import _inventory

from imagebuilder.sbom import cyclonedx, spdx
from imagebuilder.sbom.model import Inventory
from imagebuilder.store.layout import KERNEL_MEDIA_TYPE, Store
from imagebuilder.store.oci import sha256_digest

REPO = Path(__file__).resolve().parents[2]
VALIDATOR = "spdx_tools.spdx.validation.document_validator"


def _spdx_tools_writer(inv: Inventory) -> bytes:
    """The document as spdx-tools' own JSON writer writes it (validating first), in our form."""
    out = io.StringIO()
    write_document_to_stream(spdx.spdx_document(inv), out, validate=True)
    return json.dumps(json.loads(out.getvalue()), sort_keys=True, indent=2,
                      ensure_ascii=False).encode() + b"\n"


@pytest.mark.parametrize("inv", [_inventory(), _inventory(packages=(), jars=(), runtime=None)],
                         ids=["full", "empty"])
def test_spdx_bytes_are_those_of_spdx_tools_writer_validated_or_not(inv: Inventory) -> None:
    expected = _spdx_tools_writer(inv)
    assert spdx.document(inv) == expected
    assert spdx.document(inv, validate=False) == expected


def test_the_build_attaches_the_same_bytes_without_importing_spdx_validation(
        tmp_path: Path) -> None:
    """In a process of its own (imports are per process): preload imports both writers in its
    thread; attach then writes both documents, byte for byte what the validating writers give,
    and never imports spdx-tools' validator."""
    store = Store(tmp_path / "store")
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    inv = _inventory(digest=store.put_image("wiremock:3.9.1", {"cmdline": "ttyS0"}, [kernel]))
    (tmp_path / "inventory.json").write_text(inv.to_json())
    script = textwrap.dedent(f"""
        import sys, threading
        from pathlib import Path
        from imagebuilder.build import sboms
        from imagebuilder.sbom.model import Inventory
        from imagebuilder.store.layout import Store
        inv = Inventory.from_json(Path({str(tmp_path / "inventory.json")!r}).read_text())
        assert "imagebuilder.sbom.spdx" not in sys.modules
        sboms.preload()
        next(t for t in threading.enumerate() if t.name == "sbom-preload").join()
        assert "imagebuilder.sbom.spdx" in sys.modules
        assert "imagebuilder.sbom.cyclonedx" in sys.modules
        stored = sboms.attach(Store({str(tmp_path / "store")!r}), inv)
        print(" ".join(s.digest for s in stored))
        print({VALIDATOR!r} in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    digests, validator = out.stdout.split("\n")[:2]
    assert digests.split() == [sha256_digest(cyclonedx.document(inv)),
                               sha256_digest(spdx.document(inv))]
    assert validator == "False"
