"""Signed-only environments: ``[env.NAME] signed_by`` (imagebuilder/config/checks.py) and the
gate of imagebuilder/signing/policy.py that promote, publish, flash, serve and run pass through
before any work.

Keys are real ECDSA P-256 keys made with ``cryptography``; signatures are made by
``imagebuilder sign`` itself, so what the gate accepts is what the signing command writes.
"""

from __future__ import annotations

import datetime as dt
import socket
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from imagebuilder.cli import main
from imagebuilder.config import parse as config
from imagebuilder.errors import ConfigError, UserError
from imagebuilder.keyfiles import load_private_key
from imagebuilder.signing import policy, signatures
from imagebuilder.signing.cosign import SIGNATURE_ARTIFACT_TYPE, SIMPLESIGNING_MEDIA_TYPE
from imagebuilder.store import attachments
from imagebuilder.store.layout import INITRD_LAYER_MEDIA_TYPE, KERNEL_MEDIA_TYPE, Store
from imagebuilder.store.layout import TITLE_ANNOTATION as TITLE
from support.cli import Cli
from support.keys import pem_key_pair

SHOWN = "app/imagebuilder.toml"


def write_key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key pair as PEM files ``name.key`` (PKCS#8, unencrypted) and ``name.pub``."""
    private, public, _ = pem_key_pair(directory, name, ".key")
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
    not_pem = ("key file {path} is not a PEM key (no complete '-----BEGIN ...' block); make one"
               " with 'cosign generate-key-pair' or 'openssl ecparam -name prime256v1'")
    return {
        "missing.pub": ("nothing", "{path}: file not found"),
        "dir.pub": ("a directory", "{path}: a directory, not a public key file"),
        "release.key": ("the private key", "key file {path} is a private key; verifying takes "
                        "the public key (e.g. cosign.pub): never hand the private key around"),
        "rsa.pub": ("an RSA key", "key file {path} holds an RSA key; imagebuilder signs with "
                    "ECDSA P-256 (prime256v1) keys as cosign does: make one with 'cosign "
                    "generate-key-pair' or 'openssl ecparam -name prime256v1'"),
        "garbage.pub": ("garbage", "key file {path} is not a readable key (its PEM block is not "
                        "base64: damaged or truncated?)"),
        "truncated.pub": ("half a key", not_pem),
        "empty.pub": ("nothing", not_pem),
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


# --- the gate: each command refuses an unsigned image before any work ------------------------


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(app: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IMAGEBUILDER_HOME", str(tmp_path / "home"))
    write_config(app, '["keys/release.pub"]')
    return tmp_path / "home"


@pytest.fixture
def invoke(home: Path, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*argv: str) -> Result:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def store_image(home: Path, version: str = "1.0.0") -> str:
    """A fake kernel and layer in the real store of ``home`` (nothing here boots)."""
    store = Store(home / "store")
    kernel = store.add_blob_bytes(b"not a kernel", KERNEL_MEDIA_TYPE, {TITLE: "vmlinuz"})
    layer = store.add_blob_bytes(f"app {version}".encode(), INITRD_LAYER_MEDIA_TYPE,
                                 {TITLE: "app"})
    config = {"name": "hello", "version": version, "cmdline": "console=ttyS0", "memory": 512,
              "layers": ["app"], "hardware": ["virtual", "metal"],
              "app": {"jar": "app.jar", "port": 8080, "healthcheck": "/"}}
    return store.put_image(f"hello:{version}", config, [kernel, layer])


def sign(home: Path, key: Path, ref: str = "hello:1.0.0") -> None:
    signatures.sign_local(Store(home / "store"), ref, load_private_key(key))


def refusal(digest: str, problem: str, env: str = "prod") -> str:
    return (f"ERROR: image hello:1.0.0 ({digest[:19]}) may not go to environment '{env}', "
            f"which takes only images signed by app/keys/release.pub: {problem}\n")


NO_SIGNATURE = "it has no signatures; sign it with 'imagebuilder sign REF --key KEY'"


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    """Each gated command with ``--env prod``, as far as it would go without the gate."""
    return {
        "promote": ["promote", "hello:1.0.0", "--env", "prod", "--force"],
        "run": ["run", "hello:1.0.0", "--env", "prod", "--accel", "tcg"],
        "flash": ["flash", "hello:1.0.0", str(tmp_path / "disk.img"), "--env", "prod"],
        "publish": ["publish", "hello:1.0.0", "--target", "aws", "--region", "eu-west-1",
                    "--env", "prod"],
    }


@pytest.mark.parametrize("command", ["promote", "run", "flash", "publish"])
def test_each_command_refuses_an_unsigned_image_for_a_signed_only_environment(
        invoke: Callable[..., Result], home: Path, app: Path, tmp_path: Path,
        command: str) -> None:
    digest = store_image(home)
    index = (home / "store" / "index.json").read_bytes()
    result = invoke(*_commands(tmp_path)[command], "--config", str(app))
    assert (result.code, result.err) == (2, refusal(digest, NO_SIGNATURE))
    assert (home / "store" / "index.json").read_bytes() == index  # no tag moved
    assert not (tmp_path / "disk.img").exists()  # nothing flashed
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())  # no VM


def test_serve_refuses_an_unsigned_image_before_it_listens(home: Path, app: Path) -> None:
    """In a child process: without the gate, serve would serve until interrupted."""
    digest = store_image(home)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cli = Cli(home)
    result = cli("serve", "hello:1.0.0", "--listen", f"127.0.0.1:{port}", "--env", "prod",
                 "--config", str(app), cwd=app.parent, check=False, timeout=60)
    assert (result.returncode, result.stderr) == (2, refusal(digest, NO_SIGNATURE))


def test_a_signature_by_another_key_is_refused_and_one_by_the_key_admitted(
        invoke: Callable[..., Result], home: Path, app: Path) -> None:
    digest = store_image(home)
    other, _ = write_key_pair(app / "elsewhere", "other")
    sign(home, other)
    result = invoke("promote", "hello:1.0.0", "--env", "prod", "--force", "--config", str(app))
    assert (result.code, result.err) == (2, refusal(digest, (
        "none of its 1 signature verifies with key app/keys/release.pub (signed with another "
        "key, or the payload or signature was changed since)")))
    sign(home, app / "keys" / "release.key")
    result = invoke("promote", "hello:1.0.0", "--env", "prod", "--force", "--config", str(app))
    assert result.code == 0, result.err
    assert Store(home / "store").tags("hello") == {"prod": digest}


def test_a_signature_of_another_image_does_not_admit_this_one(
        invoke: Callable[..., Result], home: Path, app: Path) -> None:
    """The signature of 1.0.0 copied onto 2.0.0 (same key, same name) is for 1.0.0 only."""
    store_image(home)
    second = store_image(home, "2.0.0")
    sign(home, app / "keys" / "release.key")
    store = Store(home / "store")
    first = store.resolve("hello:1.0.0").digest
    for desc in attachments.referrers(store, first, SIGNATURE_ARTIFACT_TYPE):
        attachments.attach(store, second, SIGNATURE_ARTIFACT_TYPE,
                           attachments.payload(store, desc), SIMPLESIGNING_MEDIA_TYPE,
                           desc.annotations, keep=True)
    result = invoke("promote", "hello:2.0.0", "--env", "prod", "--force", "--config", str(app))
    assert result.code == 2
    assert result.err.startswith(f"ERROR: image hello:2.0.0 ({second[:19]}) may not go to "
                                 "environment 'prod'")
    assert "is for another image" in result.err and result.err.count("\n") == 1


def test_an_environment_without_signed_by_takes_an_unsigned_image_as_before(
        invoke: Callable[..., Result], home: Path, app: Path) -> None:
    digest = store_image(home)
    result = invoke("promote", "hello:1.0.0", "--env", "test", "--config", str(app))
    assert result.code == 0, result.err
    assert Store(home / "store").tags("hello") == {"test": digest}


def test_a_raw_disk_file_carries_no_signature(invoke: Callable[..., Result], home: Path,
                                              app: Path, tmp_path: Path) -> None:
    raw = tmp_path / "hello.raw"
    raw.write_bytes(b"\0" * 4096)
    result = invoke("flash", str(raw), str(tmp_path / "disk.img"), "--env", "prod",
                    "--config", str(app))
    assert (result.code, result.err) == (2, (
        f"ERROR: {raw} may not go to environment 'prod': it is a file, which carries no "
        "signature, and prod takes only images signed by app/keys/release.pub; use the signed "
        "image of the store (NAME:VERSION) instead\n"))
    assert not (tmp_path / "disk.img").exists()


# --- the gate and the command act on the same image (review D, F1 and F7) --------------------


class Stopped(UserError):
    """Raised where a command would start its work: the image it got is recorded first."""


def _retag_after_the_gate(monkeypatch: pytest.MonkeyPatch, home: Path, keep: bool = True) -> str:
    """Once the gate has verified the signed hello:1.0.0, hello:1.0.0 names another, unsigned
    manifest (a rebuild, or anyone who writes the store); ``keep``: hello:kept still names the
    signed one. The signed digest."""
    store = Store(home / "store")
    if keep:
        image = store.resolve("hello:1.0.0")
        store.put_image("hello:kept", image.config, image.layers)
    kernel = store.add_blob_bytes(b"unsigned kernel", KERNEL_MEDIA_TYPE, {TITLE: "vmlinuz"})
    unsigned = store.add_blob_bytes(b"unsigned", INITRD_LAYER_MEDIA_TYPE, {TITLE: "app"})
    verified = policy.verified
    moved: list[str] = []

    def racing(source: object, ref: object, keys: object) -> object:
        found = verified(source, ref, keys)  # type: ignore[arg-type]
        config = {**store.resolve("hello:1.0.0").config, "layers": ["app"]}
        moved.append(store.put_image("hello:1.0.0", {**config, "racing": True},
                                     [kernel, unsigned]))
        return found

    monkeypatch.setattr(policy, "verified", racing)
    assert not keep or store.resolve("hello:kept").digest == store.resolve("hello:1.0.0").digest
    return store.resolve("hello:1.0.0").digest  # still the signed one


def test_promote_moves_the_tag_to_the_digest_the_gate_verified(
        invoke: Callable[..., Result], home: Path, app: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store_image(home)
    sign(home, app / "keys" / "release.key")
    signed = _retag_after_the_gate(monkeypatch, home)
    result = invoke("promote", "hello:1.0.0", "--env", "prod", "--force", "--config", str(app))
    assert result.code == 0, result.err
    store = Store(home / "store")
    assert store.resolve("hello:1.0.0").digest != signed  # the race happened
    assert store.tags("hello") == {"prod": signed}


def _stop_where_work_starts(monkeypatch: pytest.MonkeyPatch, command: str) -> list[str]:
    """Make ``command`` record the digest of the image it starts working on, then stop."""
    from imagebuilder.formats.export import BootSource
    from imagebuilder.targets.aws import publish as aws
    from imagebuilder.targets.metal.netboot import NetbootSource
    from imagebuilder.targets.qemu import run as qemu
    got: list[str] = []

    def record(image: Any) -> NoReturn:
        got.append(image.digest)
        raise Stopped("stopped where the work starts")

    patches: dict[str, tuple[object, str, object]] = {
        "run": (qemu, "run_foreground", lambda spec, *a, **k: record(spec.image)),
        "publish": (aws, "publish", lambda request, *a, **k: record(request.image)),
        "flash": (BootSource, "of_image", staticmethod(lambda store, image: record(image))),
        "serve": (NetbootSource, "of_image", staticmethod(lambda store, image: record(image))),
    }
    owner, name, fake = patches[command]
    monkeypatch.setattr(owner, name, fake)
    return got


@pytest.mark.parametrize("command", ["run", "publish", "flash", "serve"])
def test_each_command_acts_on_the_digest_the_gate_verified(
        invoke: Callable[..., Result], home: Path, app: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    store_image(home)
    sign(home, app / "keys" / "release.key")
    signed = _retag_after_the_gate(monkeypatch, home)
    got = _stop_where_work_starts(monkeypatch, command)
    argv = {**_commands(tmp_path),
            "serve": ["serve", "hello:1.0.0", "--listen", "127.0.0.1:1", "--env", "prod"]}
    result = invoke(*argv[command], "--config", str(app))
    assert (result.code, result.err) == (2, "ERROR: stopped where the work starts\n")
    assert Store(home / "store").resolve("hello:1.0.0").digest != signed  # the race happened
    assert got == [signed]


@pytest.mark.parametrize("command", ["promote", "run", "publish", "flash", "serve"])
def test_an_image_gone_after_the_gate_is_refused_not_replaced(
        invoke: Callable[..., Result], home: Path, app: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """The signed image, rebuilt once the gate checked it, is named by nothing any more: the
    command refuses rather than take what hello:1.0.0 names now."""
    store_image(home)
    sign(home, app / "keys" / "release.key")
    signed = _retag_after_the_gate(monkeypatch, home, keep=False)
    got = _stop_where_work_starts(monkeypatch, command) if command != "promote" else []
    index = (home / "store" / "index.json").read_bytes()
    argv = {**_commands(tmp_path),
            "serve": ["serve", "hello:1.0.0", "--listen", "127.0.0.1:1", "--env", "prod"]}
    result = invoke(*argv[command], "--config", str(app))
    assert (result.code, result.err) == (2, (
        "ERROR: hello:1.0.0 changed while its signature was checked: the store no longer names "
        f"the image verified ({signed[:19]}); run the command again\n"))
    assert got == [] and "prod" not in Store(home / "store").tags("hello")
    assert (home / "store" / "index.json").read_bytes() != index  # the race happened


def test_run_boots_the_digest_the_gate_verified_not_the_one_it_resolved_before(
        invoke: Callable[..., Result], home: Path, app: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the other way: hello:1.0.0 names an unsigned image when the command starts and
    the signed one when the gate looks (run resolved REF before its gate)."""
    store_image(home)
    sign(home, app / "keys" / "release.key")
    store = Store(home / "store")
    image = store.resolve("hello:1.0.0")
    signed = store.put_image("hello:kept", image.config, image.layers)
    kernel = store.add_blob_bytes(b"unsigned kernel", KERNEL_MEDIA_TYPE, {TITLE: "vmlinuz"})
    unsigned = store.add_blob_bytes(b"unsigned", INITRD_LAYER_MEDIA_TYPE, {TITLE: "app"})
    store.put_image("hello:1.0.0", {**image.config, "racing": True}, [kernel, unsigned])
    verified = policy.verified

    def racing(source: object, ref: object, keys: object) -> object:
        store.put_image("hello:1.0.0", image.config, image.layers)  # the signed one again
        return verified(source, ref, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(policy, "verified", racing)
    got = _stop_where_work_starts(monkeypatch, "run")
    result = invoke(*_commands(tmp_path)["run"], "--config", str(app))
    assert (result.code, result.err) == (2, "ERROR: stopped where the work starts\n")
    assert got == [signed]


def _path_named_like_the_image(tmp_path: Path, command: str) -> Path:
    """What serve (a kernel-initrd directory) or flash (a raw disk file) takes before the
    store's image: unsigned, named hello:1.0.0 in the current directory."""
    path = tmp_path / "hello:1.0.0"
    if command == "serve":
        path.mkdir()
        (path / "vmlinuz").write_bytes(b"UNSIGNED KERNEL")
        (path / "initrd.img").write_bytes(b"UNSIGNED INITRD")
    else:
        path.write_bytes(b"\0" * 4096)
    return path


@pytest.mark.parametrize("command, what", [("serve", "a directory"), ("flash", "a file")])
def test_a_path_named_like_a_signed_image_is_refused_for_serve_and_flash(
        invoke: Callable[..., Result], home: Path, app: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, command: str, what: str) -> None:
    """Review D, F7: serve and flash take an existing path named REF before the store's image,
    so the gate judges that path, which carries no signature, not the signed image."""
    store_image(home)
    sign(home, app / "keys" / "release.key")
    _path_named_like_the_image(tmp_path, command)
    from imagebuilder.targets.metal import netboot
    monkeypatch.setattr(netboot.NetbootServer, "__init__", lambda *a, **k: _raise(
        Stopped("serving the directory")))
    target = tmp_path / "disk.img"
    argv = {"serve": ["serve", "hello:1.0.0", "--listen", "127.0.0.1:1", "--env", "prod"],
            "flash": ["flash", "hello:1.0.0", str(target), "--env", "prod"]}[command]
    result = invoke(*argv, "--config", str(app))
    assert (result.code, result.err) == (2, (
        f"ERROR: hello:1.0.0 may not go to environment 'prod': it is {what}, which carries no "
        "signature, and prod takes only images signed by app/keys/release.pub; use the signed "
        f"image of the store (NAME:VERSION) instead (the store has an image hello:1.0.0 too, "
        f"but {what} of that name comes first: move it away, or run from another directory)\n"))
    assert not target.exists()


def test_without_signed_by_serve_still_takes_a_directory_first(
        invoke: Callable[..., Result], home: Path, app: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment that asks for no signature: serve's directory first, as before."""
    store_image(home)
    _path_named_like_the_image(tmp_path, "serve")
    from imagebuilder.targets.metal import netboot
    served: list[str] = []

    def server(self: object, source: Any, *a: object, **k: object) -> NoReturn:
        served.append(source.title)
        raise Stopped("serving")

    monkeypatch.setattr(netboot.NetbootServer, "__init__", server)
    result = invoke("serve", "hello:1.0.0", "--listen", "127.0.0.1:1", "--env", "test",
                    "--config", str(app))
    assert (result.code, result.err) == (2, "ERROR: serving\n")
    assert served and "hello:1.0.0" in served[0]


def _raise(error: Exception) -> NoReturn:
    raise error
