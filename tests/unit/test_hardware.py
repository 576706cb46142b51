"""Tests for imagebuilder.layers.hardware: the shipped driver sets, selection, unknown names,
firmware."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagebuilder.errors import ConfigError
from imagebuilder.layers import hardware
from imagebuilder.layers.kernel import Module, ModuleTree, load_manifest


def _tree(tmp_path: Path, names: list[str], builtin: list[str]) -> ModuleTree:
    files = {n: (tmp_path / f"{n}.ko.xz", f"kernel/{n}.ko") for n in names}
    return ModuleTree(tmp_path, tmp_path, "6.12.0-test", tmp_path / "vmlinuz", files,
                      tuple(f"kernel/{b}.ko" for b in builtin))


def test_shipped_sets_cover_the_issue() -> None:
    assert hardware.driver_sets() == ["metal", "virtual"]
    virtual = hardware.load_set("virtual", "debian")
    for module in ("virtio_net", "ena", "gve", "hv_netvsc", "mana", "tulip",
                   "vmxnet3", "vmw_pvscsi", "e1000", "e1000e", "pcnet32", "8139cp", "ahci"):
        assert module in virtual.modules, module
    assert virtual.firmware == ()
    assert "mlx5_core" not in virtual.modules  # 800 KB; Azure works through netvsc without it
    metal = hardware.load_set("metal", "debian")
    for module in ("igb", "igc", "ixgbe", "i40e", "ice", "tg3", "bnx2x", "bnxt_en", "r8169",
                   "megaraid_sas", "mpt3sas", "smartpqi", "hpsa", "nvme", "xhci_pci",
                   "usb_storage"):
        assert module in metal.modules, module
    assert "firmware-realtek" in metal.firmware


def test_selection_orders_kernel_sets_then_modules() -> None:
    selection = hardware.select(load_manifest("debian"), ["metal", "virtual", "metal"],
                                ["my-driver"])
    assert [s.name for s in selection.sets] == ["metal", "virtual"]
    names = selection.modules
    kernel_modules = load_manifest("debian").modules
    assert names[:len(kernel_modules)] == kernel_modules
    assert names[-1] == "my_driver" and len(names) == len(set(names))
    assert selection.firmware_packages == hardware.load_set("metal", "debian").firmware
    assert hardware.select(load_manifest("debian"), [], []).modules == \
        load_manifest("debian").modules


def test_unknown_set_names_the_kernel_and_closest() -> None:
    with pytest.raises(ConfigError, match=r"^kernel 'debian' has no driver set 'metl'"
                                          r" \(closest: metal\)$"):
        hardware.select(load_manifest("debian"), ["metl"], [])


def test_present_modules(tmp_path: Path) -> None:
    tree = _tree(tmp_path, ["e1000e", "igb", "sd_mod", "isofs", "erofs", "overlay"],
                 builtin=["button", "evdev"])
    selection = hardware.select(load_manifest("debian"), [], ["igb"])
    present, skipped = hardware.present_modules(selection, tree, "6.12.0-test")
    assert present == ("sd_mod", "isofs", "erofs", "overlay", "button", "evdev", "igb")
    assert skipped == ["sr_mod"]


def test_unknown_module_names_the_kernel_and_closest(tmp_path: Path) -> None:
    tree = _tree(tmp_path, ["e1000", "e1000e", "igb"], builtin=[])
    selection = hardware.select(load_manifest("debian"), [], ["e1000x"])
    with pytest.raises(ConfigError, match=r"^system.modules: kernel 'debian' \(6.12.0-test\) has"
                                          r" no module 'e1000x' \(closest: e1000e?, e1000e?\)$"):
        hardware.present_modules(selection, tree, "6.12.0-test")


def _module(name: str, firmware: tuple[str, ...]) -> Module:
    return Module(name, Path(f"/x/{name}.ko.xz"), f"kernel/{name}.ko", (), (), (), firmware)


def test_firmware_files_found_followed_and_missing(tmp_path: Path) -> None:
    root = tmp_path / "fw"
    rtl = root / "usr/lib/firmware/rtl_nic"
    rtl.mkdir(parents=True)
    (rtl / "rtl8168h-2.fw").write_bytes(b"fw")
    (rtl / "rtl8168h-1.fw").symlink_to("rtl8168h-2.fw")
    (root / "usr/lib/firmware/tigon").mkdir()
    (root / "usr/lib/firmware/tigon/tg3.bin.zst").write_bytes(b"zst")
    (root / "usr/lib/firmware/escape.fw").symlink_to("../../../../outside")
    (tmp_path / "outside").write_bytes(b"no")
    mods = [_module("r8169", ("rtl_nic/rtl8168h-2.fw", "rtl_nic/rtl8168h-1.fw")),
            _module("tg3", ("tigon/tg3.bin",)),
            _module("bnx2x", ("bnx2x/bnx2x-e2-7.13.21.0.fw", "escape.fw", "../etc/passwd")),
            _module("e1000e", ())]
    found, missing = hardware.firmware_files(mods, [root])
    assert found == {"rtl_nic/rtl8168h-2.fw": rtl / "rtl8168h-2.fw",
                     "rtl_nic/rtl8168h-1.fw": rtl / "rtl8168h-2.fw",
                     "tigon/tg3.bin.zst": root / "usr/lib/firmware/tigon/tg3.bin.zst"}
    assert missing == {"bnx2x": ["bnx2x/bnx2x-e2-7.13.21.0.fw", "escape.fw", "../etc/passwd"]}
    [line] = hardware.missing_firmware_message(missing, "debian")
    assert line == ("WARNING: kernel 'debian': firmware of module bnx2x is missing from the"
                    " firmware packages: bnx2x/bnx2x-e2-7.13.21.0.fw, escape.fw, ../etc/passwd;"
                    " a card that needs it may not work")


def test_flash_and_serve_warn_without_metal(capsys: pytest.CaptureFixture[str]) -> None:
    from imagebuilder.commands.baremetal import warn_without_metal

    warn_without_metal({"name": "hello", "hardware": ["virtual", "metal"]})
    assert capsys.readouterr().err == ""
    warn_without_metal({"name": "hello", "hardware": ["virtual"]})
    assert capsys.readouterr().err == (
        "WARNING: hello was built without the 'metal' driver set: a physical server may have no"
        ' driver for its network card; add [system] hardware = ["virtual", "metal"] to'
        " imagebuilder.toml and rebuild\n")
    warn_without_metal({"name": "old"})  # built before driver sets existed
    assert 'hardware = ["metal"]' in capsys.readouterr().err
