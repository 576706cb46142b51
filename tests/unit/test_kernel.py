"""Tests for imagebuilder.layers.kernel: manifests, module scanning, closure and the modprobe files.

The synthetic module trees are built from objects compiled with gcc that carry a ``.modinfo``
section, some of them xz- or zstd-compressed as Debian ships them. Two optional tests use real
artefacts: ``IMAGEBUILDER_TEST_KERNEL_DEB`` (a Debian kernel .deb) and
``IMAGEBUILDER_TEST_BUSYBOX`` (a static busybox, run in a chroot: needs root).
"""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import zstandard

from imagebuilder.errors import ConfigError, ImageBuilderError
from imagebuilder.layers import elf, kernel
from imagebuilder.layers.kernel import Module, ModuleTree

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

KVER = "6.1.0-test-amd64"


class FakeTree:
    """Records what write_modules adds (the layers.cpio.Tree API); checks parity with it."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int]] = {}

    def add_file(
        self, path: str, *, data: bytes | None = None, source: Path | None = None, mode: int = 0o644
    ) -> None:
        assert not path.startswith("/") and path not in self.files
        if data is None:
            assert source is not None
            data = source.read_bytes()
        self.files[path] = (data, mode)

    def text(self, name: str) -> str:
        return self.files[f"lib/modules/{KVER}/{name}"][0].decode()


def _compile(tmp_path: Path, modinfo: list[str]) -> bytes:
    """A relocatable object whose .modinfo holds ``modinfo`` (NUL-separated, like modpost's)."""
    body = "\\0".join(s.replace("\\", "\\\\").replace('"', '\\"') for s in modinfo)
    src = tmp_path / "m.c"
    src.write_text(
        '__attribute__((section(".modinfo"), used)) static const char m[] = "' + body + '";\n'
        "int f(void) { return 0; }\n"
    )
    obj = tmp_path / "m.o"
    subprocess.run(["gcc", "-c", "-o", str(obj), str(src)], check=True, capture_output=True)
    return obj.read_bytes()


def _add(
    tmp_path: Path,
    root: Path,
    relpath: str,
    modinfo: list[str],
    *,
    base: str = f"usr/lib/modules/{KVER}",
) -> Path:
    """Add a module at ``relpath`` (its suffix chooses the compression) to the package ``root``."""
    data = _compile(tmp_path, [*modinfo, f"name={kernel.modname(relpath)}"])
    if relpath.endswith(".xz"):
        data = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif relpath.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path = root / base / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _package(root: Path, builtin: list[str], *, base: str = f"usr/lib/modules/{KVER}") -> None:
    moddir = root / base
    moddir.mkdir(parents=True, exist_ok=True)
    (moddir / "modules.builtin").write_text("".join(f"{b}\n" for b in builtin))
    (moddir / "modules.order").write_text("")
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"not really a kernel")


@pytest.fixture(scope="module")
def pkg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trixie-style kernel package: usr/lib/modules, mostly .ko.xz."""
    tmp = tmp_path_factory.mktemp("build")
    root = tmp_path_factory.mktemp("pkg")
    _package(
        root,
        [
            "kernel/drivers/virtio/virtio.ko",
            "kernel/fs/ext4/ext4.ko",
            "kernel/drivers/block/built-in-x.ko",
        ],
    )
    mods = {
        # a diamond: a -> b, c -> d
        "kernel/drivers/a.ko.xz": [
            "alias=pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "alias=virtio:d00000001v*",
            "depends=c,b",
        ],
        "kernel/drivers/b.ko.xz": ["depends=d"],
        "kernel/drivers/c.ko": ["depends=d"],
        "kernel/lib/d.ko": ["depends="],
        # softdeps: a builtin, a real module, an alias, a missing one, and a post one
        "kernel/fs/e.ko.xz": ["softdep=pre: built_in_x f crypto-foo nosuch post: g", "depends="],
        "kernel/fs/f.ko.xz": ["depends="],
        "kernel/fs/g.ko.xz": ["depends="],
        "kernel/crypto/foo_generic.ko.xz": ["alias=crypto-foo", "alias=foo", "depends="],
        # a cycle
        "kernel/p.ko.xz": ["depends=q"],
        "kernel/q.ko.xz": ["depends=p"],
        # a hyphenated file name, and a module whose dependency is missing
        "kernel/drivers/block/xen-blk.ko.xz": ["alias=xen:vbd", "depends=virtio_ring_x"],
        "kernel/drivers/virtio/virtio_ring_x.ko.xz": ["depends="],
        "kernel/r.ko.xz": ["depends=gone"],
    }
    for rel, info in mods.items():
        _add(tmp, root, rel, info)
    return root


@pytest.fixture
def tree(pkg: Path) -> ModuleTree:
    return ModuleTree.scan(pkg)


def names(mods: list[Module]) -> list[str]:
    return [m.name for m in mods]


# -- manifests ---------------------------------------------------------------------------------


def test_debian_cloud_manifest() -> None:
    m = kernel.load_manifest("debian-cloud")
    assert m.name == "debian-cloud"
    assert m.package == "linux-image-cloud-amd64"
    assert "virtio_blk" in m.modules and "xen_blkfront" in m.modules
    assert all("-" not in n for n in m.modules)
    assert "console=ttyS0" in m.cmdline
    assert "debian-cloud" in kernel.available_manifests()


def test_unknown_manifest() -> None:
    with pytest.raises(ConfigError, match=r"unknown kernel 'nope': available: .*debian-cloud"):
        kernel.load_manifest("nope")
    with pytest.raises(ConfigError, match="unknown kernel"):
        kernel.load_manifest("../kernels/debian-cloud")


# -- scanning ----------------------------------------------------------------------------------


def test_scan(tree: ModuleTree, pkg: Path) -> None:
    assert tree.kver == KVER
    assert tree.vmlinuz == pkg / "boot" / f"vmlinuz-{KVER}"
    assert tree.moddir == pkg / "usr/lib/modules" / KVER
    assert {"virtio", "ext4", "built_in_x"} == tree.builtin
    assert "xen_blk" in tree.names and "xen-blk" in tree
    a = tree.module("a")
    assert a.relpath == "kernel/drivers/a.ko"
    assert a.path.name == "a.ko.xz"
    assert a.depends == ("b", "c")
    assert a.aliases == ("pci:v00001AF4d00001000sv*sd*bc*sc*i*", "virtio:d00000001v*")
    assert tree.module("c").relpath == "kernel/drivers/c.ko"  # from c.ko.zst
    assert tree.module("d").depends == ()
    e = tree.module("e")
    assert e.softdeps == ("built_in_x", "f", "crypto_foo", "nosuch")  # pre: only
    xen = tree.module("xen-blk")
    assert (xen.name, xen.relpath) == ("xen_blk", "kernel/drivers/block/xen-blk.ko")


def test_scan_all_modules(tree: ModuleTree) -> None:
    mods = tree.modules()
    assert list(mods) == sorted(mods)
    assert len(mods) == len(tree.names) == 13
    assert mods["foo_generic"].aliases == ("crypto-foo", "foo")


def test_scan_bookworm_layout(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    _package(root, [], base=f"lib/modules/{KVER}")
    _add(tmp_path, root, "kernel/drivers/net/x.ko", ["depends="], base=f"lib/modules/{KVER}")
    tree = ModuleTree.scan(root)
    assert tree.moddir == root / "lib/modules" / KVER
    assert names(tree.closure(["x"])) == ["x"]


def test_scan_needs_exactly_one_kernel(tmp_path: Path) -> None:
    with pytest.raises(ImageBuilderError, match="expected exactly one kernel.*found: none"):
        ModuleTree.scan(tmp_path)
    _package(tmp_path, [])
    (tmp_path / "lib/modules/5.10.0-other").mkdir(parents=True)
    with pytest.raises(ImageBuilderError, match=f"found: 5.10.0-other, {KVER}"):
        ModuleTree.scan(tmp_path)


def test_scan_needs_vmlinuz(tmp_path: Path) -> None:
    _package(tmp_path, [])
    (tmp_path / "boot" / f"vmlinuz-{KVER}").unlink()
    with pytest.raises(ImageBuilderError, match="no boot/vmlinuz-"):
        ModuleTree.scan(tmp_path)


def test_corrupt_module_names_the_file(tmp_path: Path) -> None:
    _package(tmp_path, [])
    bad = tmp_path / f"usr/lib/modules/{KVER}/kernel/bad.ko.xz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not xz at all")
    with pytest.raises(ImageBuilderError, match="bad.ko.xz: cannot decompress"):
        ModuleTree.scan(tmp_path).closure(["bad"])
    bad.unlink()
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    header[0x28:0x30] = (4096).to_bytes(8, "little")  # e_shoff: past the end of the file
    header[0x3A:0x3E] = bytes([64, 0, 3, 0])  # e_shentsize 64, e_shnum 3
    (bad.parent / "bad.ko").write_bytes(bytes(header))
    with pytest.raises(ImageBuilderError, match="bad.ko: not a valid ELF64 file"):
        ModuleTree.scan(tmp_path).closure(["bad"])


# -- closure -----------------------------------------------------------------------------------


def test_closure_orders_dependencies_first(tree: ModuleTree) -> None:
    assert names(tree.closure(["a"])) == ["d", "b", "c", "a"]
    assert names(tree.closure(["c", "a"])) == ["d", "c", "b", "a"]
    assert names(tree.closure(["a", "a", "d"])) == ["d", "b", "c", "a"]


def test_closure_skips_builtins(tree: ModuleTree) -> None:
    assert tree.closure(["virtio", "ext4", "built-in-x"]) == []
    assert names(tree.closure(["ext4", "xen-blk"])) == ["virtio_ring_x", "xen_blk"]


def test_closure_softdeps(tree: ModuleTree) -> None:
    # pre: builtin skipped, f by name, crypto-foo by alias, nosuch ignored; post: g not taken
    assert names(tree.closure(["e"])) == ["f", "foo_generic", "e"]


def test_a_cpu_specific_softdep_provider_is_shipped_but_not_a_dependency(tmp_path: Path) -> None:
    """erofs needs libcrc32c, whose softdep "crc32c" crc32c-intel (SSE4.2 CPUs only) and
    crc32c_generic provide: busybox modprobe stops at a dependency that fails to load."""
    root = tmp_path / "pkg"
    _package(root, [])
    _add(tmp_path, root, "kernel/lib/libcrc32c.ko.xz", ["softdep=pre: crc32c", "depends="])
    _add(tmp_path, root, "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
         ["alias=crypto-crc32c", "alias=crc32c", "alias=cpu:type:x86,ven*fam*mod*:feature:*0094*",
          "depends="])
    _add(tmp_path, root, "kernel/crypto/crc32c_generic.ko.xz",
         ["alias=crypto-crc32c", "alias=crc32c", "depends="])
    _add(tmp_path, root, "kernel/fs/erofs/erofs.ko.xz", ["depends=libcrc32c"])
    tree = ModuleTree.scan(root)
    mods = tree.closure(["erofs"])
    assert sorted(names(mods)) == ["crc32c_generic", "crc32c_intel", "erofs", "libcrc32c"]
    dep = kernel.modules_dep(mods)
    assert "kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz " \
           "kernel/crypto/crc32c_generic.ko.xz\n" in dep
    assert "crc32c-intel.ko.xz:\n" in dep  # shipped, loaded by the CPU's modalias


def test_closure_cycle_terminates(tree: ModuleTree) -> None:
    assert names(tree.closure(["p"])) == ["q", "p"]
    assert names(tree.closure(["q"])) == ["p", "q"]


def test_closure_missing(tree: ModuleTree) -> None:
    with pytest.raises(ConfigError, match=f"kernel module 'no_such' not found in {KVER}"):
        tree.closure(["a", "no-such"])
    with pytest.raises(ImageBuilderError, match="'r' depends on 'gone', which is not in"):
        tree.closure(["r"])


def test_closure_is_deterministic(pkg: Path) -> None:
    first = names(ModuleTree.scan(pkg).closure(["e", "a", "xen_blk", "p"]))
    again = ModuleTree.scan(pkg)
    again.modules()  # reading everything first must not change the answer
    assert names(again.closure(["e", "a", "xen_blk", "p"])) == first


# -- writing -----------------------------------------------------------------------------------


def test_write_modules(tree: ModuleTree) -> None:
    mods = tree.closure(["a", "e", "xen-blk"])
    out = FakeTree()
    kernel.write_modules(mods, tree.kver, out, builtin=tree.builtin_paths)
    base = f"lib/modules/{KVER}"
    for m in mods:
        data, mode = out.files[f"{base}/{m.file_relpath}"]
        if m.path.name.endswith(".zst"):  # busybox has no zstd: stored decompressed
            assert data[:4] == b"\x7fELF", m.relpath
        else:  # as shipped: .ko.xz stays compressed
            assert data == m.path.read_bytes(), m.relpath
        assert mode == 0o644
    assert len(out.files) == len(mods) + 3
    assert out.text("modules.dep") == (
        "kernel/lib/d.ko:\n"
        "kernel/drivers/b.ko.xz: kernel/lib/d.ko\n"
        "kernel/drivers/c.ko: kernel/lib/d.ko\n"
        "kernel/drivers/a.ko.xz: kernel/drivers/c.ko kernel/drivers/b.ko.xz kernel/lib/d.ko\n"
        "kernel/fs/f.ko.xz:\n"
        "kernel/crypto/foo_generic.ko.xz:\n"
        "kernel/fs/e.ko.xz: kernel/crypto/foo_generic.ko.xz kernel/fs/f.ko.xz\n"
        "kernel/drivers/virtio/virtio_ring_x.ko.xz:\n"
        "kernel/drivers/block/xen-blk.ko.xz: kernel/drivers/virtio/virtio_ring_x.ko.xz\n"
    )
    assert out.text("modules.alias") == (
        "# Aliases extracted from modules themselves.\n"
        "alias pci:v00001AF4d00001000sv*sd*bc*sc*i* a\n"
        "alias virtio:d00000001v* a\n"
        "alias crypto-foo foo_generic\n"
        "alias foo foo_generic\n"
        "alias xen:vbd xen_blk\n"
    )
    assert out.text("modules.builtin") == (
        "kernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n"
        "kernel/drivers/block/built-in-x.ko\n"
    )


def test_modules_dep_lists_full_closure_in_reverse_load_order(tree: ModuleTree) -> None:
    """busybox modprobe does not recurse: each line carries every dependency, last loads first."""
    mods = tree.closure(["a"])
    lines = dict(line.split(":", 1) for line in kernel.modules_dep(mods).splitlines())
    deps = lines["kernel/drivers/a.ko.xz"].split()
    loaded = [m.file_relpath for m in mods]
    assert list(reversed(deps)) == loaded[:-1]


def test_modules_dep_cycle(tree: ModuleTree) -> None:
    lines = sorted(kernel.modules_dep(tree.closure(["p"])).splitlines())
    assert lines == ["kernel/p.ko.xz: kernel/q.ko.xz", "kernel/q.ko.xz: kernel/p.ko.xz"]


def test_modules_dep_rejects_incomplete_list(tree: ModuleTree) -> None:
    with pytest.raises(ValueError, match="a needs b, c"):
        kernel.modules_dep([tree.module("a")])


def test_uncompressed_module_is_added_by_source(tree: ModuleTree) -> None:
    out = FakeTree()
    d = tree.module("d")
    kernel.write_modules([d], KVER, out)
    assert out.files[f"lib/modules/{KVER}/kernel/lib/d.ko"][0] == d.path.read_bytes()
    assert out.text("modules.builtin") == ""


# -- real artefacts (optional) -----------------------------------------------------------------


class DiskTree:
    def __init__(self, root: Path) -> None:
        self.root = root

    def add_file(
        self, path: str, *, data: bytes | None = None, source: Path | None = None, mode: int = 0o644
    ) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            assert source is not None
            data = source.read_bytes()
        target.write_bytes(data)
        target.chmod(mode)


def _static_busybox() -> str | None:
    """$IMAGEBUILDER_TEST_BUSYBOX, else the host's busybox if it is static (busybox-static)."""
    path = os.environ.get("IMAGEBUILDER_TEST_BUSYBOX") or shutil.which("busybox")
    if path and elf.interpreter(Path(path)) is None:
        return path
    return None


@pytest.mark.skipif(_static_busybox() is None, reason="needs a static busybox (busybox-static)")
@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")
def test_busybox_modprobe_reads_our_files(tree: ModuleTree, tmp_path: Path) -> None:
    """busybox modprobe -D (show, do not load) resolves names and modaliases from our files."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy(str(_static_busybox()), root / "bin" / "busybox")
    mods = tree.closure(["a", "e", "xen-blk"])
    kernel.write_modules(mods, os.uname().release, DiskTree(root), builtin=tree.builtin_paths)

    def show(arg: str) -> tuple[int, list[str]]:
        p = subprocess.run(
            ["chroot", str(root), "/bin/busybox", "modprobe", "-D", arg],
            check=False,
            capture_output=True,
            text=True,
        )
        moddir = f"/lib/modules/{os.uname().release}/"
        return p.returncode, [
            w.removeprefix(moddir) for line in p.stdout.splitlines() for w in line.split()[1:2]
        ]

    assert show("a") == (
        0,
        ["kernel/lib/d.ko", "kernel/drivers/b.ko.xz", "kernel/drivers/c.ko",
         "kernel/drivers/a.ko.xz"],
    )
    assert (
        show("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")[1][-1]
        == "kernel/drivers/a.ko.xz"
    )
    assert show("xen-blk")[1] == [
        "kernel/drivers/virtio/virtio_ring_x.ko.xz",
        "kernel/drivers/block/xen-blk.ko.xz",
    ]
    assert show("xen:vbd")[1][-1] == "kernel/drivers/block/xen-blk.ko.xz"
    assert show("e")[1] == ["kernel/fs/f.ko.xz", "kernel/crypto/foo_generic.ko.xz",
                            "kernel/fs/e.ko.xz"]
    assert show("ext4")[0] != 0  # builtin: nothing to load
    assert show("nosuch")[0] != 0


@pytest.mark.skipif(
    not os.environ.get("IMAGEBUILDER_TEST_KERNEL_DEB"),
    reason="set IMAGEBUILDER_TEST_KERNEL_DEB to a Debian linux-image .deb",
)
def test_real_debian_kernel(tmp_path: Path) -> None:
    deb = os.environ["IMAGEBUILDER_TEST_KERNEL_DEB"]
    subprocess.run(["dpkg-deb", "-x", deb, str(tmp_path)], check=True)
    start = time.perf_counter()
    tree = ModuleTree.scan(tmp_path)
    manifest = kernel.load_manifest("debian-cloud")
    mods = tree.closure(manifest.modules)
    closure_s = time.perf_counter() - start
    start = time.perf_counter()
    every = tree.modules()
    scan_s = time.perf_counter() - start
    print(
        f"\n{tree.kver}: {len(every)} modules; closure {closure_s:.2f}s, "
        f"full .modinfo scan {scan_s:.2f}s"
    )
    print("closure:", " ".join(m.name for m in mods))
    print("built in:", " ".join(n for n in manifest.modules if n in tree.builtin))

    got = {m.name for m in mods}
    for name in manifest.modules:
        assert name in got or name in tree.builtin, name
    assert tree.vmlinuz.is_file()
    position = {m.name: i for i, m in enumerate(mods)}
    for m in mods:
        for dep in m.depends:
            assert position[dep] < position[m.name], (dep, m.name)
    out = FakeTree()
    kernel.write_modules(mods, tree.kver, out, builtin=tree.builtin_paths)
    for m in mods:
        assert out.files[f"lib/modules/{tree.kver}/{m.relpath}"][0][:4] == b"\x7fELF"
    assert (
        "alias virtio:d00000001v* virtio_net\n"
        in out.files[f"lib/modules/{tree.kver}/modules.alias"][0].decode()
    )


def test_cpio_tree_is_a_file_sink(tree: ModuleTree) -> None:
    cpio = pytest.importorskip("imagebuilder.layers.cpio")
    out = cpio.Tree()
    kernel.write_modules(tree.closure(["a"]), KVER, out)
    assert f"lib/modules/{KVER}/kernel/drivers/a.ko.xz" in out
    assert f"lib/modules/{KVER}/modules.dep" in out
