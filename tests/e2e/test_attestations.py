"""End to end: the provenance every build records, the attestations ``sign`` makes of it and of
the CycloneDX SBOM, checked by stock cosign (Debian trixie's cosign 2.5, support/cosign.py)
against a real registry (Debian's docker-registry on 127.0.0.1), and a signed-only environment
that refuses examples/hello unsigned and takes it signed (promote, and flash onto a file).

The images are examples/hello rebuilt under versions of this module's own (every stage cached
by the session's build: seconds), so that signing them leaves the session's hello:1.0.0 as other
modules expect it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from imagebuilder.signing import provenance
from imagebuilder.store import attachments
from imagebuilder.store.layout import Store
from support.cosign import Cosign
from support.keys import pem_key_pair
from support.registry import Registry, available

from .conftest import Built, Cli, one_line_error, synthetic_image

pytestmark = [pytest.mark.e2e, pytest.mark.network,
              pytest.mark.skipif(not available(), reason="needs docker-registry (setup.sh)")]

PASSWORD = "attest-test-password"


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(tmp_path_factory.mktemp("cosign"), PASSWORD)


@pytest.fixture(scope="module")
def keys(cosign: Cosign) -> tuple[Path, Path]:
    """cosign.key and cosign.pub, by ``cosign generate-key-pair`` (cosign's key format)."""
    return cosign.generate_key_pair()


@pytest.fixture(scope="module")
def signer(cli: Cli) -> Cli:
    """The session's command line, with the password of cosign.key."""
    return Cli(cli.home, {"COSIGN_PASSWORD": PASSWORD})


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pem_pair(tmp: Path) -> tuple[Path, Path]:
    private, public, _ = pem_key_pair(tmp, "other")
    return private, public


def _rebuilt(cli: Cli, hello: Built, version: str) -> str:
    """examples/hello built again as hello:VERSION; its digest."""
    return str(cli.json("build", str(hello.app), "--version", version)["digest"])


def test_every_build_records_its_provenance(cli: Cli, hello: Built) -> None:
    store = Store(cli.home / "store")
    found = attachments.referrers(store, hello.digest, provenance.ARTIFACT_TYPE)
    assert len(found) == 1
    doc = json.loads(attachments.payload(store, found[0]))
    assert doc["subject"] == [{"name": hello.ref,
                               "digest": {"sha256": hello.digest.removeprefix("sha256:")}}]
    assert doc["predicateType"] == "https://slsa.dev/provenance/v1"
    build = doc["predicate"]["buildDefinition"]
    external = build["externalParameters"]
    assert external["config"]["digest"] == {"sha256": _sha(hello.app / "imagebuilder.toml")}
    assert external["lock"]["digest"] == {"sha256": _sha(hello.app / "imagebuilder.lock")}
    assert external["app"] == [{"name": "/app/hello.jar",
                                "digest": {"sha256": _sha(hello.app / "hello.jar")}}]
    assert build["internalParameters"]["suite"] == "trixie"
    # The session's build resolved against the archive: it names the signed index it read.
    archive = build["internalParameters"]["archive"]
    assert len(archive["inRelease"]["sha256"]) == 64 and archive["date"]
    lock = (hello.app / "imagebuilder.lock").read_text()
    deps = build["resolvedDependencies"]
    assert any(d["uri"].startswith("pkg:deb/debian/linux-image-") for d in deps)
    assert all(f'sha256 = "{d["digest"]["sha256"]}"' in lock for d in deps)
    assert doc["predicate"]["runDetails"]["builder"]["version"]["imagebuilder"]


def _verify_attestation(cosign: Cosign, pub: Path, kind: str, ref: str,
                        check: bool = True) -> list[dict]:  # type: ignore[type-arg]
    """The in-toto statements ``cosign verify-attestation --type KIND`` accepted."""
    result = cosign("verify-attestation", "--key", str(pub), "--type", kind,
                    "--insecure-ignore-tlog=true", "--allow-http-registry", ref, check=check)
    if result.returncode != 0:
        return []
    return [json.loads(base64.b64decode(json.loads(line)["payload"]))
            for line in result.stdout.splitlines() if line.strip()]


def test_cosign_verifies_the_attestations_sign_makes(cli: Cli, signer: Cli, hello: Built,
                                                     registry: Registry, cosign: Cosign,
                                                     keys: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    key, pub = keys
    digest = _rebuilt(cli, hello, "attest-1")
    out = signer.json("sign", "hello:attest-1", "--key", str(key))
    assert out["attestations"] == {"added": ["https://slsa.dev/provenance/v1",
                                             "https://slsa.dev/provenance/v0.2",
                                             "https://cyclonedx.org/bom"],
                                   "present": [], "missing": []}
    repo = f"{registry.host}/hello"
    pushed = cli.json("push", "hello:attest-1", repo, "--insecure")
    assert (pushed["signatures_sent"], pushed["attestations_sent"]) == (1, 3)
    ref = f"{repo}@{digest}"
    sbom = json.loads(cli("inspect", "hello:attest-1", "--sbom", "cyclonedx").stdout)
    for kind, predicate_type in (("slsaprovenance", "https://slsa.dev/provenance/v0.2"),
                                 ("slsaprovenance1", "https://slsa.dev/provenance/v1"),
                                 ("cyclonedx", "https://cyclonedx.org/bom")):
        statements = _verify_attestation(cosign, pub, kind, ref)
        assert [s["predicateType"] for s in statements] == [predicate_type], kind
        assert statements[0]["subject"][0]["digest"] == {"sha256": digest.split(":")[1]}
        if kind == "cyclonedx":
            assert statements[0]["predicate"] == sbom
    # Another key's cosign refuses; signing the registry's image with it attests there too.
    other, other_pub = _pem_pair(tmp_path)
    assert _verify_attestation(cosign, other_pub, "slsaprovenance1", ref, check=False) == []
    again = cli.json("sign", f"{repo}:attest-1", "--key", str(other), "--insecure")
    assert len(again["attestations"]["added"]) == 3
    assert len(_verify_attestation(cosign, other_pub, "cyclonedx", ref)) == 1


def _config(directory: Path, pub: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "imagebuilder.toml").write_text(textwrap.dedent(f"""\
        [image]
        name = "hello"
        version = "1.0.0"
        [app]
        path = "hello.jar"
        [env.test]
        vars = {{ GREETING = "hi" }}
        [env.prod]
        vars = {{ GREETING = "hello, production" }}
        signed_by = ["{pub}"]
        """))
    return directory


def test_a_signed_only_environment_refuses_the_unsigned_image_and_takes_it_signed(
        cli: Cli, signer: Cli, hello: Built, keys: tuple[Path, Path], tmp_path: Path) -> None:
    key, pub = keys
    digest = _rebuilt(cli, hello, "attest-2")
    config = str(_config(tmp_path / "envs", pub))
    disk = tmp_path / "server.img"
    refused = (f"image hello:attest-2 ({digest[:19]}) may not go to environment 'prod', which "
               f"takes only images signed by {pub}: it has no signatures")
    one_line_error(cli("promote", "hello:attest-2", "--env", "prod", "--force",
                       "--config", config, check=False), 2, refused)
    one_line_error(cli("flash", "hello:attest-2", str(disk), "--env", "prod",
                       "--config", config, check=False), 2, refused)
    assert not disk.exists()
    assert "prod" not in Store(cli.home / "store").tags("hello")

    signer("sign", "hello:attest-2", "--key", str(key))
    promoted = cli.json("promote", "hello:attest-2", "--env", "prod", "--force",
                        "--config", config)
    assert (promoted["environment"], promoted["digest"]) == ("prod", digest)
    flashed = json.loads(cli("flash", "hello:attest-2", str(disk), "--env", "prod",
                             "--config", config, "--json").stdout)
    assert (flashed["env"], flashed["verified"]) == ("prod", True)


def test_promote_in_a_registry_checks_the_registrys_signatures(
        registry: Registry, tmp_path: Path) -> None:
    """``promote --registry`` of an image the store lacks: the gate reads the registry's
    ``.sig`` tag (a synthetic image: no build, no boot)."""
    private, public = _pem_pair(tmp_path)
    config = str(_config(tmp_path / "envs", public))
    builder = Cli(tmp_path / "builder")
    synthetic_image(builder.home, "remote:1.0", [64], b"remote")
    repo = f"{registry.host}/remote"
    digest = builder.json("push", "remote:1.0", repo, "--insecure")["digest"]
    elsewhere = Cli(tmp_path / "elsewhere")  # an empty store: the image is only in the registry
    promote = ("promote", "1.0", "--env", "prod", "--force", "--registry", repo, "--insecure",
               "--config", config)
    one_line_error(elsewhere(*promote, check=False), 2,
                   f"image {repo}:1.0 ({digest[:19]}) may not go to environment 'prod', which "
                   f"takes only images signed by {public}: it has no signatures")
    assert elsewhere.json("sign", f"{repo}:1.0", "--key", str(private), "--insecure")["added"]
    out = json.loads(elsewhere(*promote, "--json").stdout)
    assert (out["digest"], out["registry"]) == (digest, f"{repo}:prod")


def test_promote_in_a_registry_puts_the_manifest_the_gate_verified(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review D, F1: a racing pusher moves the tag to an unsigned manifest once the gate has
    checked the signed one; the environment's tag still gets the signed manifest (in-process,
    so the race falls exactly between the gate and the promotion)."""
    from imagebuilder.cli import main
    from imagebuilder.registry.client import Client
    from imagebuilder.signing import policy
    private, public = _pem_pair(tmp_path)
    config = str(_config(tmp_path / "envs", public))
    builder = Cli(tmp_path / "builder")
    synthetic_image(builder.home, "remote:1.0", [64], b"signed")
    synthetic_image(builder.home, "evil:1.0", [64], b"unsigned")
    repo = f"{registry.host}/racing"
    signed = builder.json("push", "remote:1.0", repo, "--insecure")["digest"]
    unsigned = builder.json("push", "evil:1.0", f"{repo}:evil", "--insecure")["digest"]
    builder("sign", f"{repo}:1.0", "--key", str(private), "--insecure")
    verified = policy.verified

    def racing(source: object, ref: object, keys: object) -> object:
        found = verified(source, ref, keys)  # type: ignore[arg-type]
        if isinstance(source, Client):  # the racing pusher: 1.0 now names the unsigned one
            data, media_type = source.get_manifest("racing", "evil") or (b"", "")
            source.put_manifest("racing", "1.0", data, media_type)
        return found

    monkeypatch.setattr(policy, "verified", racing)
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "elsewhere"))
    code = main(["promote", "1.0", "--env", "prod", "--force", "--registry", repo,
                 "--insecure", "--config", config])
    assert code == 0
    assert registry.manifest_digest("racing", "1.0") == unsigned  # the race happened
    assert registry.manifest_digest("racing", "prod") == signed
