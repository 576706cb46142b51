"""The boot source passed whole to the disk and format writers (imagebuilder/disk/boot.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.disk.boot import LAYERS_PARAM, BootSource

DIGESTS = tuple(f"sha256:{c * 64}" for c in "abc")


def _source() -> BootSource:
    return BootSource(Path("/k"), (("base", Path("/b")), ("app", Path("/a"))), "console=ttyS0",
                      DIGESTS)


def test_the_disk_esp_boots_the_base_layer_with_the_partitions_and_the_same_seed() -> None:
    source = _source()
    disk = source.on_disk()
    assert disk.seed == source.seed
    assert disk.initrds == (("base", Path("/b")),) and disk.kernel == source.kernel
    assert disk.cmdline == f"console=ttyS0 {LAYERS_PARAM}=base:{'b' * 32},app:{'c' * 32}"
    assert source.partitions == (("base", "ib-" + "b" * 32), ("app", "ib-" + "c" * 32))


def test_the_seed_is_a_hash_of_the_digests_and_the_command_line() -> None:
    assert _source().seed == _source().seed
    other = BootSource(Path("/k"), _source().initrds, "console=ttyS1", DIGESTS)
    assert other.seed != _source().seed
    assert BootSource.of_files(Path("/k"), [], "x", seed=b"given").seed == b"given"
    with pytest.raises(ValueError, match="non-empty bytes"):
        BootSource.of_files(Path("/k"), [], "x", seed=b"")
