"""Every command of the command line, a module per noun: build and export (``build``), the
stored images (``image``), VMs (``vm``), the store's health (``store``), registries
(``registry``), AWS (``aws``), bare metal (``baremetal``) and ``hash``.

Each module exposes ``COMMANDS``, its click commands; :mod:`imagebuilder.cli` imports a module
when one of its commands runs. Modules here import only click at load time, the library when a
command runs. Shared options are in :mod:`.options`, what goes to stderr in :mod:`.render`; the
helpers below are shared by every module here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config.parse import Config
    from ..store.home import Home
    from ..store.layout import Store
    from ..store.oci import Image


def get_home() -> Home:
    """The imagebuilder home of this command ($IMAGEBUILDER_HOME or the default)."""
    from ..store.home import Home
    return Home()


def env_config(config_path: str | None) -> Config:
    """The imagebuilder.toml holding the environments: ``--config PATH`` (a file or the
    directory holding one) or the current directory; the app itself need not exist."""
    from pathlib import Path

    from ..config import parse as config_mod
    from ..errors import ConfigError
    path = Path(config_path or ".")
    if path.is_dir() and not (path / config_mod.CONFIG_NAME).exists():
        raise ConfigError(f"no {config_mod.CONFIG_NAME} in {path.absolute()} to read the "
                          "environments from: run from the app's directory or pass --config PATH")
    return config_mod.load(path, check_app=False)


def env_vars(env_name: str | None, config_path: str | None) -> dict[str, str]:
    """What environment ``env_name`` hands the guest ({} without one): its variables and its
    static network lines."""
    if env_name is None:
        return {}
    return env_config(config_path).env(env_name).boot_vars()


def require_signed(ref: str, env_name: str | None, config_path: str | None,
                   **registry: Any) -> str | None:
    """Refuse image REF for environment ENV (exit 2, before any work) unless one of ENV's
    ``signed_by`` keys signed it: :func:`imagebuilder.signing.policy.require`. Returns the
    manifest digest it verified (None if ENV asks for no signature): the command must act on
    that digest, never on REF resolved again (``gated``)."""
    if env_name is None:
        return None
    from ..signing import policy
    return policy.require(get_home().store, ref, env_config(config_path), env_name, **registry)


def gated(ref: str, digest: str | None) -> str:
    """What a command acts on after the gate: the digest it verified, else REF as given."""
    return digest if digest is not None else ref


def gated_image(store: Store, ref: str, digest: str | None) -> Image:
    """The store's image of the digest the gate verified (else REF's): one that REF no longer
    names (rebuilt meanwhile, nothing else naming it) is refused, never replaced by REF's."""
    from ..errors import NotFoundError
    try:
        return store.resolve(gated(ref, digest))
    except NotFoundError:
        if digest is None:
            raise
        raise NotFoundError(f"{ref} changed while its signature was checked: the store no "
                            f"longer names the image verified ({digest[:19]}); run the command "
                            "again") from None


def human_size(size: int) -> str:
    """``31.6 MiB``: a byte count for people."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{size} B"
