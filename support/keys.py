"""Signing keys for tests: an ECDSA P-256 key pair written as PEM files, as openssl writes them."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def pem_key_pair(directory: Path, name: str, private_suffix: str = ".pem"
                 ) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    """A new P-256 key as ``name`` + ``private_suffix`` (PKCS#8, unencrypted) and ``name.pub``
    in ``directory``; (private path, public path, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}{private_suffix}"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, key
