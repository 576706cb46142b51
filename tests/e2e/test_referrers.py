"""End to end: an image's attachments (two SBOMs) travel with it through push and pull, on a
registry without the referrers API (Debian's docker-registry 2.8: the referrers tag schema) and
on one with it (the same registry behind support.registry.ReferrersProxy); stock ``oras
discover`` (Debian trixie's oras, fetched and verified like any package) lists them on both; a
descriptor another tool put in the tag schema's index stays; a registry's hostile answers (a
referrer about another image, missing or oversize, a tampered blob, a tag that is no index, a list
over the cap) cost those attachments, each one warning line, never the image; and a second SBOM
a registry lists is kept, named, and never chosen.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder import progress
from imagebuilder.registry import referrers
from imagebuilder.registry.client import Client
from imagebuilder.signing.cosign import (
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    signature_tag,
)
from imagebuilder.store import attachments
from imagebuilder.store.layout import MANIFEST_MEDIA_TYPE, Store
from imagebuilder.store.oci import canonical_json, sha256_digest
from support.inputs import inputs_dir
from support.keys import pem_key_pair
from support.registry import ReferrersProxy, Registry, available, start_registry

from .conftest import Cli, docker_cli, one_line_error, synthetic_image

pytestmark = [pytest.mark.e2e, pytest.mark.network,
              pytest.mark.skipif(not available(), reason="needs docker-registry (setup.sh)")]

CDX = "application/vnd.cyclonedx+json"
SPDX = "application/spdx+json"
INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="session")
def oras() -> Path:
    """Debian trixie's oras (1.2): its .deb resolved from the signed index of the mirror apt
    uses and verified by its SHA-256, as the build fetches packages; unpacked once into the
    inputs cache (support.inputs)."""
    from imagebuilder.fetch.deb import extract_deb
    from imagebuilder.fetch.debian import Archive
    from imagebuilder.fetch.sources import mirror_from_apt

    cache = inputs_dir("oras")
    archive = Archive(mirror_from_apt(), "trixie", cache / "debian")
    (package,) = archive.resolve(["oras"], follow=lambda p: False)
    root = cache / package.sha256
    if not (root / "usr/bin/oras").is_file():
        tmp = root.with_name(f".{root.name}.{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        extract_deb(archive.fetch(package), tmp)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    return root / "usr/bin/oras"


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferrersProxy]:
    """A docker-registry of its own behind the referrers API proxy."""
    upstream = start_registry(tmp_path_factory.mktemp("upstream"))
    proxy = ReferrersProxy(upstream)
    yield proxy
    proxy.stop()
    upstream.stop()


def _with_sboms(home: Path, ref: str, seed: bytes) -> tuple[Store, str, dict[str, bytes]]:
    """An image ``ref`` in ``home`` with a CycloneDX and an SPDX attachment; the store, the
    image digest and the payloads by artifact type."""
    store = synthetic_image(home, ref, [50_000], seed=seed)
    digest = store.resolve(ref).digest
    payloads = {CDX: b'{"bomFormat":"CycloneDX","seed":"%s"}' % seed,
                SPDX: b'{"spdxVersion":"SPDX-2.3","seed":"%s"}' % seed}
    for kind, data in payloads.items():
        attachments.attach(store, digest, kind, data, kind,
                           {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"})
    return store, digest, payloads


def _oras(oras: Path, home: Path, *args: str) -> str:
    """``oras ARGS`` with a home of its own (no credentials but its own); its stdout."""
    home.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([str(oras), *args], cwd=home, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, f"oras {' '.join(args)}: {done.stderr}"
    return done.stdout


def _discover(oras: Path, home: Path, host: str, repo: str, digest: str) -> list[str]:
    """The artifact types ``oras discover`` lists for ``repo@digest``, sorted."""
    listed = json.loads(_oras(oras, home, "discover", "--plain-http", "--format", "json",
                              f"{host}/{repo}@{digest}"))
    return sorted(m["artifactType"]
                  for m in listed.get("manifests", listed.get("referrers", [])))


def _get(host: str, path: str, accept: str = INDEX) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://{host}{path}", headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, b""


def _pulled(tmp_path: Path, source: str) -> tuple[Cli, dict[str, object]]:
    r = docker_cli(tmp_path / "pulled", tmp_path / "docker")
    out = r.json("pull", source, "--insecure")
    assert isinstance(out, dict)
    return r, out


def _payloads(store: Store, digest: str) -> dict[str, bytes]:
    return {str(d.artifact_type): attachments.payload(store, d)
            for d in attachments.referrers(store, digest)}


def test_tag_schema_on_a_registry_without_the_api(registry: Registry, oras: Path,
                                                  tmp_path: Path) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store, digest, payloads = _with_sboms(r.home, "sbom:1.0.0", b"tag")
    pushed = r.json("push", "sbom:1.0.0", f"{registry.host}/sbom", "--insecure")
    assert isinstance(pushed, dict) and pushed["attachments"] == 2
    assert _get(registry.host, f"/v2/sbom/referrers/{digest}")[0] == 404
    status, raw = _get(registry.host, f"/v2/sbom/manifests/sha256-{digest[7:]}")
    assert status == 200
    index = json.loads(raw)
    assert index["mediaType"] == INDEX
    assert {m["digest"]: m["artifactType"] for m in index["manifests"]} == {
        d.digest: d.artifact_type for d in attachments.referrers(store, digest)}
    assert _discover(oras, tmp_path / "oras", registry.host, "sbom", digest) == [SPDX, CDX]

    again = r.json("push", "sbom:1.0.0", f"{registry.host}/sbom", "--insecure")
    assert isinstance(again, dict) and again["attachments"] == 2
    assert _get(registry.host, f"/v2/sbom/manifests/sha256-{digest[7:]}")[1] == raw  # unchanged

    pulled, out = _pulled(tmp_path, f"{registry.host}/sbom:1.0.0")
    assert out["attachments"] == 2
    assert _payloads(Store(pulled.home / "store"), digest) == payloads
    assert json.loads(pulled("check", "--json").stdout)["ok"] is True


def test_referrers_api_through_the_proxy(proxied: ReferrersProxy, oras: Path,
                                         tmp_path: Path) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store, digest, payloads = _with_sboms(r.home, "api:1.0.0", b"api")
    pushed = r.json("push", "api:1.0.0", f"{proxied.host}/api", "--insecure")
    assert isinstance(pushed, dict) and pushed["attachments"] == 2
    # the registry indexed them (OCI-Subject): no referrers tag was written
    assert proxied.upstream.manifest_digest("api", f"sha256-{digest[7:]}") is None
    status, raw = _get(proxied.host, f"/v2/api/referrers/{digest}")
    assert status == 200
    assert sorted(m["digest"] for m in json.loads(raw)["manifests"]) == sorted(
        d.digest for d in attachments.referrers(store, digest))
    assert _discover(oras, tmp_path / "oras", proxied.host, "api", digest) == [SPDX, CDX]

    pulled, out = _pulled(tmp_path, f"{proxied.host}/api:1.0.0")
    assert out["attachments"] == 2
    assert _payloads(Store(pulled.home / "store"), digest) == payloads
    assert ("GET", f"/v2/api/referrers/{digest}") in proxied.requests
    assert ("GET", f"/v2/api/manifests/sha256-{digest[7:]}") not in proxied.requests


def test_another_tools_referrer_in_the_tag_schema_stays(registry: Registry, oras: Path,
                                                         tmp_path: Path) -> None:
    review = "application/vnd.example.review"
    # the image alone first, then oras attaches its own artifact (the tag schema: no API)
    bare = docker_cli(tmp_path / "bare", tmp_path / "docker")
    digest = synthetic_image(bare.home, "mixed:1.0.0", [50_000]).resolve("mixed:1.0.0").digest
    bare("push", "mixed:1.0.0", f"{registry.host}/mixed", "--insecure")
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    shutil.copytree(bare.home / "store", r.home / "store")
    store = Store(r.home / "store")
    payloads = {CDX: b'{"bomFormat":"CycloneDX"}', SPDX: b'{"spdxVersion":"SPDX-2.3"}'}
    for kind, data in payloads.items():
        attachments.attach(store, digest, kind, data, kind)
    home = tmp_path / "oras"
    home.mkdir()
    (home / "note.txt").write_text("reviewed\n")
    _oras(oras, home, "attach", "--plain-http", "--artifact-type", review,
          f"{registry.host}/mixed@{digest}", "note.txt:text/plain")
    assert _discover(oras, home, registry.host, "mixed", digest) == [review]

    r("push", "mixed:1.0.0", f"{registry.host}/mixed", "--insecure")
    assert store.resolve("mixed:1.0.0").digest == digest
    assert _discover(oras, home, registry.host, "mixed", digest) == [SPDX, CDX, review]

    pulled, out = _pulled(tmp_path, f"{registry.host}/mixed:1.0.0")
    assert out["attachments"] == 3
    got = _payloads(Store(pulled.home / "store"), digest)
    assert got == {**payloads, review: b"reviewed\n"}


def _put(host: str, path: str, data: bytes, media_type: str) -> None:
    request = urllib.request.Request(f"http://{host}{path}", data=data, method="PUT",
                                     headers={"Content-Type": media_type})
    urllib.request.urlopen(request, timeout=10).close()


def _upload(host: str, repo: str, data: bytes) -> None:
    """Blob ``data`` into ``repo``, as any client can (one POST, one PUT)."""
    request = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        location = response.headers["Location"]
    sep = "&" if "?" in location else "?"
    _put(host, f"{location.removeprefix(f'http://{host}')}{sep}digest={sha256_digest(data)}",
         data, "application/octet-stream")


def _push_raw(host: str, repo: str, store: Store, digest: str) -> None:
    """Manifest ``digest`` of ``store`` and its blobs into ``repo``, by digest."""
    manifest = json.loads(store.read_blob(digest))
    for part in [manifest["config"], *manifest["layers"]]:
        _upload(host, repo, store.read_blob(part["digest"]))
    _put(host, f"/v2/{repo}/manifests/{digest}", store.read_blob(digest),
         "application/vnd.oci.image.manifest.v1+json")


def _hostile(registry: Registry, tmp_path: Path, repo: str) -> tuple[Cli, str, Store]:
    """An image pushed with its SBOMs to ``repo``, and an empty home to pull it into."""
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    store, digest, _ = _with_sboms(r.home, f"{repo}:1.0.0", repo.encode())
    r("push", f"{repo}:1.0.0", f"{registry.host}/{repo}", "--insecure")
    return docker_cli(tmp_path / "fresh", tmp_path / "docker"), digest, store


def _pulled_with(cli: Cli, digest: str, result: subprocess.CompletedProcess[str],
                 warning: str) -> dict[str, bytes]:
    """The image ``digest`` was pulled (exit 0) with one WARNING line holding ``warning``; the
    payloads of the attachments it got, by type."""
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if line.startswith("WARNING: ")]
    assert len(warned) == 1 and warning in warned[0], result.stderr
    store = Store(cli.home / "store")
    assert [i.digest for i in store.images()] == [digest]
    return _payloads(store, digest)


def test_a_referrer_about_another_image_is_skipped(registry: Registry, tmp_path: Path) -> None:
    """Review F6: one foreign entry in the referrers list costs that entry, not the image."""
    fresh, digest, store = _hostile(registry, tmp_path, "liar")
    other = synthetic_image(tmp_path / "other", "other:1.0.0", [1000], seed=b"other")
    other_digest = other.resolve("other:1.0.0").digest
    _push_raw(registry.host, "liar", other, other_digest)
    foreign = attachments.attach(other, other_digest, CDX, b"not yours", CDX)
    _push_raw(registry.host, "liar", other, foreign.digest)
    tag = f"/v2/liar/manifests/sha256-{digest[7:]}"
    index = json.loads(_get(registry.host, tag)[1])
    index["manifests"].insert(0, foreign.to_json())
    _put(registry.host, tag, canonical_json(index), INDEX)

    pulled = fresh("pull", f"{registry.host}/liar:1.0.0", "--insecure", check=False)
    got = _pulled_with(fresh, digest, pulled,
                       f"is about {other_digest[:19]}, not the image pulled ({digest[:19]}); "
                       f"attachment {foreign.digest[:19]} was not taken")
    assert got == _payloads(store, digest)  # both genuine SBOMs


def test_a_tampered_sbom_blob_is_skipped(registry: Registry, tmp_path: Path) -> None:
    fresh, digest, store = _hostile(registry, tmp_path, "tampered")
    (cdx,) = attachments.referrers(store, digest, CDX)
    payload = attachments.all_blobs(store, cdx)[1]
    blob = registry.blob_data_path(payload.digest)
    blob.write_bytes(blob.read_bytes().replace(b"CycloneDX", b"CycloneDY"))
    pulled = fresh("pull", f"{registry.host}/tampered:1.0.0", "--insecure", check=False)
    got = _pulled_with(fresh, digest, pulled, f"blob {payload.digest} did not verify")
    assert got == {SPDX: _payloads(store, digest)[SPDX]}


def test_a_referrers_tag_that_is_no_index_gives_no_attachments(registry: Registry,
                                                               tmp_path: Path) -> None:
    fresh, digest, store = _hostile(registry, tmp_path, "notindex")
    image = store.resolve("notindex:1.0.0")
    _put(registry.host, f"/v2/notindex/manifests/sha256-{digest[7:]}",
         store.read_blob(image.digest), "application/vnd.oci.image.manifest.v1+json")
    pulled = fresh("pull", f"{registry.host}/notindex:1.0.0", "--insecure", check=False)
    assert _pulled_with(fresh, digest, pulled, "is not an OCI image index of referrers; no "
                        "attachment of") == {}
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    one_line_error(r("push", "notindex:1.0.0", f"{registry.host}/notindex", "--insecure",
                     check=False), 1, "is not an OCI referrers index")


def test_what_the_referrers_api_lists_is_capped(proxied: ReferrersProxy, tmp_path: Path) -> None:
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    _, digest, payloads = _with_sboms(r.home, "caps:1.0.0", b"caps")
    r("push", "caps:1.0.0", f"{proxied.host}/caps", "--insecure")
    listed = proxied.referrers[("caps", digest)]
    genuine = dict(listed)
    fake = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500,
            "artifactType": "application/vnd.example"}
    # one listed referrer that is not there: skipped, the others taken
    missing = sha256_digest(b"missing")
    listed[missing] = {**fake, "digest": missing}
    fresh = docker_cli(tmp_path / "fresh", tmp_path / "docker")
    pulled = fresh("pull", f"{proxied.host}/caps:1.0.0", "--insecure", check=False)
    assert _pulled_with(fresh, digest, pulled, f"is listed as a referrer of {digest[:19]} but "
                        f"is not there; attachment {missing[:19]} was not taken") == payloads
    # over the cap: none of them, the image all the same
    listed.update({d: {**fake, "digest": d}
                   for d in (sha256_digest(b"%d" % i) for i in range(200))})
    capped = docker_cli(tmp_path / "capped", tmp_path / "docker")
    pulled = capped("pull", f"{proxied.host}/caps:1.0.0", "--insecure", check=False)
    assert _pulled_with(capped, digest, pulled, "lists more than 128 referrers, over the limit; "
                        "no attachment of it was taken") == {}
    listed.clear()
    listed.update(genuine)
    listed[digest] = {**fake, "digest": digest, "annotations": {"x": "y" * (5 << 20)}}
    big = docker_cli(tmp_path / "big", tmp_path / "docker")
    pulled = big("pull", f"{proxied.host}/caps:1.0.0", "--insecure", check=False)
    assert _pulled_with(big, digest, pulled, "over the limit of 4194304") == {}


def test_an_attachment_larger_than_allowed_is_skipped(registry: Registry,
                                                      tmp_path: Path) -> None:
    fresh, digest, store = _hostile(registry, tmp_path, "huge")
    (cdx,) = attachments.referrers(store, digest, CDX)
    manifest = attachments.manifest(store, cdx)
    manifest["layers"][0]["size"] = attachments.MAX_PAYLOAD_BYTES + 1
    data = canonical_json(manifest)
    _put(registry.host, f"/v2/huge/manifests/{sha256_digest(data)}", data,
         "application/vnd.oci.image.manifest.v1+json")
    tag = f"/v2/huge/manifests/sha256-{digest[7:]}"
    index = json.loads(_get(registry.host, tag)[1])
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": sha256_digest(data), "size": len(data)})
    _put(registry.host, tag, canonical_json(index), INDEX)
    pulled = fresh("pull", f"{registry.host}/huge:1.0.0", "--insecure", check=False)
    got = _pulled_with(fresh, digest, pulled,
                       f"sha256 descriptor of at most {attachments.MAX_PAYLOAD_BYTES} bytes")
    assert got == _payloads(store, digest)


def test_a_second_sbom_a_registry_lists_is_kept_named_and_never_chosen(
        registry: Registry, tmp_path: Path) -> None:
    """Review F3: anyone who can push to the repository adds a second CycloneDX SBOM as a
    referrer; the pull keeps both and warns, and inspect --sbom refuses to print either."""
    fresh, digest, store = _hostile(registry, tmp_path, "forged")
    forged = attachments.attach(store, digest, CDX, b'{"bomFormat":"CycloneDX","FORGED":true}',
                                CDX, keep=True)
    r = docker_cli(tmp_path / "home", tmp_path / "docker")
    r("push", "forged:1.0.0", f"{registry.host}/forged", "--insecure")
    pulled = fresh("pull", f"{registry.host}/forged:1.0.0", "--insecure", check=False)
    got = _pulled_with(fresh, digest, pulled, f"{digest[:19]} now has 2 CycloneDX SBOMs "
                       f"attached (")
    assert f"{forged.digest[:19]} pulled from {registry.host}/forged" in pulled.stderr
    assert set(got) == {CDX, SPDX}
    one_line_error(fresh("inspect", "forged:1.0.0", "--sbom", "cyclonedx", check=False), 2,
                   f"forged:1.0.0 ({digest[:19]}) has 2 CycloneDX SBOMs attached (")
    assert fresh("inspect", "forged:1.0.0", "--sbom", "spdx").stdout.encode() == got[SPDX]


def test_oras_finds_them_in_the_local_store(oras: Path, tmp_path: Path) -> None:
    store, digest, _ = _with_sboms(tmp_path / "home", "local:1.0.0", b"local")
    listed = json.loads(_oras(oras, tmp_path / "oras", "discover", "--oci-layout", "--format",
                              "json", f"{store.root}@{digest}"))
    assert sorted(m["artifactType"] for m in listed["manifests"]) == [SPDX, CDX]


def test_signing_in_a_registry_adds_a_referrer_where_it_has_the_api(
        proxied: ReferrersProxy, registry: Registry, tmp_path: Path) -> None:
    """cosign's layout is the .sig tag in both; a registry with the referrers API also lists
    the signature as a referrer of the image, one without gets no referrers tag from us."""
    private, _, _ = pem_key_pair(tmp_path, "release")
    for host, name, api in ((proxied.host, "signedapi", True), (registry.host, "signedtag", False)):
        r = docker_cli(tmp_path / name, tmp_path / "docker")
        synthetic_image(r.home, f"{name}:1.0", [64], name.encode())
        digest = str(r.json("push", f"{name}:1.0", f"{host}/{name}", "--insecure")["digest"])
        r("sign", f"{host}/{name}:1.0", "--key", str(private), "--insecure")
        assert _get(host, f"/v2/{name}/manifests/{signature_tag(digest)}",
                    MANIFEST_MEDIA_TYPE)[0] == 200
        status, raw = _get(host, f"/v2/{name}/referrers/{digest}")
        if not api:
            assert status == 404
            assert _get(host, f"/v2/{name}/manifests/sha256-{digest[7:]}")[0] == 404
            continue
        listed = [m for m in json.loads(raw)["manifests"]
                  if m["artifactType"] == SIGNATURE_ARTIFACT_TYPE]
        assert len(listed) == 1, raw
        _, manifest = _get(host, f"/v2/{name}/manifests/{listed[0]['digest']}",
                           MANIFEST_MEDIA_TYPE)
        found = json.loads(manifest)
        assert found["subject"]["digest"] == digest
        assert SIGNATURE_ANNOTATION in found["annotations"]


class _Warnings(progress.Silent):
    """A reporter that keeps the warnings."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def warn(self, text: str) -> None:
        self.said.append(text)


def test_a_skipped_referrer_spends_the_byte_budget_all_the_same(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A referrer whose blob fails after download still counts against what a pull takes of
    attachments: a registry cannot make a pull download without end by failing each one."""
    _, digest, store = _hostile(registry, tmp_path, "budget")
    sizes = {d.artifact_type: sum(p.size for p in attachments.all_blobs(store, d))
             for d in attachments.referrers(store, digest)}
    (spdx,) = attachments.referrers(store, digest, SPDX)  # listed first: types sort s < v
    blob = registry.blob_data_path(attachments.all_blobs(store, spdx)[1].digest)
    blob.write_bytes(blob.read_bytes().replace(b"SPDX", b"SPDY"))
    monkeypatch.setattr(referrers, "MAX_TOTAL_BYTES", sizes[SPDX] + sizes[CDX] - 1)
    with progress.using(_Warnings()) as said:
        found = referrers.fetch(Client(registry.host, insecure=True), "budget", digest)
    assert found == []
    assert isinstance(said, _Warnings) and len(said.said) == 2, said
    assert "did not verify" in said.said[0]
    assert f"over {sizes[SPDX] + sizes[CDX] - 1} bytes in all" in said.said[1]
