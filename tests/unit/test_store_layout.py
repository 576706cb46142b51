"""The local image store (OCI image layout): put, resolve, list, remove, and skopeo reading it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imagebuilder.errors import DamagedError, IntegrityError, NotFoundError, UserError
from imagebuilder.store.layout import (
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    INITRD_LAYER_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_NAME_ANNOTATION,
    Descriptor,
    Store,
    split_ref,
)


def _blobs(store: Store) -> set[str]:
    return {"sha256:" + p.name for p in store.blobs_dir.iterdir()}


def _put(store: Store, ref: str, layer_data: bytes, kernel: bytes = b"kernel") -> str:
    k = store.add_blob_bytes(kernel, KERNEL_MEDIA_TYPE)
    base = store.add_blob_bytes(b"base layer", INITRD_LAYER_MEDIA_TYPE)
    app = store.add_blob_bytes(layer_data, INITRD_LAYER_MEDIA_TYPE, {"title": "app"})
    return store.put_image(ref, {"cmdline": "console=ttyS0", "ref": ref}, [k, base, app])


def test_layout_files_and_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = _put(store, "hello:1.0.0", b"app v1")
    root = tmp_path / "store"
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    (entry,) = index["manifests"]
    assert entry["digest"] == digest
    assert entry["mediaType"] == MANIFEST_MEDIA_TYPE
    assert entry["annotations"] == {REF_NAME_ANNOTATION: "hello:1.0.0"}

    raw = store.blob_path(digest).read_bytes()
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    assert entry["size"] == len(raw)
    manifest = json.loads(raw)
    assert raw == json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MANIFEST_MEDIA_TYPE
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        KERNEL_MEDIA_TYPE, INITRD_LAYER_MEDIA_TYPE, INITRD_LAYER_MEDIA_TYPE,
    ]
    assert manifest["layers"][2]["annotations"] == {"title": "app"}
    for blob in store.blobs_dir.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    assert list((root / ".tmp").iterdir()) == []


def test_put_resolve_images(tmp_path: Path) -> None:
    store = Store(tmp_path)
    d1 = _put(store, "hello:1.0.0", b"v1")
    d2 = _put(store, "hello:1.10.0", b"v10")
    d3 = _put(store, "hello:1.9.0", b"v9")
    d4 = _put(store, "api:2", b"api")
    image = store.resolve("hello:1.0.0")
    assert (image.ref, image.digest) == ("hello:1.0.0", d1)
    assert (image.name, image.version) == ("hello", "1.0.0")
    assert image.config == {"cmdline": "console=ttyS0", "ref": "hello:1.0.0"}
    assert image.size == len(b"kernel") + len(b"base layer") + len(b"v1")
    assert image.layers[0].media_type == KERNEL_MEDIA_TYPE
    assert store.resolve("api").digest == d4
    assert store.resolve(d2).ref == "hello:1.10.0"
    assert store.resolve(d3[:19]).ref == "hello:1.9.0"
    refs = [i.ref for i in store.images()]
    assert refs == ["api:2", "hello:1.0.0", "hello:1.9.0", "hello:1.10.0"]


def test_same_inputs_same_digest(tmp_path: Path) -> None:
    a = _put(Store(tmp_path / "a"), "hello:1.0.0", b"x")
    b = _put(Store(tmp_path / "b"), "hello:1.0.0", b"x")
    assert a == b
    index_a = (tmp_path / "a" / "index.json").read_bytes()
    assert index_a == (tmp_path / "b" / "index.json").read_bytes()
    assert _put(Store(tmp_path / "c"), "hello:1.0.0", b"y") != a


def test_put_replaces_ref(tmp_path: Path) -> None:
    store = Store(tmp_path)
    _put(store, "hello:1.0.0", b"one")
    d2 = _put(store, "hello:1.0.0", b"two")
    assert [i.digest for i in store.images()] == [d2]
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["manifests"]) == 1


def test_errors(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(NotFoundError, match="no image 'hello:1.0.0' in the store; list images"):
        store.resolve("hello:1.0.0")
    d1 = _put(store, "hello:1.0.0", b"1")
    _put(store, "hello:2.0.0", b"2")
    with pytest.raises(NotFoundError, match=r"several versions \(1\.0\.0, 2\.0\.0\)"):
        store.resolve("hello")
    with pytest.raises(NotFoundError, match="no image 'nope'"):
        store.resolve("nope")
    with pytest.raises(UserError, match="too short"):
        store.resolve(d1[:15])
    with pytest.raises(NotFoundError):
        store.resolve("sha256:" + "0" * 20)
    with pytest.raises(UserError, match="NAME:VERSION"):
        store.put_image("no version", {}, [])
    with pytest.raises(NotFoundError):
        store.remove("hello:3")


def test_ambiguous_digest_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = _put(store, "app:1", b"1")
    # Forge a second index entry whose digest shares the first 12 hex digits.
    twin = digest[:19] + ("0" if digest[19] != "0" else "1") + digest[20:]
    index = json.loads((tmp_path / "index.json").read_text())
    index["manifests"].append({
        "mediaType": MANIFEST_MEDIA_TYPE, "digest": twin, "size": 1,
        "annotations": {REF_NAME_ANNOTATION: "app:2"},
    })
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(NotFoundError, match="several images"):
        store.resolve(digest[:19])
    assert store.resolve(digest[:20]).ref == "app:1"


def _put_many(root: str, worker: int) -> None:
    store = Store(Path(root))
    for i in range(10):
        _put(store, f"w{worker}:{i}", f"{worker}-{i}".encode())


def test_concurrent_puts_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(Store(tmp_path).images()) == 40


def test_remove_keeps_shared_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    d1 = _put(store, "hello:1.0.0", b"app v1")
    before_second = _blobs(store)
    d2 = _put(store, "hello:2.0.0", b"app v2")
    image2 = store.resolve("hello:2.0.0")
    image1 = store.resolve("hello:1.0.0")
    shared = {layer.digest for layer in image1.layers} & {layer.digest for layer in image2.layers}
    assert len(shared) == 2  # kernel and base layer

    assert store.remove("hello:1.0.0") == d1
    left = _blobs(store)
    assert shared <= left
    assert d1 not in left and d2 in left
    assert not (before_second - left) - {d1, image1.manifest["config"]["digest"],
                                         image1.layers[2].digest}
    assert [i.ref for i in store.images()] == ["hello:2.0.0"]
    with pytest.raises(NotFoundError):
        store.resolve("hello:1.0.0")

    assert store.remove(d2[:20]) == d2
    assert _blobs(store) == set()
    assert json.loads((tmp_path / "index.json").read_text())["manifests"] == []


def test_remove_one_of_two_refs_to_same_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    k = store.add_blob_bytes(b"k", KERNEL_MEDIA_TYPE)
    d1 = store.put_image("hello:1.0.0", {"x": 1}, [k])
    d2 = store.put_image("hello:stable", {"x": 1}, [k])
    assert d1 == d2
    assert sorted(store.resolve(d1).refs) == ["hello:1.0.0", "hello:stable"]
    store.remove("hello:1.0.0")
    assert store.resolve("hello").ref == "hello:stable"
    assert store.blob_path(d1).exists() and store.blob_path(k.digest).exists()


def test_add_blob_file_links_or_copies_and_is_idempotent(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    src = tmp_path / "layer.cpio.zst"
    data = b"z" * (3 << 20)
    src.write_bytes(data)
    desc = store.add_blob_file(src, INITRD_LAYER_MEDIA_TYPE, {"title": "base"})
    assert desc == Descriptor(
        INITRD_LAYER_MEDIA_TYPE, "sha256:" + hashlib.sha256(data).hexdigest(), len(data),
        {"title": "base"},
    )
    blob = store.blob_path(desc.digest)
    assert blob.read_bytes() == data
    assert blob.stat().st_ino == src.stat().st_ino  # same filesystem: hard link
    assert store.add_blob_file(src, INITRD_LAYER_MEDIA_TYPE) == Descriptor(
        INITRD_LAYER_MEDIA_TYPE, desc.digest, desc.size,
    )
    assert list((tmp_path / "store" / ".tmp").iterdir()) == []


def test_put_image_refuses_missing_layer(tmp_path: Path) -> None:
    store = Store(tmp_path)
    ghost = Descriptor(KERNEL_MEDIA_TYPE, "sha256:" + "a" * 64, 3)
    with pytest.raises(Exception, match="not in the image store"):
        store.put_image("hello:1", {}, [ghost])
    assert json.loads((tmp_path / "index.json").read_text())["manifests"] == []


def test_descriptor_json_round_trip() -> None:
    d = Descriptor("m", "sha256:" + "b" * 64, 7, {"k": "v"})
    assert Descriptor.from_json(d.to_json()) == d
    plain = Descriptor("m", "sha256:" + "b" * 64, 7)
    assert plain.to_json() == {"mediaType": "m", "digest": plain.digest, "size": 7}
    assert Descriptor.from_json(plain.to_json()) == plain


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_reads_the_layout(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = _put(store, "hello:1.0.0", b"app")
    _put(store, "hello:2.0.0", b"app2")
    # oci transport: "oci:PATH:REF" splits at the first ':', so ref.name may contain ':'.
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'store'}:hello:1.0.0"],
        check=True, capture_output=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest
    copy = tmp_path / "copy"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{tmp_path / 'store'}:hello:1.0.0",
         f"oci:{copy}:hello:1.0.0"],
        check=True, capture_output=True,
    )
    assert Store(copy).resolve("hello:1.0.0").digest == digest


def test_gc_removes_only_unreachable_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    digest = _put(store, "hello:1.0.0", b"app v1")
    orphan = store.add_blob_bytes(b"left by an interrupted build", INITRD_LAYER_MEDIA_TYPE)
    store.set_env_tag("hello", "prod", digest)
    dead = store.tmp_dir / "999999999.deadbeef"
    store.tmp_dir.mkdir(exist_ok=True)
    dead.write_bytes(b"scratch of a dead process")
    assert store.gc(dry_run=True).removed == [orphan.digest]
    assert store.blob_path(orphan.digest).exists() and dead.exists()
    result = store.gc()
    assert (result.removed, result.bytes_freed) == ([orphan.digest], orphan.size)
    assert not dead.exists()
    assert store.resolve("hello:prod").digest == digest
    assert store.gc().removed == []
    # rm of the last version also drops its environment tags; gc then has nothing left to do.
    store.remove("hello:1.0.0")
    assert store.tags("hello") == {} and _blobs(store) == set()


def test_put_manifest_verifies_and_refuses_to_retag(tmp_path: Path) -> None:
    src = Store(tmp_path / "src")
    v1 = _put(src, "hello:1.0.0", b"app v1")
    v2 = _put(src, "hello:2.0.0", b"app v2")
    dst = Store(tmp_path / "dst")
    _put(dst, "hello:1.0.0", b"other")
    before = dst.index_path.read_bytes()
    with dst.staging() as staging:
        data = src.read_blob(v1)
        with pytest.raises(UserError, match="another image.*--force"):
            dst.put_manifest("hello:1.0.0", data)
        layer = src.resolve("hello:2.0.0").layers[-1]
        with pytest.raises(IntegrityError, match="did not verify"):
            Store.receive_blob(staging, layer.digest, layer.size, [b"x" * layer.size])
        assert list(staging.iterdir()) == []
    assert dst.index_path.read_bytes() == before
    with dst.staging() as staging:
        image = src.resolve("hello:2.0.0")
        staged = {d.digest: Store.receive_blob(staging, d.digest, d.size,
                                               [src.blob_path(d.digest).read_bytes()])
                  for d in [*image.layers, Descriptor.from_json(image.manifest["config"])]}
        assert dst.put_manifest("hello:2.0.0", src.read_blob(v2), staged=staged) == v2
    assert dst.resolve("hello:2.0.0").config == image.config
    assert not dst.tmp_dir.exists() or list(dst.tmp_dir.iterdir()) == []


# --- gc never leaves the store, and deletes nothing while a manifest is damaged -----------------


def _cli(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``imagebuilder ARGV`` as a person runs it, on the store in ``home``."""
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *argv],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "IMAGEBUILDER_HOME": str(home)})


@pytest.mark.parametrize("link", ["blobs", "blobs/sha256", ".tmp"])
def test_gc_refuses_a_store_whose_directories_are_links(tmp_path: Path, link: str) -> None:
    store = Store(tmp_path / "home" / "store")
    _put(store, "hello:1.0.0", b"app v1")
    store.tmp_dir.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store.root / link, elsewhere)
    (store.root / link).symlink_to(elsewhere)
    precious = elsewhere / ("ab" * 32)  # named like a blob no image uses
    precious.write_bytes(b"someone's file")
    (elsewhere / "999999999.deadbeef").write_bytes(b"named like scratch of a dead process")
    before = sorted(p.name for p in elsewhere.iterdir())
    done = _cli(tmp_path / "home", "gc")
    assert done.returncode == 2, done.stdout
    assert done.stderr == (f"ERROR: {store.root / link} is a symbolic link: imagebuilder does not "
                           "follow links out of its store; put the real directory (or file) "
                           "there\n")
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_gc_removes_a_linked_blob_as_a_link(tmp_path: Path) -> None:
    store = Store(tmp_path / "home" / "store")
    digest = _put(store, "hello:1.0.0", b"app v1")
    precious = tmp_path / "precious"
    precious.write_bytes(b"someone's file")
    (store.blobs_dir / ("ab" * 32)).symlink_to(precious)
    layer = store.resolve(digest).layers[2].digest  # a used blob that is a link: kept
    store.blob_path(layer).unlink()
    store.blob_path(layer).symlink_to(precious)
    done = _cli(tmp_path / "home", "gc", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["removed"] == ["sha256:" + "ab" * 32]
    assert precious.read_bytes() == b"someone's file"
    assert store.blob_path(layer).is_symlink()
    with pytest.raises(DamagedError, match="is a symbolic link, not a file"):
        store.verified_blob(layer)  # never read through the link


def test_gc_deletes_nothing_while_a_manifest_is_damaged(tmp_path: Path) -> None:
    store = Store(tmp_path / "home" / "store")
    digest = _put(store, "hello:1.0.0", b"app v1")
    other = _put(store, "other:1.0.0", b"other app", kernel=b"other kernel")
    orphan = store.add_blob_bytes(b"left by an interrupted build", INITRD_LAYER_MEDIA_TYPE)
    manifest = store.blob_path(digest)
    data = bytearray(manifest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    manifest.write_bytes(bytes(data))
    before = _blobs(store)
    done = _cli(tmp_path / "home", "gc")
    assert done.returncode == 1, done.stdout
    assert done.stderr == (f"ERROR: gc deleted nothing: manifest {digest[:19]} of hello:1.0.0 "
                           "does not match its digest; 'imagebuilder check' tells more\n")
    assert _blobs(store) == before and orphan.digest in before
    manifest.unlink()
    done = _cli(tmp_path / "home", "gc", "--dry-run")
    assert done.returncode == 1
    assert f"manifest {digest[:19]} of hello:1.0.0 is missing" in done.stderr
    # rm of another image: its entry goes, but no blob while what the damaged one uses is unknown
    store.remove("other:1.0.0")
    assert _blobs(store) == before - {digest}
    assert other in before


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_rm_of_an_image_whose_own_manifest_is_damaged_removes_its_entry_only(
        tmp_path: Path, damage: str) -> None:
    """Review F11: as docs/store.md says, rm removes the index entry of an image whose manifest is
    damaged and deletes no blob (what it used is unknown)."""
    store = Store(tmp_path / "home" / "store")
    digest = _put(store, "hello:1.0.0", b"app v1")
    _put(store, "other:1.0.0", b"other app", kernel=b"other kernel")
    manifest = store.blob_path(digest)
    if damage == "flip":
        data = bytearray(manifest.read_bytes())
        data[len(data) // 2] ^= 0x01
        manifest.write_bytes(bytes(data))
    else:
        manifest.unlink()
    before = _blobs(store)
    done = _cli(tmp_path / "home", "rm", "hello:1.0.0")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"removed hello:1.0.0 ({digest})\n"
    assert _blobs(store) == before
    assert [im.ref for im in store.images()] == ["other:1.0.0"]


@pytest.mark.parametrize(("entry", "problem"), [
    ({"annotations": ["not", "an", "object"]}, "the annotations of entry sha256:"),
    ({"digest": "md5:abc"}, "entry digest 'md5:abc' is not sha256:<64 hex digits>"),
    ({"digest": "sha256:../../../etc/passwd"}, "is not sha256:<64 hex digits>"),
])
def test_a_malformed_index_entry_is_one_line(tmp_path: Path, entry: dict[str, object],
                                             problem: str) -> None:
    store = Store(tmp_path / "home" / "store")
    _put(store, "hello:1.0.0", b"app v1")
    index = json.loads(store.index_path.read_text())
    index["manifests"][0].update(entry)
    store.index_path.write_text(json.dumps(index))
    before = _blobs(store)
    for argv in (["images"], ["gc"], ["inspect", "hello:1.0.0"]):
        done = _cli(tmp_path / "home", *argv)
        assert done.returncode == 1, (argv, done.stdout)
        assert done.stderr.startswith(f"ERROR: {store.index_path} is not a valid OCI image index")
        assert problem in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert _blobs(store) == before


def test_an_index_that_is_a_fifo_is_one_line_not_a_hang(tmp_path: Path) -> None:
    store = Store(tmp_path / "home" / "store")
    _put(store, "hello:1.0.0", b"app v1")
    store.index_path.unlink()
    os.mkfifo(store.index_path)
    done = _cli(tmp_path / "home", "images")  # a hang fails on the timeout
    assert done.returncode == 1
    assert done.stderr == f"ERROR: {store.index_path} is a FIFO, not a file; restore it\n"


@pytest.mark.parametrize("ref", ["hello:_promotions", "hello:_x"])
def test_a_version_beginning_with_an_underscore_is_refused(tmp_path: Path, ref: str) -> None:
    """Hostile review F3: hello:_promotions taken as an image's version sat where the
    promotion history lives, and every later promote of hello failed."""
    with pytest.raises(UserError, match="imagebuilder's own"):
        split_ref(ref)
