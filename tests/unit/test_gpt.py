"""GPT writer: headers, entries and CRCs as the UEFI spec lays them out, checked against our own
parse and against the real tools (sfdisk from util-linux, sgdisk from gdisk)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from imagebuilder.disk import gpt

MIB = 1 << 20


def _table(seed: bytes = b"seed", size: int = 8 * MIB, boot_code: bytes = b"\xeb\xfe" * 220,
           parts: int = 1) -> gpt.Gpt:
    disk_size, spans = gpt.layout([3 * MIB + 5] * parts, min_disk_size=size)
    partitions = tuple(
        gpt.Partition(gpt.ESP_TYPE if i == 0 else gpt.LINUX_FILESYSTEM_TYPE,
                      gpt.derived_guid(seed, f"partition {i + 1}"), first, last,
                      name=f"part {i + 1}",
                      attributes=gpt.ATTR_LEGACY_BIOS_BOOTABLE if i == 0 else 0)
        for i, (first, last) in enumerate(spans)
    )
    return gpt.Gpt(disk_size, gpt.derived_guid(seed, "disk"), partitions, boot_code,
                   gpt.derived_u32(seed, "mbr"))


def _write(table: gpt.Gpt, path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(table.disk_size)
        for offset, data in table.regions():
            f.seek(offset)
            f.write(data)
    return path


HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")


def _parse_header(sector: bytes) -> dict[str, object]:
    (sig, rev, size, crc, _, my_lba, alt_lba, first, last, guid, entries_lba, count, entry_size,
     entries_crc) = HEADER.unpack_from(sector)
    zeroed = bytearray(sector[:size])
    zeroed[16:20] = b"\0\0\0\0"
    return dict(sig=sig, rev=rev, size=size, crc=crc, crc_ok=zlib.crc32(zeroed) == crc,
                my_lba=my_lba, alt_lba=alt_lba, first=first, last=last,
                guid=uuid.UUID(bytes_le=guid), entries_lba=entries_lba, count=count,
                entry_size=entry_size, entries_crc=entries_crc)


def test_primary_and_backup_headers_point_at_each_other_with_valid_crcs(tmp_path: Path) -> None:
    table = _table()
    image = _write(table, tmp_path / "disk.raw").read_bytes()
    lbas = len(image) // 512
    primary = _parse_header(image[512:1024])
    backup = _parse_header(image[-512:])
    assert primary["sig"] == backup["sig"] == b"EFI PART"
    assert primary["rev"] == 0x00010000 and primary["size"] == 92
    assert primary["crc_ok"] and backup["crc_ok"]
    assert (primary["my_lba"], primary["alt_lba"], primary["entries_lba"]) == (1, lbas - 1, 2)
    assert (backup["my_lba"], backup["alt_lba"], backup["entries_lba"]) == (lbas - 1, 1,
                                                                           lbas - 33)
    assert primary["first"] == backup["first"] == 34
    assert primary["last"] == backup["last"] == lbas - 34
    assert primary["guid"] == backup["guid"] == gpt.derived_guid(b"seed", "disk")
    assert primary["count"] == 128 and primary["entry_size"] == 128
    entries = image[1024:1024 + 128 * 128]
    assert image[(lbas - 33) * 512:(lbas - 1) * 512] == entries
    assert primary["entries_crc"] == backup["entries_crc"] == zlib.crc32(entries)
    assert image[512 + 92:1024] == bytes(512 - 92)  # the rest of the header sector is zeros


def test_esp_entry_type_guid_attributes_and_name() -> None:
    table = _table()
    entry = table.entries()[:128]
    type_guid, part_guid, first, last, attrs, name = struct.unpack("<16s16sQQQ72s", entry)
    assert uuid.UUID(bytes_le=type_guid) == uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
    assert uuid.UUID(bytes_le=part_guid) == gpt.derived_guid(b"seed", "partition 1")
    assert (first, last) == (2048, 2048 + 4 * 2048 - 1)  # 3 MiB + 5 bytes -> 4 MiB, at 1 MiB
    assert attrs == 1 << 2  # legacy BIOS bootable: gptmbr.bin boots this partition
    assert name.decode("utf-16-le").rstrip("\0") == "part 1"
    assert table.entries()[128:] == bytes(127 * 128)


def test_protective_mbr_carries_boot_code_signature_and_one_0xee_partition() -> None:
    table = _table(boot_code=b"\x90" * 440)
    mbr = table.protective_mbr()
    assert mbr[:440] == b"\x90" * 440
    assert struct.unpack_from("<I", mbr, 440)[0] == gpt.derived_u32(b"seed", "mbr")
    status, _, ptype, _, start, size = struct.unpack_from("<B3sB3sII", mbr, 446)
    assert (status, ptype, start, size) == (0, 0xEE, 1, table.total_lbas - 1)
    assert mbr[462:510] == bytes(48) and mbr[510:] == b"\x55\xaa"


def test_huge_disk_caps_the_protective_partition_at_32_bits() -> None:
    size = 3 << 40  # 3 TiB: more sectors than 32 bits count
    table = gpt.Gpt(size, uuid.UUID(int=1), ())
    assert struct.unpack_from("<I", table.protective_mbr(), 446 + 12)[0] == 0xFFFFFFFF
    assert table.backup_offset == size - 33 * 512


def test_layout_aligns_partitions_and_disk_to_1_mib() -> None:
    size, spans = gpt.layout([1, MIB, MIB + 1])
    assert spans == [(2048, 4095), (4096, 6143), (6144, 10239)]
    assert size == 6 * MIB  # 1 MiB before, 4 MiB of partitions, 1 MiB for the backup table
    size, _ = gpt.layout([MIB], min_disk_size=10 * MIB + 1)
    assert size == 11 * MIB
    with pytest.raises(ValueError):
        gpt.layout([0])


def test_guids_are_derived_from_the_seed_not_random() -> None:
    assert gpt.derived_guid(b"a", "disk") == gpt.derived_guid(b"a", "disk")
    assert gpt.derived_guid(b"a", "disk") != gpt.derived_guid(b"b", "disk")
    assert gpt.derived_guid(b"a", "disk") != gpt.derived_guid(b"a", "partition 1")
    g = gpt.derived_guid(b"a", "disk")
    assert g.version == 4 and g.variant == uuid.RFC_4122
    assert _table(b"x").primary() == _table(b"x").primary()
    assert _table(b"x").primary() != _table(b"y").primary()
    assert 0 < gpt.derived_u32(b"a", "serial") <= 0xFFFFFFFF


@pytest.mark.parametrize("bad", [
    dict(partitions=(gpt.Partition(gpt.ESP_TYPE, uuid.UUID(int=1), 33, 100),)),  # in the table
    dict(partitions=(gpt.Partition(gpt.ESP_TYPE, uuid.UUID(int=1), 2048, 16351),)),  # in backup
    dict(partitions=(gpt.Partition(gpt.ESP_TYPE, uuid.UUID(int=1), 2048, 3000),
                     gpt.Partition(gpt.ESP_TYPE, uuid.UUID(int=2), 3000, 4000))),  # overlap
    dict(boot_code=bytes(441)),
    dict(disk_size=8 * MIB + 1),
])
def test_invalid_tables_are_refused(bad: dict[str, object]) -> None:
    args: dict[str, object] = dict(disk_size=8 * MIB, disk_guid=uuid.UUID(int=9), partitions=())
    args.update(bad)
    with pytest.raises(ValueError):
        gpt.Gpt(**args)  # type: ignore[arg-type]


def test_sfdisk_reads_the_table(tmp_path: Path) -> None:
    sfdisk = shutil.which("sfdisk")
    if sfdisk is None:
        pytest.skip("sfdisk not installed (apt-get install fdisk)")
    table = _table(parts=2)
    disk = _write(table, tmp_path / "disk.raw")
    result = subprocess.run([sfdisk, "--json", str(disk)], capture_output=True, text=True,
                            check=True)
    assert "warning" not in result.stderr.lower(), result.stderr
    pt = json.loads(result.stdout)["partitiontable"]
    assert pt["label"] == "gpt"
    assert uuid.UUID(pt["id"]) == table.disk_guid
    assert (pt["firstlba"], pt["lastlba"]) == (34, table.total_lbas - 34)
    first, second = pt["partitions"]
    assert (first["start"], first["size"]) == (2048, 4 * 2048)
    assert uuid.UUID(first["type"]) == gpt.ESP_TYPE
    assert uuid.UUID(first["uuid"]) == gpt.derived_guid(b"seed", "partition 1")
    assert first["attrs"] == "LegacyBIOSBootable"
    assert first["name"] == "part 1"
    assert (second["start"], uuid.UUID(second["type"])) == (5 * 2048, gpt.LINUX_FILESYSTEM_TYPE)


def test_sgdisk_verifies_the_table(tmp_path: Path) -> None:
    sgdisk = shutil.which("sgdisk")
    if sgdisk is None:
        pytest.skip("sgdisk not installed (apt-get install gdisk)")
    disk = _write(_table(parts=2), tmp_path / "disk.raw")
    result = subprocess.run([sgdisk, "-v", str(disk)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout, result.stdout
    info = subprocess.run([sgdisk, "-i", "1", str(disk)], capture_output=True, text=True,
                          check=True).stdout
    assert "EFI system partition" in info or "EFI System" in info, info
    assert "legacy BIOS bootable" in info.lower() or "0000000000000004" in info, info


def test_parse_reads_back_what_primary_writes_and_refuses_damage() -> None:
    table = _table(parts=2)
    head = table.primary()
    assert gpt.parse(head, table.disk_size) == table
    damaged = bytearray(head)
    damaged[gpt.SECTOR * 2 + 60] ^= 0xFF  # an entry's bytes: the entries CRC no longer holds
    with pytest.raises(ValueError, match="CRC mismatch"):
        gpt.parse(bytes(damaged), table.disk_size)
    with pytest.raises(ValueError, match="no GPT"):
        gpt.parse(bytes(len(head)), table.disk_size)
    huge = bytearray(head)
    struct.pack_into("<I", huge, gpt.SECTOR + 80, 1 << 20)  # an entry count past the head
    with pytest.raises(ValueError, match="out of bounds"):
        gpt.parse(bytes(huge), table.disk_size)
