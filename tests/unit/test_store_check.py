"""``imagebuilder check``: an intact store passes; each kind of damage is named with what it
affects and how to repair it, and the command exits 1 (human and --json modes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.cli import main
from imagebuilder.store.cache import Cache
from imagebuilder.store.check import check
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store

TITLE = "org.opencontainers.image.title"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def run(home: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return invoke


def _put(store: Store, ref: str, app: bytes) -> dict[str, str]:
    """An image with a shared kernel and jvm layer; its blobs by title (and manifest, config)."""
    kernel = store.add_blob_bytes(b"kernel" * 100, KERNEL_MEDIA_TYPE, {TITLE: "vmlinuz"})
    jvm = store.add_blob_bytes(b"jvm" * 100, INITRD_LAYER_MEDIA_TYPE, {TITLE: "jvm"})
    app_desc = store.add_blob_bytes(app, INITRD_LAYER_MEDIA_TYPE, {TITLE: "app"})
    digest = store.put_image(ref, {"cmdline": "console=ttyS0", "ref": ref},
                             [kernel, jvm, app_desc])
    image = store.resolve(ref)
    return {"vmlinuz": kernel.digest, "jvm": jvm.digest, "app": app_desc.digest,
            "manifest": digest, "config": image.manifest["config"]["digest"]}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_intact_store_passes(home: Path, run: Any) -> None:
    store = Store(home / "store")
    _put(store, "hello:1.0.0", b"app one")
    code, out, err = run("check")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["checked 5 blobs (1.9 KiB), 1 index entries, 0 cache entries",
                                "no damage found"]
    code, out, _ = run("check", "--json")
    assert code == 0
    report = json.loads(out)
    assert report == {"ok": True, "blobs": 5, "blob_bytes": report["blob_bytes"],
                      "index_entries": 1, "cache_entries": 0, "stale_scratch": 0, "problems": []}


def test_an_empty_home_passes(run: Any) -> None:
    assert run("check")[0] == 0


def test_a_damaged_shared_layer_names_every_image_using_it(home: Path, run: Any) -> None:
    store = Store(home / "store")
    blobs = _put(store, "hello:1.0.0", b"app one")
    _put(store, "hello:2.0.0", b"app two")
    _flip(store.blob_path(blobs["jvm"]))
    code, out, err = run("check")
    assert (code, err) == (1, "ERROR: the store is damaged (1 problem, listed above)\n")
    lines = out.splitlines()
    assert lines[1].startswith(f"DAMAGED blob {blobs['jvm'][:19]}: the jvm layer of hello:1.0.0 "
                               "is damaged")
    assert lines[2] == ("  repair: rebuild hello:1.0.0, hello:2.0.0 ('imagebuilder build' in "
                        "the app's directory replaces a damaged blob) or pull it again "
                        "('imagebuilder pull ... --force')")
    code, out, _ = run("check", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    (problem,) = report["problems"]
    assert (problem["kind"], problem["name"], problem["images"]) == (
        "blob", blobs["jvm"], ["hello:1.0.0", "hello:2.0.0"])


@pytest.mark.parametrize("part", ["vmlinuz", "app", "config", "manifest"])
def test_a_missing_blob(home: Path, part: str) -> None:
    store = Store(home / "store")
    blobs = _put(store, "hello:1.0.0", b"app one")
    store.blob_path(blobs[part]).unlink()
    report = check(store)
    (problem,) = report.problems
    assert problem.name == blobs[part]
    assert problem.problem.endswith("is missing")
    assert problem.images == ["hello:1.0.0"]


def test_a_truncated_blob_and_an_unused_damaged_one(home: Path) -> None:
    store = Store(home / "store")
    blobs = _put(store, "hello:1.0.0", b"app one")
    path = store.blob_path(blobs["app"])
    path.write_bytes(path.read_bytes()[:-1])
    stray = store.add_blob_bytes(b"nobody uses me", "application/octet-stream")
    _flip(store.blob_path(stray.digest))
    problems = {p.name: p for p in check(store).problems}
    assert problems[blobs["app"]].problem.startswith("the app layer of hello:1.0.0 is damaged")
    assert problems[stray.digest].repair == "nothing uses it: 'imagebuilder gc' deletes it"


def test_a_manifest_without_layers_and_a_corrupt_index(home: Path) -> None:
    store = Store(home / "store")
    blobs = _put(store, "hello:1.0.0", b"app one")
    empty = store.add_blob_bytes(json.dumps({"config": {"digest": blobs["config"], "size": 1},
                                             "layers": []}).encode(), "x")
    index = json.loads(store.index_path.read_text())
    index["manifests"].append({**index["manifests"][0], "digest": empty.digest,
                               "annotations": {"org.opencontainers.image.ref.name": "bad:1"}})
    store.index_path.write_text(json.dumps(index))
    (problem,) = check(store).problems
    assert problem.problem == "the manifest of bad:1 is not a valid image manifest (no layers)"
    store.index_path.write_text("{not json")
    problems = check(store).problems
    assert problems[0].kind == "index"
    assert "restore index.json" in problems[0].repair


def test_damaged_cache_entries(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    key = "ab" * 16
    path = cache.store(key, lambda dest: dest.write_bytes(b"stage output" * 100))
    store = Store(tmp_path / "store")
    assert check(store, cache).ok
    _flip(path)
    (problem,) = check(store, cache).problems
    assert (problem.kind, problem.name) == ("cache", key)
    assert "the next build that uses it deletes and rebuilds it" in problem.repair
    assert check(store, None).ok


def test_an_image_without_layers_is_one_line_for_export_and_run(home: Path, run: Any,
                                                                 tmp_path: Path) -> None:
    store = Store(home / "store")
    store.put_image("empty:1.0", {"cmdline": "console=ttyS0"}, [])
    for argv in (["export", "empty:1.0", "--format", "kernel-initrd", "-o",
                  str(tmp_path / "out")],
                 ["run", "empty:1.0", "--accel", "tcg"]):
        code, _, err = run(*argv)
        assert (code, err) == (1, "ERROR: image empty:1.0 has no kernel and initrd layers in "
                                  "its manifest: remove it ('imagebuilder rm empty:1.0') and "
                                  "rebuild or pull it\n")
    assert run("rm", "empty:1.0")[0] == 0


# --- what is not a regular file is damage, never opened ----------------------------------------


def _check_cli(home: Path) -> subprocess.CompletedProcess[str]:
    """``imagebuilder check --json`` as a person runs it; a hang fails the test (timeout)."""
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", "check", "--json"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "IMAGEBUILDER_HOME": str(home)})


def _plant(path: Path, what: str) -> None:
    path.unlink()
    if what == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


@pytest.mark.parametrize("what", ["zero-link", "fifo"])
@pytest.mark.parametrize("where", ["entry", "sidecar", "blob"])
def test_check_reports_links_and_fifos_without_opening_them(tmp_path: Path, what: str,
                                                            where: str) -> None:
    home = tmp_path / "home"
    cache = Cache(home / "cache")
    key = "cd" * 16
    path = cache.store(key, lambda dest: dest.write_bytes(b"stage output" * 100))
    parts = _put(Store(home / "store"), "hello:1.0.0", b"app one")
    planted = {"entry": path, "sidecar": path.with_name(key + ".xxh3"),
               "blob": Store(home / "store").blob_path(parts["app"])}[where]
    _plant(planted, what)
    done = _check_cli(home)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    kind = "a FIFO" if what == "fifo" else "a symbolic link"
    assert [(p["path"], p["problem"]) for p in report["problems"]] == [
        (str(planted), f"is {kind}, not a file (never followed)")]
    if where != "blob":  # a build treats it as a miss: removed, without opening it
        assert cache.lookup(key) is None and not os.path.lexists(path)
