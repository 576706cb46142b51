"""Registry credentials, as Docker keeps them: ``$DOCKER_CONFIG/config.json`` (or
``~/.docker/config.json``) with ``auths``, ``credHelpers`` and ``credsStore``; a helper is run as
``docker-credential-NAME get``. Every way this can fail is one line naming the file or helper.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

from ..errors import UserError


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def credentials_for(host: str, config_path: Path | None = None) -> tuple[str, str] | None:
    """(username, secret) for ``host`` from the Docker config file or its credential helper."""
    path = config_path or docker_config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the Docker config file: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: not a Docker config file (expected a JSON object)")
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    auths = config.get("auths") or {}
    entry = next((auths[k] for k in (host, f"https://{host}", f"http://{host}",
                                     f"https://{host}/v2/") if k in auths), None)
    if isinstance(entry, dict):
        if entry.get("identitytoken"):
            return "<token>", str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{path}: auths.{host}.auth is not base64 of USER:PASSWORD"
                                ) from None
            return user, secret
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    if helper:
        return _from_helper(str(helper), host)
    return None


def _from_helper(helper: str, host: str) -> tuple[str, str] | None:
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run([program, "get"], input=host, capture_output=True, text=True,
                                timeout=60)
    except FileNotFoundError:
        raise UserError(f"the Docker config names credential helper '{helper}' but "
                        f"{program} is not on PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{program} get did not answer in 60 s") from None
    if result.returncode != 0:
        if "not found" in (result.stdout + result.stderr).lower():
            return None
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise UserError(f"{program} get failed (exit {result.returncode}): {tail[0]}")
    try:
        answer = json.loads(result.stdout)
        return str(answer["Username"]), str(answer["Secret"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{program} get printed no JSON with Username and Secret") from None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params
