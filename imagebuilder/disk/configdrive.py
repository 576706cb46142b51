"""The config drive: an environment's variables, handed to the guest at boot.

Images carry no environment values (so one image digest serves test and prod); ``run`` and
``flash`` attach this small ISO 9660 volume instead. Its volume identifier is ``IMAGEBUILDER``
(:data:`VOLUME_ID`), so the guest's init finds it by label, mounts it read-only and reads
``/imagebuilder/env``: one ``KEY=VALUE`` line per variable, sorted by key, always including
``IMAGEBUILDER_ENV=<environment name>`` and, for an environment with static network settings,
one ``IMAGEBUILDER_NET_<n>`` line per network card (see :mod:`imagebuilder.config.network`). Values
are written verbatim (no quoting or escaping: spaces, quotes, ``$`` and ``=`` survive): the
init never evaluates them, it hands each line as one ``NAME=VALUE`` string to ``env -i``,
which splits it at its first ``=`` only. One line per variable is also why a value can never
contain a newline (nor a NUL): ``config`` rejects such values, and sizes the guest cannot carry
(:mod:`imagebuilder.config.envlimits`), and :func:`write_config_drive` refuses them.

The volume has Rock Ridge 1.09 and Joliet directory trees as well as the plain ISO 9660 one, so
the names keep their lower case however the guest mounts it.

The bytes are deterministic: the same environment gives the same ISO, on any machine, in any
time zone. pycdlib stamps every directory record, every Rock Ridge TF entry and the volume
descriptors with the current local time and offers no option to fix them, so we overwrite the
dates in its object tree before writing and patch the volume descriptors' dates (which pycdlib
computes while serialising) in the written bytes, at their fixed ECMA-119 offsets.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib import dates

from ..config import network
from ..config.envlimits import env_problem
from ..config.parse import ENV_NAME_RE, check_env_var
from ..errors import ConfigError
from ..fsutil import write_private

#: The volume label the guest looks for.
VOLUME_ID = "IMAGEBUILDER"
#: Where the variables live on the mounted volume (Rock Ridge / Joliet name).
ENV_PATH = "/imagebuilder/env"
#: The variable naming the environment; set by imagebuilder, never by the user.
ENV_VAR = "IMAGEBUILDER_ENV"

# Every timestamp on the volume: 1980-01-01 00:00:00 UTC.
_DR_DATE = bytes([80, 1, 1, 0, 0, 0, 0])  # ECMA-119 9.1.5: years since 1900 ... GMT offset
_VD_DATE = b"1980010100000000\x00"  # ECMA-119 8.4.26.1: YYYYMMDDhhmmsscc + GMT offset
_SECTOR = 2048
_FIRST_VD_SECTOR = 16
_VD_DATE_OFFSETS = (813, 830, 864)  # creation, modification, effective (expiration stays unset)
_VD_TERMINATOR = 255


def env_file(env_name: str, vars: Mapping[str, str]) -> bytes:
    """The contents of ``/imagebuilder/env``: ``KEY=VALUE`` lines sorted by key, UTF-8."""
    if not ENV_NAME_RE.fullmatch(env_name):
        raise ConfigError(
            f"environment name {env_name!r}: expected lowercase letters, digits and '-',"
            " starting with a letter"
        )
    for key, value in vars.items():
        # The static network lines (Environment.boot_vars) use the reserved prefix.
        problem = (network.check_env_value(value) if network.is_network_var(key)
                   else check_env_var(key, value))
        if problem:
            raise ConfigError(f"env.{env_name}.vars.{key}: {problem}")
    problem = env_problem(env_name, vars)
    if problem:
        raise ConfigError(f"env.{env_name}.vars: {problem}")
    lines = {**vars, ENV_VAR: env_name}
    return "".join(f"{k}={lines[k]}\n" for k in sorted(lines)).encode()


def write_config_drive(dest: Path, env_name: str, vars: Mapping[str, str]) -> None:
    """Write the config drive for environment ``env_name`` with ``vars`` to ``dest``.

    The file appears complete or not at all (temporary name, fsync, rename). It is created with
    mode 0600: environment variables often hold secrets.
    """
    write_private(dest, build_iso(env_file(env_name, vars)))


def build_iso(env_contents: bytes) -> bytes:
    """The config drive's bytes, holding ``env_contents`` as ``/imagebuilder/env``."""
    iso = pycdlib.PyCdlib()
    iso.new(
        interchange_level=3,
        vol_ident=VOLUME_ID,
        app_ident_str="IMAGEBUILDER CONFIG DRIVE",
        joliet=3,
        rock_ridge="1.09",
    )
    try:
        iso.add_directory("/IMAGEBUILDER", rr_name="imagebuilder", joliet_path="/imagebuilder")
        iso.add_fp(
            io.BytesIO(env_contents),
            len(env_contents),
            "/IMAGEBUILDER/ENV.;1",
            rr_name="env",
            joliet_path=ENV_PATH,
            file_mode=0o100444,
        )
        fix_record_dates(iso)
        out = io.BytesIO()
        iso.write_fp(out)
    finally:
        iso.close()
    return fix_descriptor_dates(out.getvalue())


def _fixed_dr_date() -> Any:
    date = dates.DirectoryRecordDate()
    date.parse(_DR_DATE)
    return date


def _fixed_vd_date() -> Any:
    date = dates.VolumeDescriptorDate()
    date.parse(_VD_DATE)
    return date


_TF_FIELDS = (
    "creation_time", "access_time", "modification_time", "attribute_change_time",
    "backup_time", "expiration_time", "effective_time",
)


def _records(iso: Any) -> Iterator[Any]:
    """Every directory record of every tree (ISO 9660 and Joliet), dot entries included."""
    roots = [iso.pvd.root_dir_record]
    if iso.joliet_vd is not None:
        roots.append(iso.joliet_vd.root_dir_record)
    stack = list(roots)
    while stack:
        record = stack.pop()
        yield record
        for child in record.children:
            if child.is_dot() or child.is_dotdot():
                yield child
            else:
                stack.append(child)


def fix_record_dates(iso: Any) -> None:
    for record in _records(iso):
        record.date = _fixed_dr_date()
        rr = record.rock_ridge
        if rr is None:
            continue
        for entries in (rr.dr_entries, rr.ce_entries):
            tf = None if entries is None else entries.tf_record
            if tf is None:
                continue
            for name in _TF_FIELDS:
                old = getattr(tf, name, None)
                if old is None:
                    continue
                if isinstance(old, dates.VolumeDescriptorDate):
                    setattr(tf, name, _fixed_vd_date())
                else:
                    setattr(tf, name, _fixed_dr_date())


def fix_descriptor_dates(image: bytes) -> bytes:
    """Overwrite the dates of the primary and supplementary volume descriptors."""
    buf = bytearray(image)
    sector = _FIRST_VD_SECTOR
    while (sector + 1) * _SECTOR <= len(buf):
        start = sector * _SECTOR
        vd_type = buf[start]
        if buf[start + 1:start + 6] != b"CD001":
            raise AssertionError(f"no volume descriptor in sector {sector}")
        if vd_type == _VD_TERMINATOR:
            return bytes(buf)
        if vd_type in (1, 2):  # primary, supplementary (Joliet)
            for offset in _VD_DATE_OFFSETS:
                buf[start + offset:start + offset + len(_VD_DATE)] = _VD_DATE
        sector += 1
    raise AssertionError("no volume descriptor set terminator")
