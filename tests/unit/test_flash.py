"""flash (imagebuilder/targets/metal/flash.py): writes the disk's data onto files and block devices,
verifies it, refuses dangerous targets, survives interruption, adds a config partition."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagebuilder import cli
from imagebuilder.commands.baremetal import COMMANDS
from imagebuilder.disk import gpt
from imagebuilder.disk.configdrive import build_iso, env_file
from imagebuilder.disk.configpart import read_gpt, with_config_partition
from imagebuilder.disk.model import Disk
from imagebuilder.errors import HostError, UserError
from imagebuilder.formats import write_disk
from imagebuilder.formats.bmap import write_raw_with_bmap
from imagebuilder.targets.metal import flash as baremetal
from imagebuilder.targets.metal import readback
from imagebuilder.targets.metal.blockdev import Host, check_target
from imagebuilder.targets.metal.flash import flash, verify_target
from tests.unit.disk_fixture import sample_disk, sha256

FAKE_MAJOR = 60  # "local/experimental use": no driver answers it


@pytest.fixture
def disk(tmp_path: Path) -> Disk:
    return sample_disk(tmp_path)


def raw_digest(disk: Disk, tmp: Path) -> str:
    write_disk(disk, tmp / "reference.raw", "raw")
    return sha256(tmp / "reference.raw")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    for command in COMMANDS:
        if command.name not in cli.cli.commands:
            cli.cli.add_command(command)
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- regular files -----------------------------------------------------------------------------


def test_flash_onto_a_file_gives_the_raw_disk(tmp_path: Path, disk: Disk) -> None:
    target = tmp_path / "target.img"
    target.write_bytes(os.urandom(1 << 20) * 20)  # an old, larger image: replaced whole
    phases: list[tuple[str, int]] = []
    done: list[int] = []

    def progress(phase: str, total: int) -> object:
        phases.append((phase, total))
        return done.append

    result = flash(disk, target, progress=progress)  # type: ignore[arg-type]
    assert result.verified and result.kind == "file"
    assert sha256(target) == raw_digest(disk, tmp_path)
    assert phases == [("write", disk.data_size())]  # verified as it goes
    assert sum(done) == result.written
    # Only the data: the file stays sparse.
    assert os.stat(target).st_blocks * 512 < disk.size // 2


def test_flash_from_a_raw_image_and_its_block_map_on_the_command_line(
        tmp_path: Path, disk: Disk, capsys: pytest.CaptureFixture[str]) -> None:
    write_raw_with_bmap(disk, tmp_path / "disk.raw")
    code, out, err = run_cli(capsys, "flash", str(tmp_path / "disk.raw"),
                             str(tmp_path / "t.img"))
    assert code == 0, err
    assert out.startswith(f"flashed {tmp_path / 'disk.raw'} onto {tmp_path / 't.img'}: ")
    assert out.rstrip().endswith("verified: all 1085440 bytes read back from the target equal "
                                 "the image's bytes, checked against its block map (SHA-256 per "
                                 "range)")
    assert sha256(tmp_path / "t.img") == sha256(tmp_path / "disk.raw")
    # An image changed after its map was written: refused before anything is written.
    with open(tmp_path / "disk.raw", "r+b") as f:
        f.seek((1 << 20) + 100)
        f.write(b"tampered")
    code, out, err = run_cli(capsys, "flash", str(tmp_path / "disk.raw"),
                             str(tmp_path / "u.img"))
    assert code == 2, err
    assert "does not match its block map at blocks 256-" in err and err.count("\n") == 1
    with pytest.raises(HostError, match="differs from the disk at bytes 0-"):  # no table
        verify_target(Disk.from_file(tmp_path / "disk.raw"), tmp_path / "u.img")
    code, out, err = run_cli(capsys, "flash", "--no-verify", str(tmp_path / "disk.raw"),
                             str(tmp_path / "v.img"))
    assert code == 2 and "does not match its block map at blocks 256-" in err


def test_a_wrong_device_path_is_a_one_line_error(tmp_path: Path, disk: Disk,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    write_disk(disk, tmp_path / "disk.raw", "raw")
    code, _, err = run_cli(capsys, "flash", str(tmp_path / "disk.raw"), "/dev/nonexistent-disk")
    assert code == 2
    assert err == "ERROR: /dev/nonexistent-disk: no such device (list disks with 'lsblk -d')\n"
    code, _, err = run_cli(capsys, "flash", str(tmp_path / "disk.raw"),
                           str(tmp_path / "no" / "t.img"))
    assert code == 2 and "does not exist" in err


def cli_run(*argv: str | Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``imagebuilder ARGV`` as a person runs it: a process of its own."""
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "IMAGEBUILDER_HOME": str(home)})


def gpt_of(path: Path) -> dict[str, object]:
    done = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("as_json", [False, True])
def test_flashing_an_image_onto_itself_is_refused_and_leaves_it_whole(
        tmp_path: Path, disk: Disk, how: str, as_json: bool) -> None:
    image = tmp_path / "IMAGE.raw"
    write_disk(disk, image, "raw")
    before, table = sha256(image), gpt_of(image)
    target = {"same": image, "symlink": tmp_path / "link.raw",
              "hardlink": tmp_path / "hard.raw"}[how]
    if how == "symlink":
        target.symlink_to(image.name)
    elif how == "hardlink":
        os.link(image, target)
    done = cli_run("flash", *(["--json"] if as_json else []), image, target,
                   home=tmp_path / "home")
    assert done.returncode == 2, done.stdout
    assert done.stderr == (f"ERROR: {target} is the same file as {image}, which the image is "
                           "read from: flashing would destroy the image; give another target\n")
    assert done.stdout == ""
    assert sha256(image) == before and gpt_of(image) == table


def test_a_loop_device_backed_by_the_image_is_refused(tmp_path: Path, disk: Disk) -> None:
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup")
    image = tmp_path / "IMAGE.raw"
    write_disk(disk, image, "raw")
    before = sha256(image)
    made = subprocess.run([losetup, "-f", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"losetup does not work here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        done = cli_run("flash", image, device, home=tmp_path / "home")
    finally:
        subprocess.run([losetup, "-d", device], check=False)
    assert done.returncode == 2
    assert done.stderr == (f"ERROR: {device} is backed by {image}, which the image is read "
                           "from: flashing would destroy the image; give another target\n")
    assert sha256(image) == before


def test_a_target_in_the_store_or_the_cache_is_refused(tmp_path: Path, disk: Disk) -> None:
    image = tmp_path / "IMAGE.raw"
    write_disk(disk, image, "raw")
    home = tmp_path / "home"
    for where in ("store", "cache"):
        (home / where / "blobs").mkdir(parents=True)
        done = cli_run("flash", image, home / where / "blobs" / "x", home=home)
        assert done.returncode == 2
        assert done.stderr == (f"ERROR: {home / where / 'blobs' / 'x'} is inside {home / where}, "
                               "where imagebuilder keeps the images it reads: give a target "
                               "outside it\n")
        assert not (home / where / "blobs" / "x").exists()


def _kept_files(home: Path) -> list[Path]:
    """A store blob and a cache file (the store hard-links its blobs into the cache)."""
    blob = home / "store" / "blobs" / "sha256" / ("ab" * 32)
    cached = home / "cache" / "disks" / "d1" / "disk.raw"
    for path in (blob, cached):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"kept by imagebuilder" * 4096)
    return [blob, cached]


def test_a_hard_link_to_a_store_or_cache_file_is_refused(tmp_path: Path, disk: Disk) -> None:
    """Review F3: a hard link outside the store to any of its blobs (or the cache's files)."""
    image = tmp_path / "IMAGE.raw"
    write_disk(disk, image, "raw")
    home = tmp_path / "home"
    for kept in _kept_files(home):
        before = sha256(kept)
        target = tmp_path / f"hard-{kept.name}"
        os.link(kept, target)
        done = cli_run("flash", image, target, home=home)
        assert done.returncode == 2, done.stdout
        assert done.stderr == (f"ERROR: {target} is the same file as {kept}, which imagebuilder "
                               f"keeps in {home / kept.relative_to(home).parts[0]}: flashing "
                               "would damage it; give another target\n")
        assert sha256(kept) == before


def test_a_loop_device_backed_by_a_store_blob_is_refused(tmp_path: Path, disk: Disk) -> None:
    """Review F3: a loop device on a store blob, not the image's own file."""
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup")
    image = tmp_path / "IMAGE.raw"
    write_disk(disk, image, "raw")
    home = tmp_path / "home"
    blob = _kept_files(home)[0]
    with blob.open("r+b") as f:
        f.truncate(disk.size)
    before = sha256(blob)
    made = subprocess.run([losetup, "-f", "--show", str(blob)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"losetup does not work here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        done = cli_run("flash", image, device, home=home)
    finally:
        subprocess.run([losetup, "-d", device], check=False)
    assert done.returncode == 2, done.stdout
    assert done.stderr == (f"ERROR: {device} is backed by {blob}, which imagebuilder keeps in "
                           f"{home / 'store'}: flashing would damage it; give another target\n")
    assert sha256(blob) == before


def test_a_disk_of_zeros_is_refused_not_verified(tmp_path: Path) -> None:
    image = tmp_path / "zeros.raw"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    done = cli_run("flash", image, tmp_path / "t.img", home=tmp_path / "home")
    assert done.returncode == 2 and "verified" not in done.stdout
    assert done.stderr == ("ERROR: the disk holds no data (all zeros): there is nothing to "
                           "flash\n")
    assert not (tmp_path / "t.img").exists()


def test_flash_says_what_it_compared(tmp_path: Path, disk: Disk) -> None:
    image = tmp_path / "IMAGE.raw"
    write_disk(disk, image, "raw")
    done = cli_run("flash", image, tmp_path / "t.img", home=tmp_path / "home")
    assert done.returncode == 0, done.stderr
    written = disk.data_size()
    assert done.stdout == (f"flashed {image} onto {tmp_path / 't.img'}: 1085440 bytes written "
                           "in 6 ranges, verified: all 1085440 bytes read back from the target "
                           "equal the image's bytes, read from its extents\n")
    assert sha256(tmp_path / "t.img") == sha256(image)
    done = cli_run("flash", "--json", image, tmp_path / "u.img", home=tmp_path / "home")
    result = json.loads(done.stdout)
    assert result["verified"] and result["verified_bytes"] == result["written"] == 1085440
    assert result["compared_with"] == "the image's bytes, read from its extents"
    assert written >= result["written"]
    done = cli_run("flash", "--no-verify", "--json", image, tmp_path / "v.img",
                   home=tmp_path / "home")
    result = json.loads(done.stdout)
    assert not result["verified"] and result["verified_bytes"] == 0
    assert result["compared_with"] is None


def test_a_file_target_is_checked_against_the_disk_digest(tmp_path: Path, disk: Disk) -> None:
    digest = f"sha256:{raw_digest(disk, tmp_path)}"
    result = flash(disk, tmp_path / "t.img", disk_digest=digest)
    assert result.against == ("the image's bytes, read from its extents; the whole target's "
                              f"SHA-256 is the image's disk digest {digest[:19]}")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(HostError) as info:
        flash(disk, tmp_path / "u.img", disk_digest=wrong)
    assert str(info.value).startswith(f"verify: {tmp_path / 'u.img'} hashes to sha256:")
    assert str(info.value).endswith(f"not the image's disk digest {wrong[:19]} ({disk.size} "
                                    "bytes); flash it again")
    assert flash(disk, tmp_path / "v.img", verify=False, disk_digest=wrong).against  # not read


@pytest.mark.parametrize("path", ["/dev/null", "/"])
def test_not_a_disk_is_refused(path: str) -> None:
    with pytest.raises(UserError, match="give a whole disk"):
        check_target(Path(path), 1 << 20)


# --- interruption and verification -------------------------------------------------------------


def test_an_interrupted_flash_is_rejected_by_verify_and_rewritten(
        tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "t.img"
    flash(disk, target)  # a good disk first: the interruption must not leave it looking good
    calls = 0
    real = baremetal._write

    def failing(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt  # the power goes, Ctrl-C, the process is killed
        real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(baremetal, "_write", failing)
    with pytest.raises(KeyboardInterrupt):
        flash(disk, target)
    monkeypatch.undo()
    with pytest.raises(HostError) as info:
        verify_target(disk, target)
    assert "differs from the disk at bytes 0-" in str(info.value)  # no partition table yet
    assert bytes(target.read_bytes()[:4096]) == bytes(4096)
    result = flash(disk, target)
    assert result.verified and sha256(target) == raw_digest(disk, tmp_path)


def test_a_reader_error_crosses_the_queue(tmp_path: Path, disk: Disk,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data.bin"
    real = baremetal._pieces

    def pieces(d: Disk) -> Iterator[tuple[int, memoryview]]:
        for i, item in enumerate(real(d)):
            if i == 2:
                data.unlink()
                raise HostError(f"cannot read {data}: No such file or directory")
            yield item

    monkeypatch.setattr(baremetal, "_pieces", pieces)
    with pytest.raises(HostError, match="cannot read"):
        flash(disk, tmp_path / "t.img")


def test_verify_rejects_a_truncated_or_changed_target(tmp_path: Path, disk: Disk) -> None:
    target = tmp_path / "t.img"
    result = flash(disk, target, verify=False)
    assert not result.verified
    with open(target, "r+b") as f:
        f.seek((1 << 20) + 4096 * 3)
        f.write(b"bit rot")
    with pytest.raises(HostError) as info:
        verify_target(disk, target)
    assert str(info.value) == (f"verify: {target} differs from the disk at bytes 1048576-2097151 "
                               "(blocks 256-511); flash it again")
    flash(disk, target, verify=False)
    os.truncate(target, 12 << 20)
    with pytest.raises(HostError, match="ends before the end of bytes 12582912-"):
        verify_target(disk, target)


def test_a_read_error_on_verify_names_the_range(tmp_path: Path, disk: Disk,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(*args: object) -> int:
        raise OSError(errno.EIO, "Input/output error")

    flash(disk, tmp_path / "t.img", verify=False)
    monkeypatch.setattr(readback, "read_full", eio)
    with pytest.raises(HostError) as info:
        verify_target(disk, tmp_path / "t.img")
    assert str(info.value) == (f"verify: cannot read bytes 0-4095 (block 0) of "
                               f"{tmp_path / 't.img'}: Input/output error")


def test_a_failing_write_is_an_error_never_success(tmp_path: Path, disk: Disk,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def enodev(*args: object) -> int:
        raise OSError(errno.ENODEV, "No such device")

    monkeypatch.setattr(baremetal.os, "pwrite", enodev)
    with pytest.raises(HostError, match="disappeared while writing bytes 1048576-2097151"):
        flash(disk, tmp_path / "t.img")


# --- refusals, on fake sysfs trees and a device node ---------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Path, Host]]:
    """A device node (loop major, unused minor) and a sysfs where it is disk ``fakedisk`` with
    partition ``fakedisk1``; ``/`` is on another disk's partition."""
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    dev = tmp_path / "dev"
    dev.mkdir()
    minor = 4000 + os.getpid() % 1000
    try:
        os.mknod(dev / "fakedisk", 0o600 | stat.S_IFBLK, os.makedev(FAKE_MAJOR, minor))
        os.mknod(dev / "fakedisk1", 0o600 | stat.S_IFBLK, os.makedev(FAKE_MAJOR, minor + 1))
    except OSError as e:
        pytest.skip(f"cannot make device nodes here: {e.strerror}")
    sys = tmp_path / "sys"
    disks = sys / "devices" / "virtual" / "block"
    for name, size in (("fakedisk", 1 << 30), ("rootdisk", 1 << 30)):
        (disks / name).mkdir(parents=True)
        (disks / name / "size").write_text(f"{size // 512}\n")
        (disks / name / "holders").mkdir()
        (disks / name / f"{name}1").mkdir()
        (disks / name / f"{name}1" / "partition").write_text("1\n")
        (disks / name / f"{name}1" / "size").write_text(f"{size // 1024}\n")
    (sys / "dev" / "block").mkdir(parents=True)
    (sys / "class" / "block").mkdir(parents=True)
    numbers = {"fakedisk": (FAKE_MAJOR, minor), "fakedisk1": (FAKE_MAJOR, minor + 1),
               "rootdisk": (FAKE_MAJOR, minor + 2), "rootdisk1": (FAKE_MAJOR, minor + 3)}
    for name, (ma, mi) in numbers.items():
        node = disks / name if name in ("fakedisk", "rootdisk") else disks / name[:-1] / name
        (sys / "dev" / "block" / f"{ma}:{mi}").symlink_to(node)
        (sys / "class" / "block" / name).symlink_to(node)
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/rootdisk1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n")
    yield dev, Host(mounts=mounts, sys=sys, root_dev=os.makedev(FAKE_MAJOR, minor + 3))


def test_refuses_the_disk_the_host_runs_from(fake: tuple[Path, Host]) -> None:
    dev, host = fake
    os.mknod(dev / "rootdisk", 0o600 | stat.S_IFBLK, os.makedev(FAKE_MAJOR,
             os.minor(os.stat(dev / "fakedisk").st_rdev) + 2))
    with pytest.raises(UserError) as info:
        check_target(dev / "rootdisk", 1 << 20, force=True, host=host)
    assert str(info.value) == (f"{dev / 'rootdisk'} is the disk this host runs from (rootdisk "
                               "holds /): refusing to overwrite it")


def test_refuses_a_disk_with_a_mounted_partition(fake: tuple[Path, Host]) -> None:
    dev, host = fake
    host.mounts.write_text(host.mounts.read_text() + "/dev/fakedisk1 /mnt/my\\040data vfat rw\n")
    with pytest.raises(UserError) as info:
        check_target(dev / "fakedisk", 1 << 20, force=True, host=host)
    assert str(info.value) == (f"{dev / 'fakedisk'} is in use: /dev/fakedisk1 is mounted at "
                               "/mnt/my data; unmount it first")


def test_refuses_a_partition_unless_forced(fake: tuple[Path, Host]) -> None:
    dev, host = fake
    with pytest.raises(UserError) as info:
        check_target(dev / "fakedisk1", 1 << 20, host=host)
    assert str(info.value) == (f"{dev / 'fakedisk1'} is a partition of /dev/fakedisk, not a "
                               "whole disk: flash /dev/fakedisk, or pass --force to write the "
                               "disk into the partition")
    target = check_target(dev / "fakedisk1", 1 << 20, force=True, host=host)
    assert target.kind == "block" and target.size == 512 << 20


def test_refuses_a_device_smaller_than_the_disk(fake: tuple[Path, Host]) -> None:
    dev, host = fake
    with pytest.raises(UserError) as info:
        check_target(dev / "fakedisk", 2 << 30, force=True, host=host)
    assert str(info.value) == (f"{dev / 'fakedisk'} holds {1 << 30} bytes; the disk needs "
                               f"{2 << 30}: use a larger device")
    assert check_target(dev / "fakedisk", 1 << 30, host=host).size == 1 << 30


# --- a real loop device ------------------------------------------------------------------------


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup")
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(32 << 20)
    result = subprocess.run([losetup, "-f", "--show", str(backing)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"losetup does not work here: {result.stderr.strip()}")
    device = Path(result.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run([losetup, "-d", str(device)], check=False)


def test_flash_onto_a_loop_device(tmp_path: Path, disk: Disk, loop: Path) -> None:
    with open(loop, "r+b") as f:  # old content where the image has holes and at the end
        f.write(os.urandom(1 << 20))
    result = flash(disk, loop)
    assert result.kind == "block" and result.verified and result.o_direct
    with open(loop, "rb") as f:
        head = f.read(disk.size)
    write_disk(disk, tmp_path / "ref.raw", "raw")
    ref = (tmp_path / "ref.raw").read_bytes()
    for block in range(0, disk.size, 4096):  # every data block is the disk's
        want = ref[block:block + 4096]
        if want.count(0) != len(want):
            assert head[block:block + 4096] == want
    # The old backup table at the device's end is gone.
    with open(loop, "rb") as f:
        f.seek(-512, os.SEEK_END)
        assert f.read() == bytes(512)


def test_a_device_keeps_its_old_bytes_in_the_gaps_and_nothing_claims_otherwise(
        tmp_path: Path, disk: Disk, loop: Path) -> None:
    """Review F4: on a block device only the data ranges and the table areas are written, so a
    device that held other bytes does not hash to the disk digest: the result line compares only
    what was written, and docs/bare-metal.md says so (it claimed the flashed disk hashes to the
    digest)."""
    write_disk(disk, tmp_path / "ref.raw", "raw")
    digest = "sha256:" + sha256(tmp_path / "ref.raw")
    with open(loop, "r+b") as f:
        f.write(b"\xff" * disk.size)
    result = flash(disk, loop, disk_digest=digest)
    assert result.verified and "disk digest" not in result.against
    with open(loop, "rb") as f:
        assert "sha256:" + hashlib.sha256(f.read(disk.size)).hexdigest() != digest
    readme = " ".join((Path(__file__).parents[2] / "docs" / "bare-metal.md").read_text().split())
    assert "Without `--env` the flashed disk hashes to the image's disk digest" not in readme
    assert "the gaps keep what the device held" in readme


def test_an_exclusively_held_device_is_refused(disk: Disk, loop: Path) -> None:
    fd = os.open(loop, os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(UserError, match="is in use"):
            flash(disk, loop)
    finally:
        os.close(fd)


def test_refuses_a_device_smaller_than_the_disk_for_real(tmp_path: Path, loop: Path) -> None:
    big = sample_disk(tmp_path, size=64 << 20)
    with pytest.raises(UserError, match=f"holds {32 << 20} bytes; the disk needs {64 << 20}"):
        flash(big, loop)


# --- the config partition ----------------------------------------------------------------------


def test_config_partition_follows_the_image_and_keeps_its_bytes(tmp_path: Path) -> None:
    disk = sample_disk(tmp_path, size=18 << 20)  # one MiB after the partition, as bootable()
    table = read_gpt(disk)
    withenv = with_config_partition(disk, "test", {"GREETING": "hi"})
    new = read_gpt(withenv)
    assert new.disk_guid == table.disk_guid and new.partitions[0] == table.partitions[0]
    config = new.partitions[1]
    # after the partition and the data outside it at 12 MiB
    assert config.name == "imagebuilder-config" and config.offset == 13 << 20

    assert withenv.size == config.offset + config.size + gpt.ALIGN
    part = table.partitions[0]
    assert withenv.read(part.offset, part.size) == disk.read(part.offset, part.size)
    iso = build_iso(env_file("test", {"GREETING": "hi"}))
    assert withenv.read(config.offset, len(iso)) == iso
    target = tmp_path / "t.img"
    flash(withenv, target)
    sfdisk = subprocess.run(["sfdisk", "--json", str(target)], capture_output=True, text=True)
    if sfdisk.returncode == 0:  # the real reader agrees (no complaint about either header)
        assert '"name": "imagebuilder-config"' in sfdisk.stdout
    data = target.read_bytes()
    assert hashlib.sha256(data[part.offset:part.offset + part.size]).digest() == \
        hashlib.sha256(disk.read(part.offset, part.size)).digest()


def test_config_partition_needs_a_gpt(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no GPT"):
        with_config_partition(Disk(4 << 20), "test", {})


@pytest.mark.parametrize("with_map", [False, True])
def test_a_write_that_goes_wrong_is_caught_by_the_verify(
        tmp_path: Path, disk: Disk, monkeypatch: pytest.MonkeyPatch, with_map: bool) -> None:
    real = baremetal._write

    def corrupting(target: object, direct: int, fd: int, view: memoryview,
                   unit: baremetal.Unit) -> None:
        if unit.offset == 1 << 20:
            view = memoryview(b"\xff" + bytes(view[1:]))
            direct = -1
        real(target, direct, fd, view, unit)  # type: ignore[arg-type]

    source: Disk | baremetal.MappedImage = disk
    if with_map:
        block_map = write_raw_with_bmap(disk, tmp_path / "disk.raw")
        source = baremetal.MappedImage(tmp_path / "disk.raw", block_map)
    monkeypatch.setattr(baremetal, "_write", corrupting)
    with pytest.raises(HostError) as info:
        flash(source, tmp_path / "t.img")
    what = "image" if with_map else "disk"
    assert f"differs from the {what} at bytes 1048576-" in str(info.value)
    assert (tmp_path / "t.img").read_bytes()[:512] == bytes(512)  # never made a disk


# --- files that carry an environment -----------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True])
def test_flash_with_env_onto_a_file_makes_it_owner_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: bool) -> None:
    image = tmp_path / "image.raw"
    write_disk(sample_disk(tmp_path, size=18 << 20), image, "raw")
    (tmp_path / "imagebuilder.toml").write_text(
        '[image]\nname = "hello"\nversion = "1.0"\n[app]\npath = "app.jar"\n'
        '[env.prod]\nvars = { DB_PASSWORD = "s3cr3t" }\n')
    target = tmp_path / "server.img"
    plain = tmp_path / "plain.img"
    old = os.umask(0o022)
    try:
        if existing:
            target.write_bytes(b"old")
            target.chmod(0o664)
        code, _, err = run_cli(capsys, "flash", str(image), str(target), "--env", "prod",
                               "--config", str(tmp_path))
        assert code == 0, err
        assert run_cli(capsys, "flash", str(image), str(plain))[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert b"DB_PASSWORD=s3cr3t" in target.read_bytes()
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644  # no secrets: the usual mode
