"""Artifacts attached to an image in the store (imagebuilder/store/attachments.py): the OCI 1.1
artifact manifest, finding them from the image, and rm, gc and check knowing them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder.errors import DamagedError, IntegrityError, NotFoundError, UserError
from imagebuilder.store import attachments
from imagebuilder.store.check import check
from imagebuilder.store.layout import (
    INITRD_LAYER_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Store,
)
from imagebuilder.store.oci import canonical_json, sha256_digest

CDX = "application/vnd.cyclonedx+json"
SPDX = "application/spdx+json"
CREATED = "org.opencontainers.image.created"


def _put(store: Store, ref: str, app: bytes) -> str:
    kernel = store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(app, INITRD_LAYER_MEDIA_TYPE)
    return store.put_image(ref, {"cmdline": "console=ttyS0"}, [kernel, layer])


def _blobs(store: Store) -> set[str]:
    return {"sha256:" + p.name for p in store.blobs_dir.iterdir()}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def test_attach_writes_an_oci_artifact_manifest_about_the_image(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"app")
    desc = attachments.attach(store, image, CDX, b'{"bomFormat":"CycloneDX"}', CDX,
                              {CREATED: "2026-01-01T00:00:00Z"})
    raw = store.blob_path(desc.digest).read_bytes()
    assert sha256_digest(raw) == desc.digest and desc.size == len(raw)
    manifest = json.loads(raw)
    assert raw == canonical_json(manifest)
    image_size = store.blob_path(image).stat().st_size
    assert manifest == {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": CDX,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": "sha256:" + hashlib.sha256(b"{}").hexdigest(), "size": 2},
        "layers": [{"mediaType": CDX, "digest": sha256_digest(b'{"bomFormat":"CycloneDX"}'),
                    "size": 25}],
        "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": image, "size": image_size},
        "annotations": {CREATED: "2026-01-01T00:00:00Z"},
    }
    assert desc.artifact_type == CDX and desc.annotations == {CREATED: "2026-01-01T00:00:00Z"}
    assert desc.to_json()["artifactType"] == CDX
    assert attachments.payload(store, desc) == b'{"bomFormat":"CycloneDX"}'


def test_no_annotations_no_timestamp(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"app")
    desc = attachments.attach(store, image, SPDX, b"{}", SPDX)
    assert "annotations" not in json.loads(store.read_blob(desc.digest))
    assert desc.annotations is None


def test_referrers_lists_by_subject_and_type_sorted(store: Store) -> None:
    one = _put(store, "hello:1.0.0", b"v1")
    two = _put(store, "hello:2.0.0", b"v2")
    spdx = attachments.attach(store, one, SPDX, b"spdx", SPDX)
    cdx = attachments.attach(store, one, CDX, b"cdx", CDX)
    other = attachments.attach(store, two, CDX, b"cdx2", CDX)
    assert attachments.referrers(store, one) == [spdx, cdx]  # by artifact type
    assert attachments.referrers(store, one, SPDX) == [spdx]
    assert attachments.referrers(store, two) == [other]
    assert attachments.referrers(store, two, SPDX) == []


def test_same_bytes_same_attachment_never_twice(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"app")
    first = attachments.attach(store, image, CDX, b"sbom", CDX)
    again = attachments.attach(store, image, CDX, b"sbom", CDX, keep=True)
    assert first == again
    assert attachments.referrers(store, image) == [first]
    assert len(store.entries()) == 2


def test_a_new_attachment_of_a_type_replaces_the_old_unless_kept(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"app")
    attachments.attach(store, image, CDX, b"old sbom", CDX)
    new = attachments.attach(store, image, CDX, b"new sbom", CDX)
    assert attachments.referrers(store, image, CDX) == [new]
    sig = "application/vnd.dev.cosign.artifact.sig.v1+json"
    a = attachments.attach(store, image, sig, b"signature a", "text/plain")
    b = attachments.attach(store, image, sig, b"signature b", "text/plain", keep=True)
    assert attachments.referrers(store, image, sig) == sorted([a, b], key=lambda d: d.digest)


def test_images_list_and_digest_references_do_not_see_attachments(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"app")
    desc = attachments.attach(store, image, CDX, b"sbom", CDX)
    assert [im.ref for im in store.images()] == ["hello:1.0.0"]
    with pytest.raises(NotFoundError):
        store.resolve(desc.digest[:19])


def test_attach_to_what_is_not_in_the_store_is_refused(store: Store) -> None:
    _put(store, "hello:1.0.0", b"app")
    with pytest.raises(NotFoundError, match="no image sha256:"):
        attachments.attach(store, sha256_digest(b"nothing"), CDX, b"sbom", CDX)
    with pytest.raises(UserError, match="not a valid artifact type"):
        attachments.attach(store, store.resolve("hello:1.0.0").digest, "cyclonedx", b"", CDX)


def test_rm_removes_the_attachments_and_their_blobs(store: Store) -> None:
    one = _put(store, "hello:1.0.0", b"v1")
    _put(store, "hello:2.0.0", b"v2")
    before = _blobs(store)
    desc = attachments.attach(store, one, CDX, b"sbom of v1", CDX)
    store.remove("hello:1.0.0")
    assert attachments.referrers(store, one) == []
    assert [m for m in store.entries() if m["digest"] == desc.digest] == []
    assert desc.digest not in _blobs(store)
    assert sha256_digest(b"sbom of v1") not in _blobs(store)
    assert _blobs(store) < before


def test_rm_of_one_name_keeps_the_attachments_of_a_manifest_still_named(store: Store) -> None:
    digest = _put(store, "hello:1.0.0", b"same")
    assert _put(store, "hello:latest", b"same") == digest
    desc = attachments.attach(store, digest, CDX, b"sbom", CDX)
    store.remove("hello:latest")
    assert attachments.referrers(store, digest) == [desc]
    assert attachments.payload(store, desc) == b"sbom"


def test_gc_keeps_attachments_while_the_subject_is_kept_and_removes_them_with_it(
        store: Store) -> None:
    one = _put(store, "hello:1.0.0", b"v1")
    desc = attachments.attach(store, one, CDX, b"sbom", CDX)
    assert store.gc().removed == []
    assert attachments.payload(store, desc) == b"sbom"
    _put(store, "hello:1.0.0", b"rebuilt")  # the tag moves: the old manifest is no more named
    assert attachments.referrers(store, one) == [desc]  # until gc
    assert desc.digest in store.gc(dry_run=True).removed
    assert attachments.referrers(store, one) == [desc]  # a dry run changes nothing
    removed = store.gc().removed
    assert {one, desc.digest, sha256_digest(b"sbom")} <= set(removed)
    assert attachments.referrers(store, one) == []


def test_attachment_of_an_attachment_follows_it(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    sbom = attachments.attach(store, image, CDX, b"sbom", CDX)
    sig = attachments.attach(store, sbom.digest, "application/vnd.example.sig", b"s", "text/plain")
    assert attachments.referrers(store, sbom.digest) == [sig]
    store.remove("hello:1.0.0")
    assert store.entries() == []


def test_check_verifies_attachments(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    desc = attachments.attach(store, image, CDX, b"sbom", CDX)
    assert check(store).ok
    store.blob_path(sha256_digest(b"sbom")).write_bytes(b"tampered")
    report = check(store)
    (problem,) = report.problems
    assert problem.name == sha256_digest(b"sbom")
    assert problem.problem.startswith(f"the payload of the {CDX} attached to {image[:19]} is "
                                      "damaged")
    with pytest.raises(DamagedError):
        attachments.payload(store, desc)


def test_a_damaged_attachment_manifest_is_found_and_never_trusted(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    desc = attachments.attach(store, image, CDX, b"sbom", CDX)
    store.blob_path(desc.digest).write_bytes(b"{}")
    assert [p.kind for p in check(store).problems] == ["manifest"]
    with pytest.raises(DamagedError):
        attachments.referrers(store, image)
    with pytest.raises(DamagedError):
        store.gc()


def _artifact(subject: str, subject_size: int, payload: bytes, kind: str = CDX) -> bytes:
    return canonical_json({
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "artifactType": kind,
        "config": attachments.EMPTY_DESCRIPTOR.to_json(),
        "layers": [{"mediaType": kind, "digest": sha256_digest(payload), "size": len(payload)}],
        "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "digest": subject, "size": subject_size},
        "annotations": {"tool": "other"},
    }) + b"\n"  # not our canonical bytes: kept as they are


def test_put_manifest_keeps_the_bytes_and_digest(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    data = _artifact(image, 10, b"pulled sbom")
    desc = attachments.put_manifest(store, image, data, {
        sha256_digest(b"pulled sbom"): b"pulled sbom", attachments.EMPTY_DESCRIPTOR.digest: b"{}"})
    assert desc.digest == sha256_digest(data)
    assert desc.annotations == {"tool": "other"} and desc.artifact_type == CDX
    assert store.read_blob(desc.digest) == data
    assert attachments.payload(store, desc) == b"pulled sbom"


def test_put_manifest_refuses_another_subject_and_wrong_blobs(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    other = sha256_digest(b"another image")
    with pytest.raises(IntegrityError, match="not " + image[:19]):
        attachments.put_manifest(store, image, _artifact(other, 5, b"x"), {})
    data = _artifact(image, 5, b"x")
    with pytest.raises(IntegrityError, match="does not match its descriptor"):
        attachments.put_manifest(store, image, data, {sha256_digest(b"x"): b"y",
                                                      attachments.EMPTY_DESCRIPTOR.digest: b"{}"})
    with pytest.raises(IntegrityError, match="was not received"):
        attachments.put_manifest(store, image, _artifact(image, 5, b"never sent"), {})
    with pytest.raises(IntegrityError, match="not JSON"):
        attachments.put_manifest(store, image, b"\xff", {})
    no_layer = json.loads(_artifact(image, 5, b"x"))
    no_layer["layers"] = []
    with pytest.raises(IntegrityError, match="has no layer"):
        attachments.put_manifest(store, image, canonical_json(no_layer), {})
    assert attachments.referrers(store, image) == []


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo missing")
def test_skopeo_still_reads_the_store_with_attachments(store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    attachments.attach(store, image, CDX, b"sbom", CDX)
    out = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{store.root}:hello:1.0.0"],
                         capture_output=True, check=True).stdout
    assert sha256_digest(out) == image


# --- several of a single-valued type (a registry can list more than the build made) ----------


def _pulled_second(store: Store, image: str, payload: bytes, kind: str = CDX) -> str:
    """A second attachment of ``kind``, as a pull from reg.example/app keeps it; its digest."""
    blobs = {sha256_digest(payload): payload, attachments.EMPTY_DESCRIPTOR.digest: b"{}"}
    return attachments.put_manifest(store, image, _artifact(image, 10, payload, kind), blobs,
                                    origin="reg.example/app").digest


def test_the_one_refuses_to_choose_among_several_and_says_where_each_came_from(
        store: Store) -> None:
    image = _put(store, "hello:1.0.0", b"v1")
    assert attachments.the_one(store, image, CDX, "hello:1.0.0") is None
    built = attachments.attach(store, image, CDX, b'{"bomFormat":"CycloneDX"}', CDX).digest
    assert attachments.the_one(store, image, CDX, "hello:1.0.0").digest == built  # type: ignore[union-attr]
    pulled = _pulled_second(store, image, b'{"bomFormat":"CycloneDX","FORGED":true}')
    with pytest.raises(UserError) as e:
        attachments.the_one(store, image, CDX, "hello:1.0.0")
    where = sorted([f"{built[:19]} made here", f"{pulled[:19]} pulled from reg.example/app"],
                   key=lambda s: s.split()[0])
    assert str(e.value) == (f"hello:1.0.0 ({image[:19]}) has 2 CycloneDX SBOMs attached "
                            f"({', '.join(where)}), not one: refused to choose; build the image "
                            "again, or remove it (imagebuilder rm hello:1.0.0) and pull it from a "
                            "registry that lists one")
    # A build's own attachment replaces them all, as before.
    attachments.attach(store, image, CDX, b'{"bomFormat":"CycloneDX","v":2}', CDX)
    assert len(attachments.referrers(store, image, CDX)) == 1


def test_inspect_sbom_refuses_to_print_one_of_several(
        store: Store, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """F3: a forged SBOM a registry listed beside the build's is never printed as the image's."""
    from imagebuilder.cli import main
    from imagebuilder.store.home import Home

    monkeypatch.setenv("IMAGEBUILDER_HOME", str(store.root.parent / "home"))
    home = Home().store
    image = _put(home, "hello:1.0.0", b"v1")
    attachments.attach(home, image, SPDX, b'{"spdxVersion":"SPDX-2.3"}', SPDX)
    _pulled_second(home, image, b'{"spdxVersion":"SPDX-2.3","FORGED":true}', SPDX)
    capsys.readouterr()
    assert main(["inspect", "hello:1.0.0", "--sbom", "spdx"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"ERROR: hello:1.0.0 ({image[:19]}) has 2 SPDX SBOMs attached (")
    assert out.err.count("\n") == 1 and "pulled from reg.example/app" in out.err
