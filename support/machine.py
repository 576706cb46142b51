"""Facts about the machine a figure was measured on: its CPU, memory, kernel and how busy it
was (a shared machine's load inflates timings, so every benchmark section says so)."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "unknown"."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                          re.MULTILINE)
    except OSError:
        return "unknown"
    return found[1].strip() if found else "unknown"


def memory_gib() -> float | None:
    """MemTotal in GiB, or None when /proc/meminfo does not say."""
    try:
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(mem[1]) / (1 << 20) if mem else None


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def cpus() -> str:
    """``N CPUs (model)``: how every benchmark names the machine."""
    return f"{os.cpu_count()} CPUs ({cpu_model()})"


def describe() -> str:
    """``N CPUs (model), X GiB RAM, Linux release``."""
    mem = memory_gib()
    ram = f"{mem:.1f} GiB RAM" if mem is not None else "unknown RAM"
    return f"{cpus()}, {ram}, Linux {platform.release()}"
