"""Signed-only environments: the gate before an image enters or runs where it must be signed.

``[env.prod] signed_by = ["keys/release.pub"]`` says that only an image signed by one of those
keys (``imagebuilder sign``) may be promoted into ``prod``, or be published, flashed, served or
run with ``--env prod``. Each of those commands calls :func:`require` first, before it boots,
uploads or moves anything: it asks :func:`.signatures.verified` whether one of the keys signed
exactly the image's manifest digest, and refuses with one line (exit 2) naming the image, the
environment and what is missing when none did. An environment without ``signed_by`` takes any
image, as before.

The gate and the command must act on the same image. So :func:`require` returns the digest it
verified, and the command then takes the image by that digest, never by its name again: a tag
moved in between (a racing push to the registry, a rebuild in the store) cannot slip another
manifest past the gate. And REF is read as the command reads it: ``flash`` and ``serve`` take an
existing file or directory named REF before the store's image, so for them such a path is what
the gate judges, and refuses (it carries no signature), even when the store has an image of
that name too.

The keys were checked when the config was read; they are loaded here by
:func:`.keys.load_public_keys`, the one reader of public keys, which also refuses a certificate
that has expired since.
"""

from __future__ import annotations

from pathlib import Path

from ..config.parse import Config
from ..config.settings import shown
from ..errors import ImageBuilderError, NotFoundError
from ..keyfiles import load_public_keys
from ..registry.client import Client
from ..registry.refs import RegistryRef
from ..store.layout import Store
from .cosign import SignatureError, Verification
from .signatures import verified


class UnsignedError(SignatureError):
    """An image is not signed by a key its environment requires. Exit code 2."""


def require(store: Store, ref: str, cfg: Config, env_name: str | None, *,
            client: Client | None = None, target: RegistryRef | None = None,
            paths: bool = False) -> str | None:
    """Refuse image ``ref`` for environment ``env_name`` of ``cfg`` unless one of the
    environment's ``signed_by`` keys signed it: in the store, or (an image the store lacks, with
    ``client``) in ``target``'s repository of that registry. ``paths``: the command takes an
    existing file or directory named ``ref`` first (flash, serve), so such a path is refused.
    Returns the manifest digest verified, which the command must act on; None when there is
    nothing to check (no environment, or one that asks for no signature)."""
    if env_name is None:
        return None
    keys_paths = cfg.env(env_name).signed_by
    if not keys_paths:
        return None
    if paths:
        _refuse_path(store, ref, env_name, keys_paths)
    keys = load_public_keys(shown(p) for p in keys_paths)  # as messages show them
    try:
        found = verified(store, ref, keys)
    except NotFoundError:
        if client is None or target is None:
            _refuse_path(store, ref, env_name, keys_paths)
            raise
        remote = (RegistryRef(target.host, target.repository, digest=ref)
                  if ref.startswith("sha256:") else target.with_tag(ref.rpartition(":")[2]))
        found = verified(client, remote, keys)
    if not found:
        raise UnsignedError(_message(found, env_name, keys_paths))
    return found.digest


def _refuse_path(store: Store, ref: str, env_name: str, keys: tuple[Path, ...]) -> None:
    """A file or directory given as REF (``flash``'s raw disk, ``serve``'s kernel-initrd
    export) carries no signature: refuse it for a signed-only environment."""
    path = Path(ref)
    if not path.exists():
        return
    what = "a directory" if path.is_dir() else "a file"
    message = (f"{ref} may not go to environment '{env_name}': it is {what}, which carries no "
               f"signature, and {env_name} takes only images signed by {_keys(keys)}; use the "
               "signed image of the store (NAME:VERSION) instead")
    if _in_store(store, ref):
        message += (f" (the store has an image {ref} too, but {what} of that name comes first: "
                    "move it away, or run from another directory)")
    raise UnsignedError(message)


def _in_store(store: Store, ref: str) -> bool:
    try:
        store.resolve(ref)
    except ImageBuilderError:
        return False
    return True


def _keys(keys: tuple[Path, ...]) -> str:
    return (shown(keys[0]) if len(keys) == 1
            else "one of " + ", ".join(shown(k) for k in keys))


def _message(found: Verification, env_name: str, keys: tuple[Path, ...]) -> str:
    """One line: the image, the environment and what is missing."""
    return (f"image {found.image} ({found.digest[:19]}) may not go to environment "
            f"'{env_name}', which takes only images signed by {_keys(keys)}: {found.problem}")
