"""Durable file replacement, shared by every module that commits a file by rename.

Nothing half-written is ever left where a later command would trust it: data goes to a
temporary name in the destination's directory, is fsynced, renamed over the destination, and
the directory itself is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
