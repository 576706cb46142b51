"""How much environment a guest can carry: the limits the host enforces and the init obeys.

The init hands the variables to the app through execve(2) (``env -i NAME=VALUE ... app``), so
each ``NAME=VALUE`` becomes one string of the new process's arguments, then of its
environment. Linux refuses the exec (E2BIG) when one string is longer than MAX_ARG_STRLEN
(32 pages: 131072 bytes with its NUL) or when all strings and their pointers exceed a quarter
of the stack limit (2 MiB under the kernel's default 8 MiB). The limits below leave room for
the app's own command line and those pointers:

- :data:`VAR_MAX`: one ``NAME=VALUE`` at most 64 KiB (half of MAX_ARG_STRLEN);
- :data:`TOTAL_MAX`: the environment file (every ``NAME=VALUE`` line with its newline,
  ``IMAGEBUILDER_ENV`` included) at most 256 KiB; even if every line were three bytes long,
  strings and pointers stay under 1 MiB;
- :data:`USERDATA_MAX`: EC2 accepts at most 16 KiB of user-data (before base64), so
  ``userdata`` refuses an environment file larger than that.

``config`` refuses larger values at load time (exit 2); the init skips, and logs, any line
over these limits that reaches it by another way (hand-made user-data or config drive).
"""

from __future__ import annotations

from collections.abc import Mapping

VAR_MAX = 64 * 1024
TOTAL_MAX = 256 * 1024
USERDATA_MAX = 16 * 1024


def var_size(name: str, value: str) -> int:
    """Bytes of ``NAME=VALUE`` (UTF-8), as the kernel counts them (without the NUL)."""
    return len(name.encode()) + 1 + len(value.encode())


def env_size(env_name: str, vars: Mapping[str, str]) -> int:
    """Bytes of the environment file for ``vars`` in ``env_name`` (see ``configdrive``)."""
    lines = {**vars, "IMAGEBUILDER_ENV": env_name}
    return sum(var_size(k, v) + 1 for k, v in lines.items())


def var_problem(name: str, value: str) -> str | None:
    """What is wrong with the size of one variable (None if nothing)."""
    size = var_size(name, value)
    if size <= VAR_MAX:
        return None
    return (f"{name}=VALUE is {size} bytes; a variable may hold at most {VAR_MAX} (the guest's"
            " kernel cannot pass more to the app): keep large data in a file the app reads")


def env_problem(env_name: str, vars: Mapping[str, str]) -> str | None:
    """What is wrong with the total size of an environment (None if nothing)."""
    size = env_size(env_name, vars)
    if size <= TOTAL_MAX:
        return None
    return (f"the variables come to {size} bytes; an environment may hold at most {TOTAL_MAX}"
            " (what the guest can pass to the app)")
