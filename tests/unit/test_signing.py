"""Signing keys, cosign's signature format and ``sign``/``verify`` on the local store
(imagebuilder/keyfiles.py, cosign.py, signatures.py; the commands in commands/signing.py).

The registry and stock cosign are in tests/e2e/test_signatures.py; here, cosign's own bytes are
replayed: a key file ``cosign generate-key-pair`` (Debian trixie's cosign 2.5) wrote, and a
signature ``cosign sign`` made with it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from imagebuilder.cli import main
from imagebuilder.keyfiles import (
    KeyFileError,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign_bytes,
    verify_bytes,
)
from imagebuilder.registry.client import Client
from imagebuilder.registry.refs import RegistryRef
from imagebuilder.signing import cosign, signatures
from imagebuilder.signing.cosign import (
    SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPE,
    SIMPLESIGNING_MEDIA_TYPE,
    SignatureError,
    parse_sig_manifest,
)
from imagebuilder.signing.signatures import (
    is_registry_ref,
    local_signatures,
    remote_digest,
    verified,
)
from imagebuilder.store import attachments
from imagebuilder.store.layout import (
    INITRD_LAYER_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Store,
)
from support.registry import available as registry_available
from support.registry import start_registry

# Made by Debian trixie's cosign 2.5: `COSIGN_PASSWORD=pw cosign generate-key-pair`, then
# `cosign sign --key cosign.key --tlog-upload=false 127.0.0.1:51029/hello@COSIGN_DIGEST`.
COSIGN_KEY = """\
-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----
eyJrZGYiOnsibmFtZSI6InNjcnlwdCIsInBhcmFtcyI6eyJOIjo2NTUzNiwiciI6
OCwicCI6MX0sInNhbHQiOiJOdUFEMC9GVGlJVXd1NTZicEZxbkhZODJpN2J1SWhM
SjNOTDlXbnZHaFpnPSJ9LCJjaXBoZXIiOnsibmFtZSI6Im5hY2wvc2VjcmV0Ym94
Iiwibm9uY2UiOiJLN1VPYUd0eU41SkdpdU1kWll3VUtHYzRybWFKTnNTaSJ9LCJj
aXBoZXJ0ZXh0IjoiRkVxNE9neVlSdUNXSGxaVjB0a1NQM3VPdyt3akYzWDhOS1dP
WlJqRmlvdVk0Z0R1MmNBY2gwVGNnVDdSVHFiWEt6RktETHRuOGhkcG4wZE1FMlVj
RVlnc3diQ1NTUVNJTlVzNUF3WGhBQm9ncEd0OUZPc1IzaDVzQmxtYSszRTNFVWsy
cnBQMkxsRkVRVVdibi9yb3lWT1VmSVJhVlV3SDYyaE9MT2lDYm1BVjFWYzlOMWE5
andQNiszWG44VG5NajFNUnBJbWM4eTJWNWc9PSJ9
-----END ENCRYPTED SIGSTORE PRIVATE KEY-----
"""
COSIGN_PASSWORD = "pw"
COSIGN_PUB = """\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAECYiIjey4N2arZIxtyynqnZ018kmi
zfsRsU2vQYLOvcBoZub3ZTCZ6Rci4osjLHwwJHTb6tNOPelxpv9ljpDG0Q==
-----END PUBLIC KEY-----
"""
COSIGN_DIGEST = "sha256:0414f9d3dcf4f49d89ef915879535965a6a071647780d52a95a093501a1a3edc"
COSIGN_REFERENCE = "127.0.0.1:51029/hello"
COSIGN_PAYLOAD_SHA256 = "f769f80d114605a04bf3532ebd20e9a248a3e54654ea2395bd7fa585b15a6766"
COSIGN_SIGNATURE = ("MEYCIQDDUupagao/jJ7opy50l+jxkux2cbchiP9n+mj8br3wGAIhAIjFmpEhSZoVdnsaai80JJP"
                    "hkSZ/gfCXw7VqdGfUCYc3")


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COSIGN_PASSWORD", "IMAGEBUILDER_KEY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)


def _pem(key: Any, password: bytes | None = None,
         fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)  # type: ignore[no-any-return]


def _pub(key: Any) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _certificate(key: ec.EllipticCurvePrivateKey, start: datetime, end: datetime) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(start).not_valid_after(end).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
@pytest.mark.parametrize("variable", [None, "COSIGN_PASSWORD", "IMAGEBUILDER_KEY_PASSWORD"])
def test_pem_private_keys_plain_and_encrypted(tmp_path: Path, p256: ec.EllipticCurvePrivateKey,
                                              fmt: serialization.PrivateFormat,
                                              variable: str | None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    if variable:
        monkeypatch.setenv(variable, "s3cret")
    path = _write(tmp_path / "key.pem", _pem(p256, b"s3cret" if variable else None, fmt))
    key = load_private_key(path)
    public = load_public_key(_write(tmp_path / "key.pub", _pub(p256)))
    assert key.public().fingerprint == public.fingerprint
    assert verify_bytes(public, b"data", sign_bytes(key, b"data"))
    assert not verify_bytes(public, b"other", sign_bytes(key, b"data"))
    assert "s3cret" not in repr(key) and "BEGIN" not in repr(key)


def test_a_password_that_is_not_utf8_opens_its_key(tmp_path: Path,
                                                   p256: ec.EllipticCurvePrivateKey) -> None:
    """cosign reads COSIGN_PASSWORD as bytes; so do we (it was a UnicodeEncodeError traceback
    quoting a byte of the password)."""
    password = b"s3cr\xffT"
    path = _write(tmp_path / "key.pem", _pem(p256, password,
                                             serialization.PrivateFormat.PKCS8))
    os.environb[b"COSIGN_PASSWORD"] = password
    try:
        key = load_private_key(path)
    finally:
        del os.environb[b"COSIGN_PASSWORD"]
    assert key.public().fingerprint == load_public_key(
        _write(tmp_path / "key.pub", _pub(p256))).fingerprint


def test_cosign_key_file_and_signature_replayed(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """cosign's own key file opens with COSIGN_PASSWORD; its key and cosign's signature agree
    with cosign's public key; our payload is byte for byte the one cosign signed."""
    monkeypatch.setenv("COSIGN_PASSWORD", COSIGN_PASSWORD)
    key = load_private_key(_write(tmp_path / "cosign.key", COSIGN_KEY))
    public = load_public_key(_write(tmp_path / "cosign.pub", COSIGN_PUB))
    assert key.public().fingerprint == public.fingerprint
    payload = cosign.payload(COSIGN_REFERENCE, COSIGN_DIGEST)
    assert cosign.sha256_digest(payload) == f"sha256:{COSIGN_PAYLOAD_SHA256}"
    assert verify_bytes(public, payload, base64.b64decode(COSIGN_SIGNATURE))
    ours = cosign.sign(key, COSIGN_REFERENCE, COSIGN_DIGEST)
    assert ours.payload == payload and verify_bytes(public, payload,
                                                    base64.b64decode(ours.signature))


BadKey = Callable[[Path, ec.EllipticCurvePrivateKey], Path]


def _truncated_cosign(tmp: Path, _: ec.EllipticCurvePrivateKey) -> Path:
    lines = COSIGN_KEY.splitlines()
    return _write(tmp / "cosign.key", "\n".join([*lines[:5], lines[-1]]) + "\n")


def _greedy_scrypt(tmp: Path, _: ec.EllipticCurvePrivateKey) -> Path:
    body = "".join(COSIGN_KEY.splitlines()[1:-1])
    doc = json.loads(base64.b64decode(body))
    doc["kdf"]["params"]["N"] = 1 << 30
    text = base64.b64encode(json.dumps(doc).encode()).decode()
    return _write(tmp / "cosign.key", "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
                  f"{text}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")


BAD_PRIVATE_KEYS: dict[str, tuple[BadKey, str]] = {
    "garbage": (lambda t, k: _write(t / "k", os.urandom(300)), "is not a PEM key"),
    "empty": (lambda t, k: _write(t / "k", b""), "is not a PEM key"),
    "missing": (lambda t, k: t / "nothing.key", "does not exist"),
    "directory": (lambda t, k: t, "is not a regular file"),
    "huge": (lambda t, k: _write(t / "k", b"A" * (65 << 10)), "larger than 64 KiB"),
    "truncated": (lambda t, k: _write(t / "k", _pem(k)[:150] + b"\n-----END PRIVATE KEY-----\n"),
                  "damaged or truncated?"),
    "cut off": (lambda t, k: _write(t / "k", _pem(k)[:-40]), "is not a PEM key"),
    "P-384": (lambda t, k: _write(t / "k", _pem(ec.generate_private_key(ec.SECP384R1()))),
              "holds an ECDSA key on curve secp384r1"),
    "RSA": (lambda t, k: _write(t / "k", _pem(rsa.generate_private_key(65537, 2048))),
            "holds an RSA key"),
    "Ed25519": (lambda t, k: _write(t / "k", _pem(ed25519.Ed25519PrivateKey.generate())),
                "holds an Ed25519 key"),
    "public key": (lambda t, k: _write(t / "k", _pub(k)), "holds a public key"),
    "no password": (lambda t, k: _write(t / "k", _pem(k, b"pw")),
                    "is encrypted: set COSIGN_PASSWORD"),
    "cosign key, no password": (lambda t, k: _write(t / "cosign.key", COSIGN_KEY),
                                "is encrypted: set COSIGN_PASSWORD"),
    "cosign key truncated": (_truncated_cosign, "not a readable cosign key"),
    "cosign key, greedy scrypt": (_greedy_scrypt, "scrypt parameters N=1073741824"),
}


@pytest.mark.parametrize("case", list(BAD_PRIVATE_KEYS))
def test_bad_private_key_is_one_line_without_key_material(
        case: str, tmp_path: Path, p256: ec.EllipticCurvePrivateKey, home: Path,
        invoke: Callable[..., Any]) -> None:
    make, message = BAD_PRIVATE_KEYS[case]
    path = make(tmp_path, p256)
    result = invoke("sign", "hello:1.0", "--key", str(path))
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert result.err.startswith(f"ERROR: key file {path}") and message in result.err, result.err
    _assert_no_key_material(path, result.err)


def _assert_no_key_material(path: Path, text: str) -> None:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except (IsADirectoryError, FileNotFoundError):
        return
    for line in lines:
        if len(line) >= 16 and not line.startswith("-----"):
            assert line[:16] not in text


@pytest.mark.parametrize("password", ["wrong", ""])
def test_wrong_password_is_refused(tmp_path: Path, p256: ec.EllipticCurvePrivateKey,
                                   monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", password)
    for path in (_write(tmp_path / "cosign.key", COSIGN_KEY),
                 _write(tmp_path / "key.pem", _pem(p256, b"right"))):
        with pytest.raises(KeyFileError, match=f"cannot decrypt key file {path}: wrong password"):
            load_private_key(path)


def test_certificates_as_public_keys(tmp_path: Path, p256: ec.EllipticCurvePrivateKey) -> None:
    now = datetime.now(UTC)
    good = _write(tmp_path / "good.crt", _certificate(p256, now - timedelta(days=1),
                                                      now + timedelta(days=1)))
    assert load_public_key(good).fingerprint == load_public_key(
        _write(tmp_path / "k.pub", _pub(p256))).fingerprint
    expired = _write(tmp_path / "old.crt", _certificate(p256, now - timedelta(days=9),
                                                        now - timedelta(days=2)))
    with pytest.raises(KeyFileError, match=r"certificate .*old.crt expired on \d{4}-"):
        load_public_key(expired)
    future = _write(tmp_path / "new.crt", _certificate(p256, now + timedelta(days=2),
                                                       now + timedelta(days=9)))
    with pytest.raises(KeyFileError, match="is not valid before"):
        load_public_key(future)


BAD_PUBLIC_KEYS: dict[str, tuple[BadKey, str]] = {
    "garbage": (lambda t, k: _write(t / "k.pub", b"\x00garbage" * 9), "is not a PEM key"),
    "private key": (lambda t, k: _write(t / "k.pub", _pem(k)), "is a private key"),
    "cosign private key": (lambda t, k: _write(t / "k.pub", COSIGN_KEY), "is a private key"),
    "truncated": (lambda t, k: _write(t / "k.pub", _pub(k)[:60] + b"\n-----END PUBLIC KEY-----"),
                  "damaged or truncated?"),
    "RSA": (lambda t, k: _write(t / "k.pub", _pub(rsa.generate_private_key(65537, 2048))),
            "holds an RSA key"),
    "P-384": (lambda t, k: _write(t / "k.pub", _pub(ec.generate_private_key(ec.SECP384R1()))),
              "holds an ECDSA key on curve secp384r1"),
    "expired certificate": (lambda t, k: _write(t / "k.pub", _certificate(
        k, datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC))),
        "expired on 2021-01-01"),
}


@pytest.mark.parametrize("case", list(BAD_PUBLIC_KEYS))
def test_bad_public_key_is_one_line(case: str, tmp_path: Path, p256: ec.EllipticCurvePrivateKey,
                                    home: Path, invoke: Callable[..., Any]) -> None:
    make, message = BAD_PUBLIC_KEYS[case]
    path = make(tmp_path, p256)
    result = invoke("verify", "hello:1.0", "--key", str(path))
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert path.name in result.err and message in result.err, result.err
    _assert_no_key_material(path, result.err)


def test_load_public_keys_needs_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no public key given"):
        load_public_keys([])


# --- the format --------------------------------------------------------------------------------


def test_payload_and_tag_as_cosign_writes_them() -> None:
    digest = "sha256:" + "ab" * 32
    assert cosign.payload("reg.example:5000/app", digest) == (
        b'{"critical":{"identity":{"docker-reference":"reg.example:5000/app"},"image":'
        b'{"docker-manifest-digest":"' + digest.encode() + b'"},"type":"cosign container '
        b'image signature"},"optional":null}')
    assert cosign.signature_tag(digest) == "sha256-" + "ab" * 32 + ".sig"


def test_sig_manifest_round_trip() -> None:
    sig = cosign.Signature(b'{"x":1}', "c2ln")
    config, manifest = cosign.sig_manifest([sig.layer()])
    doc = json.loads(manifest)
    assert doc["config"]["digest"] == cosign.sha256_digest(config)
    assert json.loads(config)["rootfs"]["diff_ids"] == [sig.layer().digest]
    assert parse_sig_manifest(manifest, "here") == [sig.layer()]


GOOD_LAYER = {"mediaType": SIMPLESIGNING_MEDIA_TYPE, "digest": "sha256:" + "0" * 64, "size": 9,
              "annotations": {SIGNATURE_ANNOTATION: "c2ln"}}
GARBAGE_SIG_MANIFESTS = {
    "not JSON": (b"\xff{", "not JSON"),
    "a list": (b"[]", "schema version 2"),
    "an index": (json.dumps({"schemaVersion": 2, "mediaType":
                             "application/vnd.oci.image.index.v1+json", "manifests": []}).encode(),
                 "schema version 2"),
    "no layers": (json.dumps({"schemaVersion": 2}).encode(), "no list of at most 256 layers"),
    "too many": (json.dumps({"schemaVersion": 2, "layers": [GOOD_LAYER] * 257}).encode(),
                 "no list of at most 256 layers"),
    "bad digest": (json.dumps({"schemaVersion": 2, "layers": [
        {**GOOD_LAYER, "digest": "md5:x"}]}).encode(), "layer 0 has no media type or sha256"),
    "huge payload": (json.dumps({"schemaVersion": 2, "layers": [
        {**GOOD_LAYER, "size": 1 << 30}]}).encode(), "size that is not 0 to 65536"),
    "odd annotations": (json.dumps({"schemaVersion": 2, "layers": [
        {**GOOD_LAYER, "annotations": {SIGNATURE_ANNOTATION: 5}}]}).encode(),
        "annotations that are not strings"),
}


@pytest.mark.parametrize("case", list(GARBAGE_SIG_MANIFESTS))
def test_garbage_sig_manifest_is_refused(case: str) -> None:
    data, message = GARBAGE_SIG_MANIFESTS[case]
    with pytest.raises(SignatureError, match="^reg/app:x.sig is not a cosign signature "
                                             "manifest") as info:
        parse_sig_manifest(data, "reg/app:x.sig")
    assert message in str(info.value)


def test_registry_refs_are_told_from_store_refs() -> None:
    assert is_registry_ref("127.0.0.1:5000/app:1") and is_registry_ref("ghcr.io/o/app@sha256:1")
    assert is_registry_ref("localhost/app:1")
    for ref in ("hello:1.0", "sha256:0414f9d3dcf4", "team/app:1.0", "hello"):
        assert not is_registry_ref(ref)


# --- sign and verify in the store -------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def invoke(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def _image(home: Path, ref: str, seed: bytes) -> str:
    store = Store(home / "store")
    layers = [store.add_blob_bytes(b"kernel", KERNEL_MEDIA_TYPE),
              store.add_blob_bytes(b"layer " + seed, INITRD_LAYER_MEDIA_TYPE)]
    name, version = ref.split(":")
    return store.put_image(ref, {"name": name, "version": version}, layers)


@pytest.fixture
def keys(tmp_path: Path, p256: ec.EllipticCurvePrivateKey) -> dict[str, Path]:
    other = ec.generate_private_key(ec.SECP256R1())
    return {"key": _write(tmp_path / "release.key", _pem(p256)),
            "pub": _write(tmp_path / "release.pub", _pub(p256)),
            "other": _write(tmp_path / "other.pub", _pub(other))}


def _one_error(result: Result) -> str:
    assert result.code == 2 and result.err.startswith("ERROR: ") \
        and result.err.count("\n") == 1, (result.code, result.err)
    return result.err


def test_sign_then_verify_in_the_store(home: Path, keys: dict[str, Path],
                                       invoke: Callable[..., Result]) -> None:
    digest = _image(home, "hello:1.0", b"a")
    signed = invoke("sign", "hello:1.0", "--key", str(keys["key"]))
    assert signed.code == 0 and signed.out.startswith(
        f"signed hello:1.0 ({digest[:19]}) with {keys['key']}"), signed.err
    again = invoke("sign", digest, "--key", str(keys["key"]), "--json")
    assert json.loads(again.out)["added"] is False  # one signature per key and digest
    assert len(local_signatures(Store(home / "store"), digest)) == 1
    human = invoke("verify", "hello:1.0", "--key", str(keys["pub"]))
    assert human.code == 0 and human.out == (
        f"verified hello:1.0 ({digest[:19]}): signed with {keys['pub']} "
        f"({load_public_key(keys['pub']).fingerprint[:19]})\n")
    out = json.loads(invoke("verify", "hello:1.0", "--key", str(keys["other"]), "--key",
                            str(keys["pub"]), "--json").out)
    assert out == {"ref": "hello:1.0", "digest": digest, "verified": True, "signatures": 1,
                   "signers": [load_public_key(keys["pub"]).to_json()]}
    assert verified(Store(home / "store"), "hello:1.0", load_public_keys([keys["pub"]]))
    assert "hello" in [line.split()[0] for line in invoke("images").out.splitlines()]
    assert invoke("images").out.count("hello") == 1  # the signature is not listed as an image


def test_the_key_never_enters_the_store(home: Path, keys: dict[str, Path],
                                        p256: ec.EllipticCurvePrivateKey,
                                        monkeypatch: pytest.MonkeyPatch,
                                        invoke: Callable[..., Result]) -> None:
    monkeypatch.setenv("COSIGN_PASSWORD", "a-password-123")
    _write(keys["key"], _pem(p256, b"a-password-123"))
    _image(home, "hello:1.0", b"a")
    assert invoke("sign", "hello:1.0", "--key", str(keys["key"])).code == 0
    secrets = [p256.private_numbers().private_value.to_bytes(32, "big"), b"a-password-123",
               _pem(p256).splitlines()[1],
               p256.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())]
    for path in (home / "store").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data or base64.b64encode(secret) in data
                           for secret in secrets), path


def test_verify_refusals_in_the_store(home: Path, keys: dict[str, Path],
                                      invoke: Callable[..., Result]) -> None:
    store = Store(home / "store")
    a = _image(home, "hello:1.0", b"a")
    b = _image(home, "hello:2.0", b"b")
    pub = ("--key", str(keys["pub"]))
    assert "hello:2.0 (" in _one_error(invoke("verify", "hello:2.0", *pub))
    assert "it has no signatures" in _one_error(invoke("verify", "hello:2.0", *pub))
    assert invoke("sign", "hello:1.0", "--key", str(keys["key"])).code == 0

    wrong = _one_error(invoke("verify", "hello:1.0", "--key", str(keys["other"])))
    assert wrong == (f"ERROR: image hello:1.0 ({a[:19]}): none of its 1 signature verifies "
                     f"with key {keys['other']} (signed with another key, or the payload or "
                     "signature was changed since)\n")

    # a signature of 1.0, copied to 2.0: valid, by the right key, for another digest
    sig = local_signatures(store, a)[0]
    attachments.attach(store, b, SIGNATURE_ARTIFACT_TYPE, sig.payload, SIMPLESIGNING_MEDIA_TYPE,
                       {SIGNATURE_ANNOTATION: sig.signature}, keep=True)
    other = _one_error(invoke("verify", "hello:2.0", *pub))
    assert f"hello:2.0 ({b[:19]}): the signature by key {keys['pub']} is for another image " \
        f"({a[:19]})" in other

    # the manifest changed: hello:1.0 is now another image, which nobody signed
    changed = _image(home, "hello:1.0", b"changed")
    assert changed != a
    assert f"hello:1.0 ({changed[:19]}): it has no signatures" in _one_error(
        invoke("verify", "hello:1.0", *pub))


def test_tampered_signatures_in_the_store(home: Path, keys: dict[str, Path],
                                          invoke: Callable[..., Result]) -> None:
    store = Store(home / "store")
    a = _image(home, "hello:1.0", b"a")
    key = load_private_key(keys["key"])
    good = cosign.sign(key, "hello", a)
    flipped = good.signature[:10] + ("A" if good.signature[10] != "A" else "B") \
        + good.signature[11:]
    attachments.attach(store, a, SIGNATURE_ARTIFACT_TYPE, good.payload, SIMPLESIGNING_MEDIA_TYPE,
                       {SIGNATURE_ANNOTATION: flipped}, keep=True)
    assert "none of its 1 signature verifies" in _one_error(
        invoke("verify", "hello:1.0", "--key", str(keys["pub"])))

    # a payload changed after signing (another reference, same digest): the signature fails
    changed = good.payload.replace(b'"hello"', b'"evil"')
    attachments.attach(store, a, SIGNATURE_ARTIFACT_TYPE, changed, SIMPLESIGNING_MEDIA_TYPE,
                       {SIGNATURE_ANNOTATION: good.signature}, keep=True)
    assert "none of its 2 signatures verifies" in _one_error(
        invoke("verify", "hello:1.0", "--key", str(keys["pub"])))

    # the right signature, its payload blob then edited in place in the store
    attachments.attach(store, a, SIGNATURE_ARTIFACT_TYPE, good.payload, SIMPLESIGNING_MEDIA_TYPE,
                       {SIGNATURE_ANNOTATION: good.signature}, keep=True)
    assert invoke("verify", "hello:1.0", "--key", str(keys["pub"])).code == 0
    blob = store.blob_path(cosign.sha256_digest(good.payload))
    blob.write_bytes(good.payload.replace(b"cosign", b"cosigm"))
    assert "none of its 3 signatures verifies" in _one_error(
        invoke("verify", "hello:1.0", "--key", str(keys["pub"])))


def test_a_signed_payload_that_is_not_cosigns_is_refused(home: Path, keys: dict[str, Path],
                                                         invoke: Callable[..., Result]) -> None:
    """A signature by the trusted key over something else (a DSSE payload, any blob the key
    signed) does not sign the image."""
    store = Store(home / "store")
    a = _image(home, "hello:1.0", b"a")
    data = json.dumps({"critical": {"image": {"docker-manifest-digest": a},
                                    "type": "something else"}}).encode()
    sig = base64.b64encode(sign_bytes(load_private_key(keys["key"]), data)).decode()
    attachments.attach(store, a, SIGNATURE_ARTIFACT_TYPE, data, SIMPLESIGNING_MEDIA_TYPE,
                       {SIGNATURE_ANNOTATION: sig}, keep=True)
    assert "is not a cosign signature payload" in _one_error(
        invoke("verify", "hello:1.0", "--key", str(keys["pub"])))


def test_unknown_image_is_one_line(home: Path, keys: dict[str, Path],
                                   invoke: Callable[..., Result]) -> None:
    assert "no image 'nope:1'" in _one_error(invoke("sign", "nope:1", "--key", str(keys["key"])))
    assert "no image 'nope:1'" in _one_error(invoke("verify", "nope:1", "--key", str(keys["pub"])))


def _cosign_key_with_params(tmp: Path, params: str) -> Path:
    """cosign's key file with its scrypt parameters replaced by the JSON text ``params``
    (written as text, so that ``Infinity`` and ``1e999`` reach the reader as a file has them)."""
    doc = json.loads(base64.b64decode("".join(COSIGN_KEY.splitlines()[1:-1])))
    doc["kdf"]["params"] = "PARAMS"
    text = json.dumps(doc).replace('"PARAMS"', params)
    body = base64.b64encode(text.encode()).decode()
    return _write(tmp / "cosign.key", "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
                  f"{body}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")


@pytest.mark.parametrize("params, message", [
    ('{"N": Infinity, "r": 8, "p": 1}', "damaged"),
    ('{"N": 1e999, "r": 8, "p": 1}', "damaged"),
    ('{"N": 2.5, "r": 8, "p": 1}', "damaged"),
    ('{"N": "32768", "r": 8, "p": 1}', "damaged"),
    ('{"N": 32768, "r": true, "p": 1}', "damaged"),
    ('{"N": 1048576, "r": 1, "p": 1}', "N=1048576, r=1, p=1"),  # the library refuses: r too small
    ('{"N": 524288, "r": 1, "p": 16}', "N=524288, r=1, p=16"),
    ('{"N": 262144, "r": 8, "p": 16}', "N=262144, r=8, p=16"),  # 4 GiB of work
    ('{"N": 32768, "r": 8, "p": 0}', "N=32768, r=8, p=0"),
    ('{"N": 2, "r": 1000000000000, "p": 1}', "N=2, r=1000000000000, p=1"),
])
def test_hostile_scrypt_parameters_are_one_line(
        params: str, message: str, tmp_path: Path, home: Path, invoke: Callable[..., Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding F2: parameters a key file should never have (not integers, beyond what
    OpenSSL's scrypt accepts, or hours of work) are one line, exit 2, before any derivation."""
    monkeypatch.setenv("COSIGN_PASSWORD", "pw")
    path = _cosign_key_with_params(tmp_path, params)
    result = invoke("sign", "hello:1.0", "--key", str(path))
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert result.err.startswith(f"ERROR: key file {path}") and message in result.err, result.err


def test_cosigns_own_scrypt_parameters_are_taken(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound leaves room for cosign's own parameters (2.5 writes N=65536, r=8, p=1)."""
    monkeypatch.setenv("COSIGN_PASSWORD", COSIGN_PASSWORD)
    path = _cosign_key_with_params(tmp_path, '{"N": 65536, "r": 8, "p": 1}')
    public = load_public_key(_write(tmp_path / "cosign.pub", COSIGN_PUB))
    assert load_private_key(path).public().fingerprint == public.fingerprint


# --- two signers of one registry image at once (review D, F10) ------------------------------


@pytest.mark.skipif(not registry_available(), reason="needs docker-registry (setup.sh)")
@pytest.mark.parametrize("overwrites", [1, signatures.SIGN_TRIES])
def test_a_signature_a_concurrent_signer_replaced_is_appended_again(
        home: Path, keys: dict[str, Path], tmp_path: Path, invoke: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch, overwrites: int) -> None:
    """Another signer read the ``.sig`` tag before our PUT and writes its own list after it
    (the registry keeps the last PUT): ours is appended again on top of theirs, or, when it
    keeps being replaced, one line says so (a real docker-registry; the other signer is
    replayed at the moment of the race)."""
    registry = start_registry(tmp_path / "registry")
    try:
        _image(home, "hello:1.0", b"a")
        repo = f"{registry.host}/app"
        assert invoke("push", "hello:1.0", repo, "--insecure").code == 0
        client = Client(registry.host, insecure=True)
        digest = remote_digest(client, RegistryRef.parse(f"{repo}:1.0"))
        theirs = ec.generate_private_key(ec.SECP256R1())
        sig = cosign.sign(load_private_key(_write(tmp_path / "theirs.key", _pem(theirs))),
                          repo, digest)
        config, manifest = cosign.sig_manifest([sig.layer()])
        for blob in (sig.payload, config):
            client.ensure_blob_bytes("app", blob)
        put = Client.put_manifest
        raced: list[str] = []

        def racing(self: Client, repo_: str, reference: str, data: bytes, media_type: str) -> str:
            out = put(self, repo_, reference, data, media_type)
            if reference.endswith(".sig") and len(raced) < overwrites:
                raced.append(put(self, repo_, reference, manifest, MANIFEST_MEDIA_TYPE))
            return out

        monkeypatch.setattr(Client, "put_manifest", racing)
        result = invoke("sign", f"{repo}:1.0", "--key", str(keys["key"]), "--insecure")
        monkeypatch.setattr(Client, "put_manifest", put)
        target = RegistryRef.parse(f"{repo}:1.0")
        ours = verified(client, target, [load_public_key(keys["pub"])])
        if overwrites < signatures.SIGN_TRIES:
            assert result.code == 0 and len(raced) == overwrites, result.err
            assert ours, ours.problem
            assert verified(client, target, [load_public_key(_write(
                tmp_path / "theirs.pub", _pub(theirs)))])  # theirs kept too
        else:
            assert _one_error(result) == (
                f"ERROR: the signature of {repo}:1.0 ({digest[:19]}) was replaced "
                f"{overwrites} times in {repo}:{cosign.signature_tag(digest)} by other signers "
                "writing it at the same time; sign again once they are done\n")
            assert not ours
    finally:
        registry.stop()
