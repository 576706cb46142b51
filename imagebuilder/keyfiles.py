"""Signing keys: ECDSA P-256 keys read from the files people already have, and the two
operations on bytes that everything else is built from (:func:`sign_bytes`, :func:`verify_bytes`).

cosign signs container images with ECDSA P-256 over SHA-256, and so do we, so that one key pair
serves both tools. A private key may be:

- PEM PKCS#8 (``PRIVATE KEY``, ``ENCRYPTED PRIVATE KEY``) or SEC1 (``EC PRIVATE KEY``, possibly
  with OpenSSL's ``Proc-Type: 4,ENCRYPTED`` header), as ``openssl`` writes them;
- cosign's own file (``ENCRYPTED SIGSTORE PRIVATE KEY``, formerly ``ENCRYPTED COSIGN PRIVATE
  KEY``): a JSON document holding the PKCS#8 key encrypted with NaCl secretbox under a key derived
  from the password by scrypt, as ``cosign generate-key-pair`` writes it.

The password of an encrypted key comes from ``COSIGN_PASSWORD`` (as cosign reads it) or
``IMAGEBUILDER_KEY_PASSWORD``. A public key is PEM ``PUBLIC KEY`` (cosign.pub) or an X.509
certificate, whose validity period is checked: a PEM key has no expiry, a certificate has.

Every key that cannot be used is one :class:`KeyFileError` line naming the file and what is wrong
with it, never a byte of what it holds: keys reach neither an image, nor a log, nor an error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import UserError

PASSWORD_VARS = ("COSIGN_PASSWORD", "IMAGEBUILDER_KEY_PASSWORD")
"""Where the password of an encrypted private key is read from, in this order."""
MAX_KEY_FILE = 64 << 10
COSIGN_LABELS = ("ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY")
_PEM = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_MAX_SCRYPT_WORK = 256 << 20  # 128 * N * r * p; cosign 2.5's own parameters take 64 MiB
_ECDSA = ec.ECDSA(hashes.SHA256())
_HOW_TO_MAKE = "make one with 'cosign generate-key-pair' or 'openssl ecparam -name prime256v1'"


class KeyFileError(UserError):
    """A key file cannot be used: missing, not a key, the wrong kind, or locked. Exit code 2."""


@dataclass(frozen=True)
class PublicKey:
    """An ECDSA P-256 public key and the file it came from."""

    key: ec.EllipticCurvePublicKey = field(repr=False)
    path: str

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` of the key's DER SubjectPublicKeyInfo: what names it in output."""
        der = self.key.public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def to_json(self) -> dict[str, str]:
        return {"key": self.path, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class PrivateKey:
    """An ECDSA P-256 private key and the file it came from (its repr shows no key)."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    path: str

    def public(self) -> PublicKey:
        return PublicKey(self.key.public_key(), self.path)


def sign_bytes(key: PrivateKey, data: bytes) -> bytes:
    """The ECDSA P-256/SHA-256 signature of ``data`` (DER, as cosign writes it)."""
    return key.key.sign(data, _ECDSA)


def verify_bytes(key: PublicKey, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` (DER) is ``key``'s signature of ``data``."""
    try:
        key.key.verify(signature, data, _ECDSA)
    except (InvalidSignature, ValueError):
        return False
    return True


def signer_of(keys: Iterable[PublicKey], data: bytes, signature: bytes) -> PublicKey | None:
    """The first of ``keys`` whose signature of ``data`` ``signature`` is, if any."""
    return next((k for k in keys if verify_bytes(k, data, signature)), None)


# --- reading key files ------------------------------------------------------------------------


def _read_key_file(path: Path) -> tuple[str, bytes, str]:
    """(label, DER body, the whole PEM block) of the first PEM block of ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot read key file {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KeyFileError(f"key file {path} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_KEY_FILE + 1)
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"key file {path} is larger than {MAX_KEY_FILE >> 10} KiB: not a key")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    match = _PEM.search(text)
    if match is None:
        raise KeyFileError(f"key file {path} is not a PEM key (no complete '-----BEGIN ...' "
                           f"block); {_HOW_TO_MAKE}")
    body = "".join(line for line in match.group(2).splitlines() if ":" not in line)
    try:
        der = base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"key file {path} is not a readable key (its PEM block is not "
                           "base64: damaged or truncated?)") from None
    return match.group(1), der, match.group(0)


def env_password() -> bytes | None:
    """The password of an encrypted key, from the environment (None if no variable is set)."""
    for name in PASSWORD_VARS:
        value = os.environb.get(name.encode())  # bytes, as cosign reads it: any password works
        if value is not None:
            return value
    return None


def _need_password(path: Path, given: bytes | None) -> bytes:
    if given is None:
        raise KeyFileError(f"key file {path} is encrypted: set {PASSWORD_VARS[0]} (or "
                           f"{PASSWORD_VARS[1]}) to its password")
    return given


def load_private_key(path: Path | str, password: bytes | None = None) -> PrivateKey:
    """The ECDSA P-256 private key in ``path`` (PEM or cosign's file; see the module), with
    ``password`` or else the environment's password if it is encrypted."""
    path = Path(path)
    label, der, block = _read_key_file(path)
    secret = password if password is not None else env_password()
    if label in COSIGN_LABELS:
        key: Any = _cosign_private(path, der, secret)
    elif label in ("PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"):
        encrypted = label.startswith("ENCRYPTED") or "Proc-Type: 4,ENCRYPTED" in block
        try:
            key = serialization.load_pem_private_key(
                block.encode(), _need_password(path, secret) if encrypted else None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            if encrypted:
                raise KeyFileError(f"cannot decrypt key file {path}: wrong password?") from None
            raise KeyFileError(f"key file {path} is not a readable private key "
                               "(damaged or truncated?)") from None
    elif label in ("PUBLIC KEY", "CERTIFICATE"):
        raise KeyFileError(f"key file {path} holds a public key or certificate; signing needs "
                           "the private key (e.g. cosign.key)")
    else:
        raise KeyFileError(f"key file {path} holds a {label}, not a private key; {_HOW_TO_MAKE}")
    _check_p256(path, key)
    return PrivateKey(key, str(path))


def _check_p256(path: Path, key: Any) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1):
            return
        kind = f"an ECDSA key on curve {key.curve.name}"
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        kind = "an RSA key"
    elif isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        kind = "an Ed25519 key"
    else:
        kind = f"a {type(key).__name__.removeprefix('_')}"
    raise KeyFileError(f"key file {path} holds {kind}; imagebuilder signs with ECDSA P-256 "
                       f"(prime256v1) keys as cosign does: {_HOW_TO_MAKE}")


def _integer(value: Any) -> int:
    """A JSON integer, as cosign's Go reader takes it (no float, no bool, no string)."""
    if type(value) is not int:
        raise ValueError(f"not an integer: {value!r}")
    return value


def _scrypt_sane(n: int, r: int, p: int) -> bool:
    """Whether scrypt parameters are ones OpenSSL derives with (N a power of two below
    2^(16r)) at a bounded cost (128 N r p bytes of work, as much memory with p=1)."""
    return (n > 1 and n & (n - 1) == 0 and r > 0 and 0 < p <= 16
            and 128 * n * r * p <= _MAX_SCRYPT_WORK and n < 1 << (16 * r))


def _cosign_private(path: Path, der: bytes, secret: bytes | None) -> Any:
    """The key inside cosign's encrypted key file (scrypt, then NaCl secretbox)."""
    from nacl.exceptions import CryptoError
    from nacl.secret import SecretBox
    damaged = KeyFileError(f"key file {path} is not a readable cosign key (damaged or "
                           "truncated?)")
    try:
        doc = json.loads(der)
        kdf, cipher = doc["kdf"], doc["cipher"]
        params = kdf["params"]
        n, r, p = (_integer(params[k]) for k in ("N", "r", "p"))
        salt = base64.b64decode(kdf["salt"], validate=True)
        nonce = base64.b64decode(cipher["nonce"], validate=True)
        ciphertext = base64.b64decode(doc["ciphertext"], validate=True)
        names = (kdf["name"], cipher["name"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise damaged from None
    if names != ("scrypt", "nacl/secretbox") or len(nonce) != SecretBox.NONCE_SIZE:
        raise KeyFileError(f"key file {path} is encrypted with {names[0]} and {names[1]}; "
                           "cosign keys use scrypt and nacl/secretbox")
    refused = KeyFileError(f"key file {path} asks for scrypt parameters N={n}, r={r}, p={p}, "
                           "beyond what a key file needs; refused")
    if not _scrypt_sane(n, r, p):
        raise refused
    try:
        box_key = Scrypt(salt=salt, length=SecretBox.KEY_SIZE, n=n, r=r, p=p).derive(
            _need_password(path, secret))
    except (MemoryError, OverflowError):  # what OpenSSL refuses beyond the rules above
        raise refused from None
    try:
        plain = SecretBox(box_key).decrypt(ciphertext, nonce)
    except CryptoError:
        raise KeyFileError(f"cannot decrypt key file {path}: wrong password? (from "
                           f"{' or '.join(PASSWORD_VARS)})") from None
    try:
        return serialization.load_der_private_key(plain, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise damaged from None


def load_public_key(path: Path | str, now: datetime | None = None) -> PublicKey:
    """The ECDSA P-256 public key in ``path``: PEM ``PUBLIC KEY`` or an X.509 certificate
    valid at ``now`` (default: the present)."""
    path = Path(path)
    label, der, _ = _read_key_file(path)
    key: Any
    try:
        if label == "PUBLIC KEY":
            key = serialization.load_der_public_key(der)
        elif label == "CERTIFICATE":
            key = _certificate_key(path, x509.load_der_x509_certificate(der), now)
        elif "PRIVATE KEY" in label:
            raise KeyFileError(f"key file {path} is a private key; verifying takes the public "
                               "key (e.g. cosign.pub): never hand the private key around")
        else:
            raise KeyFileError(f"key file {path} holds a {label}, not a public key (PEM "
                               "'PUBLIC KEY', as in cosign.pub, or a certificate)")
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(f"key file {path} is not a readable {label.lower()} (damaged or "
                           "truncated?)") from None
    _check_p256(path, key)
    return PublicKey(key, str(path))


def _certificate_key(path: Path, cert: x509.Certificate, now: datetime | None) -> Any:
    now = now or datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        raise KeyFileError(f"certificate {path} expired on "
                           f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; use a current one")
    if now < cert.not_valid_before_utc:
        raise KeyFileError(f"certificate {path} is not valid before "
                           f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    return cert.public_key()


def load_public_keys(paths: Iterable[Path | str]) -> list[PublicKey]:
    """:func:`load_public_key` of each path (one line for the first that cannot be used)."""
    keys = [load_public_key(p) for p in paths]
    if not keys:
        raise KeyFileError("no public key given: pass --key PUB")
    return keys
