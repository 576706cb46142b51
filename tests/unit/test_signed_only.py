"""Signed-only environments: ``[env.NAME] signed_by`` (imagebuilder/config/checks.py) and the
gate of imagebuilder/signing/policy.py that promote, publish, flash, serve and run pass through
before any work.

Keys are real ECDSA P-256 keys made with ``cryptography``; signatures are made by
``imagebuilder sign`` itself, so what the gate accepts is what the signing command writes.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from imagebuilder.config import parse as config
from imagebuilder.errors import ConfigError

SHOWN = "app/imagebuilder.toml"


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as PEM files ``name.key`` (PKCS#8, unencrypted) and ``name.pub``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private = directory / f"{name}.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public = directory / f"{name}.pub"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "app"
    directory.mkdir()
    (directory / "hello.jar").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    write_key_pair(directory / "keys", "release")
    return directory


def write_config(directory: Path, signed_by: str, env: str = "prod") -> Path:
    path = directory / "imagebuilder.toml"
    path.write_text(textwrap.dedent(f"""\
        [image]
        name = "hello"
        version = "1.0.0"
        [app]
        path = "hello.jar"
        [env.test]
        vars = {{ A = "1" }}
        [env.{env}]
        signed_by = {signed_by}
        """))
    return path


# --- the key ---------------------------------------------------------------------------------


def test_signed_by_takes_key_files_relative_to_the_config(app: Path) -> None:
    cfg = config.load(write_config(app, '["keys/release.pub", "./keys/release.pub"]'))
    assert cfg.env("prod").signed_by == ((app / "keys" / "release.pub").absolute(),)
    assert cfg.env("test").signed_by == ()  # an environment that does not ask takes any image


def _certificate(directory: Path, days: int) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=2))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    path = directory / "release.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_certificate_of_a_p256_key_is_a_key_too(app: Path) -> None:
    _certificate(app / "keys", 30)
    cfg = config.load(write_config(app, '["keys/release.crt"]'))
    assert cfg.env("prod").signed_by == ((app / "keys" / "release.crt").absolute(),)


def _bad_keys(keys: Path) -> dict[str, tuple[str, str]]:
    """file name -> (what it holds, the error after the key's name)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (keys / "rsa.pub").write_bytes(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (keys / "garbage.pub").write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot base64 at all\n"
                                       b"-----END PUBLIC KEY-----\n")
    pub = (keys / "release.pub").read_bytes()
    (keys / "truncated.pub").write_bytes(pub[: len(pub) // 2])
    (keys / "empty.pub").write_bytes(b"")
    (keys / "dir.pub").mkdir()
    return {
        "missing.pub": ("nothing", "{path}: file not found"),
        "dir.pub": ("a directory", "{path}: a directory, not a public key file"),
        "release.key": ("the private key", "{path} holds a private key: name the public key "
                        "here (cosign.pub); the private key stays with whoever signs"),
        "rsa.pub": ("an RSA key", "{path} is not an ECDSA P-256 key, the kind imagebuilder and "
                    "cosign sign with"),
        "garbage.pub": ("garbage", "{path} is not a PEM public key ('-----BEGIN PUBLIC "
                        "KEY-----', as in cosign.pub) nor a certificate"),
        "truncated.pub": ("half a key", "{path} is not a PEM public key ('-----BEGIN PUBLIC "
                          "KEY-----', as in cosign.pub) nor a certificate"),
        "empty.pub": ("nothing", "{path} is not a PEM public key ('-----BEGIN PUBLIC "
                      "KEY-----', as in cosign.pub) nor a certificate"),
    }


def test_a_missing_or_bad_key_file_is_a_config_error_naming_the_key(app: Path) -> None:
    secret = (app / "keys" / "release.key").read_text().splitlines()[1]
    for name, (_what, message) in _bad_keys(app / "keys").items():
        path = write_config(app, f'["keys/release.pub", "keys/{name}"]')
        with pytest.raises(ConfigError) as e:
            config.load(path)
        expected = message.format(path=app / "keys" / name)
        assert str(e.value) == f"{SHOWN}: env.prod.signed_by[1]: {expected}", name
        assert secret not in str(e.value)


def test_a_key_is_checked_even_where_the_app_is_not(app: Path) -> None:
    """``run --env`` reads the config without the jar: the keys are still checked."""
    (app / "hello.jar").unlink()
    with pytest.raises(ConfigError, match="signed_by\\[0\\]: .*file not found"):
        config.load(write_config(app, '["keys/nope.pub"]'), check_app=False)


@pytest.mark.parametrize("value, message", [
    ("[]", 'expected public key files like ["keys/release.pub"]; leave signed_by out if the '
           "environment takes unsigned images"),
    ('"keys/release.pub"', 'expected a list of strings, got "keys/release.pub"'),
    ("[1]", None),
])
def test_signed_by_is_a_list_of_at_least_one_path(app: Path, value: str,
                                                  message: str | None) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(write_config(app, value))
    if message:
        assert str(e.value) == f"{SHOWN}: env.prod.signed_by: {message}"
    else:
        assert str(e.value) == f"{SHOWN}: env.prod.signed_by[0]: expected a string, got 1"
