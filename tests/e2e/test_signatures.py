"""End to end: signatures in a real registry (Debian's docker-registry on 127.0.0.1) and stock
cosign (Debian trixie's cosign 2.5, fetched and verified by support/cosign.py) in both
directions: ``cosign verify`` accepts what ``imagebuilder sign`` writes (in the registry, and
what ``push`` carries from the store), ``imagebuilder verify`` accepts what ``cosign sign`` writes
with a key of ``cosign generate-key-pair``; and every way a registry's signatures can be wrong is
refused with one line naming the image. The images are synthetic (no build): what is signed is
the manifest digest, whatever the layers hold.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from imagebuilder.signing.cosign import SIGNATURE_ANNOTATION, signature_tag
from support.cosign import Cosign
from support.keys import pem_key_pair
from support.registry import Registry, available

from .conftest import Cli, one_line_error, synthetic_image

pytestmark = [pytest.mark.e2e, pytest.mark.network,
              pytest.mark.skipif(not available(), reason="needs docker-registry (setup.sh)")]

PASSWORD = "cosign-test-password"


@pytest.fixture(scope="module")
def cosign(tmp_path_factory: pytest.TempPathFactory) -> Cosign:
    return Cosign(tmp_path_factory.mktemp("cosign"), PASSWORD)


@pytest.fixture(scope="module")
def cosign_keys(cosign: Cosign) -> tuple[Path, Path]:
    """cosign.key (cosign's encrypted format) and cosign.pub, by ``cosign generate-key-pair``."""
    return cosign.generate_key_pair()


def _pem_pair(tmp: Path, name: str) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    return pem_key_pair(tmp, name)


def _cosign_verify(cosign: Cosign, pub: Path, ref: str, check: bool = True) -> list[dict]:  # type: ignore[type-arg]
    result = cosign("verify", "--key", str(pub), "--insecure-ignore-tlog=true",
                    "--allow-http-registry", ref, check=check)
    return json.loads(result.stdout) if result.returncode == 0 else []


def _pushed(tmp: Path, registry: Registry, ref: str, seed: bytes) -> tuple[Cli, str, str]:
    """A synthetic image ``ref`` pushed to ``registry``; (cli, repo, digest)."""
    cli = Cli(tmp / "home", {"COSIGN_PASSWORD": PASSWORD})
    synthetic_image(cli.home, ref, [64], seed)
    repo = f"{registry.host}/{ref.split(':')[0]}"
    out = cli.json("push", ref, repo, "--insecure")
    return cli, repo, str(out["digest"])


def test_cosign_verifies_what_imagebuilder_signs(registry: Registry, cosign: Cosign,
                                                 tmp_path: Path) -> None:
    cli, repo, digest = _pushed(tmp_path, registry, "inreg:1.0", b"a")
    private, public, key = _pem_pair(tmp_path, "release")

    # In the registry, by tag: cosign finds it at the .sig tag of the digest.
    signed = cli("sign", f"{repo}:1.0", "--key", str(private), "--insecure").stdout
    assert signed.splitlines()[0] == (f"signed {repo}:1.0 ({digest[:19]}) with {private} "
                                      f"({signed.split('(')[2][:19]}): "
                                      f"{repo}:{signature_tag(digest)}")
    payloads = _cosign_verify(cosign, public, f"{repo}@{digest}")
    assert [p["critical"]["image"]["docker-manifest-digest"] for p in payloads] == [digest]
    assert payloads[0]["critical"]["identity"]["docker-reference"] == repo

    # Signed in the store, then carried by push to the .sig tag (appended to the first).
    cli2, repo2, digest2 = _pushed(tmp_path / "two", registry, "fromstore:1.0", b"b")
    private2, public2, _ = _pem_pair(tmp_path, "store")
    out = cli2.json("sign", "fromstore:1.0", "--key", str(private2))
    assert (out["digest"], out["added"], out["location"]) == (digest2, True, "the local store")
    assert cli2.json("push", "fromstore:1.0", repo2, "--insecure")["signatures_sent"] == 1
    assert cli2.json("push", "fromstore:1.0", repo2, "--insecure")["signatures_sent"] == 0
    assert len(_cosign_verify(cosign, public2, f"{repo2}@{digest2}")) == 1
    assert _cosign_verify(cosign, public, f"{repo2}@{digest2}", check=False) == []

    # Neither key reached the registry: not its bytes, not its PEM text.
    secrets = [key.private_numbers().private_value.to_bytes(32, "big"),
               private.read_bytes().splitlines()[1]]
    for path in registry.storage.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path


def test_imagebuilder_verifies_what_cosign_signs(registry: Registry, cosign: Cosign,
                                                 cosign_keys: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    cosign_key, cosign_pub = cosign_keys
    cli, repo, digest = _pushed(tmp_path, registry, "bycosign:1.0", b"c")
    cosign("sign", "--key", str(cosign_key), "--tlog-upload=false", "--allow-http-registry",
           "--yes", f"{repo}@{digest}")

    human = cli("verify", f"{repo}@{digest}", "--key", str(cosign_pub), "--insecure").stdout
    assert human.startswith(f"verified {repo}@{digest} ({digest[:19]}): signed with "
                            f"{cosign_pub} (sha256:")
    out = cli.json("verify", f"{repo}:1.0", "--key", str(cosign_pub), "--insecure")
    assert (out["verified"], out["digest"], out["signatures"]) == (True, digest, 1)
    assert [s["key"] for s in out["signers"]] == [str(cosign_pub)]

    # cosign's own key file signs for us too (COSIGN_PASSWORD), appended after cosign's.
    appended = cli.json("sign", f"{repo}:1.0", "--key", str(cosign_key), "--insecure")
    assert appended["added"] is False  # that key already signed this digest: not twice
    other_key, other_pub, _ = _pem_pair(tmp_path, "other")
    assert cli.json("sign", f"{repo}:1.0", "--key", str(other_key), "--insecure")["added"]
    assert len(_cosign_verify(cosign, other_pub, f"{repo}@{digest}")) == 1
    assert len(_cosign_verify(cosign, cosign_pub, f"{repo}@{digest}")) == 1

    # pull keeps cosign's signature with the image: verify in the store, without the registry.
    puller = Cli(tmp_path / "pulled")
    puller("pull", f"{repo}:1.0", "--insecure")
    local = puller.json("verify", "bycosign:1.0", "--key", str(cosign_pub))
    assert (local["verified"], local["signatures"]) == (True, 2)


def _manifest(registry: Registry, repo: str, reference: str) -> bytes:
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{reference}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return bytes(response.read())


def _put_manifest(registry: Registry, repo: str, tag: str, data: bytes,
                  media_type: str = "application/vnd.oci.image.manifest.v1+json") -> None:
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}", data=data, method="PUT",
        headers={"Content-Type": media_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


def test_verify_refusals_in_the_registry(registry: Registry, cosign: Cosign, tmp_path: Path,
                                         ) -> None:
    cli, repo, a = _pushed(tmp_path, registry, "refused:1.0", b"d")
    synthetic_image(cli.home, "refused:2.0", [64], b"e")
    b = cli.json("push", "refused:2.0", repo, "--insecure")["digest"]
    private, public, _ = _pem_pair(tmp_path, "release")
    _, stranger, _ = _pem_pair(tmp_path, "stranger")
    cli("sign", f"{repo}:1.0", "--key", str(private), "--insecure")

    def refused(ref: str, text: str, key: Path = public) -> None:
        result = cli("verify", ref, "--key", str(key), "--insecure", check=False)
        one_line_error(result, 2, text)
        assert f"image {ref} (" in result.stderr

    refused(f"{repo}:2.0", "it has no signatures")
    refused(f"{repo}:1.0", f"none of its 1 signature verifies with key {stranger}", stranger)

    # a's signatures copied to b's .sig tag: valid, by the key, for another digest
    sig_a = _manifest(registry, "refused", signature_tag(a))
    _put_manifest(registry, "refused", signature_tag(b), sig_a)
    refused(f"{repo}:2.0", f"the signature by key {public} is for another image ({a[:19]})")
    assert _cosign_verify(cosign, public, f"{repo}@{b}", check=False) == []

    # the tag moved to another manifest: what it names now was never signed
    cli("push", "refused:2.0", f"{repo}:1.0", "--insecure", "--force")
    refused(f"{repo}:1.0", "the signature by key")  # b's .sig holds a's signature
    cli("push", "refused:1.0", f"{repo}:1.0", "--insecure", "--force")
    assert cli("verify", f"{repo}:1.0", "--key", str(public), "--insecure").returncode == 0

    # a tampered signature annotation
    doc = json.loads(sig_a)
    good = doc["layers"][0]["annotations"][SIGNATURE_ANNOTATION]
    doc["layers"][0]["annotations"][SIGNATURE_ANNOTATION] = good[:20] + (
        "A" if good[20] != "A" else "B") + good[21:]
    _put_manifest(registry, "refused", signature_tag(a), json.dumps(doc).encode())
    refused(f"{repo}@{a}", "none of its 1 signature verifies")
    assert _cosign_verify(cosign, public, f"{repo}@{a}", check=False) == []

    # the payload blob changed in the registry's storage
    _put_manifest(registry, "refused", signature_tag(a), sig_a)
    payload_path = registry.blob_data_path(doc["layers"][0]["digest"])
    payload_path.write_bytes(payload_path.read_bytes().replace(b"cosign", b"cosigm"))
    refused(f"{repo}@{a}", "its signature is damaged or tampered with (payload blob")

    # garbage at the .sig tag: an index, where a signature manifest belongs
    garbage = json.dumps({"schemaVersion": 2, "manifests": [],
                          "mediaType": "application/vnd.oci.image.index.v1+json"}).encode()
    _put_manifest(registry, "refused", signature_tag(b), garbage,
                  "application/vnd.oci.image.index.v1+json")
    refused(f"{repo}:2.0", f"{repo}:{signature_tag(b)} is not a cosign signature manifest")
    pulled = Cli(tmp_path / "pulled")("pull", f"{repo}:2.0", "--insecure")
    assert pulled.stderr.startswith(f"WARNING: {repo}:{signature_tag(b)} is not a cosign "
                                    "signature manifest") and pulled.stderr.endswith(
        "; its signatures were not taken\n"), pulled.stderr
