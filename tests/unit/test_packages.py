"""packages.resolve: a matching lock file and a warm cache build with no network at all; a lock
that no longer matches the config is not trusted.

The mirror in every config is a closed loopback port, so any attempt to use the network fails
loudly with FetchError: where a test expects none, its success proves none was made.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagebuilder.build.packages import Resolution, jdk_package, resolve, roots
from imagebuilder.config.parse import Config, load
from imagebuilder.errors import FetchError
from imagebuilder.fetch import http
from imagebuilder.fetch.debian import deb_path
from imagebuilder.layers.hardware import Selection, select
from imagebuilder.layers.kernel import load_manifest

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None,
                                reason="dpkg-deb not installed (apt-get install dpkg)")

KERNEL_IMAGE = "linux-image-6.12.0-1-cloud-amd64"
#: What each part resolved to: its roots plus the dependencies followed.
SETS = {
    "kernel": ["linux-image-cloud-amd64", KERNEL_IMAGE],
    "base": ["busybox-static"],
    "jvm": ["libc-bin", "libc6", "libgcc-s1", "libstdc++6", "openjdk-21-jdk-headless",
            "openjdk-21-jre-headless", "zlib1g"],
    "packages": ["fontconfig-config", "fonts-dejavu-core"],
}


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    filename: str
    path: Path
    sha256: str
    size: int


def _build_deb(work: Path, name: str) -> Deb:
    version = "1.0-1"
    tree = work / name
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        f"Maintainer: Test <t@example.invalid>\nDescription: test package {name}\n")
    (tree / f"usr/share/doc/{name}").mkdir(parents=True)
    (tree / f"usr/share/doc/{name}/README").write_text(f"{name}\n")
    out = work / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(out)],
                   check=True, capture_output=True)
    data = out.read_bytes()
    return Deb(name, version, f"pool/main/{name[0]}/{name}/{out.name}", out,
               hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Deb]:
    work = tmp_path_factory.mktemp("debs")
    return {name: _build_deb(work, name) for names in SETS.values() for name in names}


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mirror(monkeypatch: pytest.MonkeyPatch) -> str:
    """A mirror URL nothing listens on; retries without sleeping."""
    monkeypatch.setattr(http, "RETRY_BASE_DELAY", 0.0)
    return f"http://127.0.0.1:{_closed_port()}/debian"


@pytest.fixture
def drivers() -> Selection:
    return select(load_manifest("debian-cloud"), [], [])


def _config(root: Path, mirror: str, *, jvm: int = 21, packages: bool = True,
            suite: str = "trixie") -> Config:
    (root / "app.jar").write_bytes(b"not used here")
    extra = 'packages = ["fonts-dejavu-core"]' if packages else ""
    (root / "imagebuilder.toml").write_text(textwrap.dedent(f"""\
        [image]
        name = "hello"
        version = "1.0.0"

        [app]
        path = "app.jar"
        {extra}

        [jvm]
        version = {jvm}

        [system]
        suite = "{suite}"
        mirror = "{mirror}"
        """))
    return load(root)


def _toml_list(names: list[str]) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"


def _write_lock(path: Path, debs: dict[str, Deb], lock_roots: dict[str, list[str]],
                sets: dict[str, list[str]] = SETS, suite: str = "trixie") -> None:
    lines = ["# imagebuilder lock file", "version = 1", f'suite = "{suite}"', "", "[roots]"]
    lines += [f'"{part}" = {_toml_list(names)}' for part, names in sorted(lock_roots.items())]
    if sets:
        lines += ["", "[sets]"]
        lines += [f'"{part}" = {_toml_list(names)}' for part, names in sorted(sets.items())]
    for deb in sorted(debs.values(), key=lambda d: d.name):
        lines += ["", "[[package]]", f'name = "{deb.name}"', f'version = "{deb.version}"',
                  f'filename = "{deb.filename}"', f'sha256 = "{deb.sha256}"', f"size = {deb.size}"]
    path.write_text("\n".join(lines) + "\n")


def _seed_cache(cache: Path, debs: dict[str, Deb]) -> None:
    for deb in debs.values():
        dest = deb_path(cache, deb.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb.path, dest)


@pytest.fixture
def locked(tmp_path: Path, debs: dict[str, Deb], mirror: str, drivers: Selection
           ) -> tuple[Config, Path]:
    """A config whose lock matches it, and a cache holding every locked .deb."""
    cfg = _config(tmp_path, mirror)
    _write_lock(cfg.lock_path, debs, roots(cfg, drivers))
    cache = tmp_path / "cache"
    _seed_cache(cache, debs)
    return cfg, cache


def test_roots_follow_the_config(tmp_path: Path, mirror: str, drivers: Selection) -> None:
    cfg = _config(tmp_path, mirror, jvm=25)
    assert roots(cfg, drivers) == {
        "kernel": ["linux-image-cloud-amd64"],
        "base": ["busybox-static"],
        "jvm": [jdk_package(25), "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libc-bin"],
        "packages": ["fonts-dejavu-core"],
    }
    assert "packages" not in roots(_config(tmp_path, mirror, packages=False), drivers)
    assert "firmware" not in roots(cfg, select(load_manifest("debian"), ["virtual"], []))


def test_metal_adds_its_firmware_packages(tmp_path: Path, mirror: str) -> None:
    cfg = _config(tmp_path, mirror)
    parts = roots(cfg, select(load_manifest("debian"), ["virtual", "metal"], ["igb"]))
    assert parts["kernel"] == ["linux-image-amd64"]
    assert "firmware-bnx2x" in parts["firmware"] and "firmware-realtek" in parts["firmware"]


def test_matching_lock_resolves_without_the_archive(locked: tuple[Config, Path],
                                                    drivers: Selection) -> None:
    cfg, cache = locked
    before = cfg.lock_path.read_bytes()
    resolution = resolve(cfg, drivers, cache)
    assert isinstance(resolution, Resolution)
    assert resolution.from_lock
    assert {part: [e.name for e in entries] for part, entries in resolution.parts.items()} == SETS
    assert cfg.lock_path.read_bytes() == before  # read, not rewritten


def test_debs_come_from_the_cache_without_network(locked: tuple[Config, Path],
                                                  debs: dict[str, Deb],
                                                  drivers: Selection) -> None:
    cfg, cache = locked
    resolution = resolve(cfg, drivers, cache)
    for part, names in SETS.items():
        paths = resolution.debs(part)
        assert paths == [deb_path(cache, debs[n].sha256) for n in names]
        for name, path in zip(names, paths, strict=True):
            assert path.read_bytes() == debs[name].path.read_bytes()
        assert resolution.key(part) == sorted(debs[n].sha256 for n in names)
    assert resolution.debs("no-such-part") == []


def test_a_cache_miss_does_go_to_the_mirror(locked: tuple[Config, Path], debs: dict[str, Deb],
                                            drivers: Selection, mirror: str) -> None:
    # The control experiment for the test above: without the cached file, the mirror (a closed
    # port) is asked, and fails.
    cfg, cache = locked
    deb_path(cache, debs["busybox-static"].sha256).unlink()
    resolution = resolve(cfg, drivers, cache)
    with pytest.raises(FetchError) as info:
        resolution.debs("base")
    assert f"{mirror}/{debs['busybox-static'].filename}" in str(info.value)
    assert not deb_path(cache, debs["busybox-static"].sha256).exists()
    assert resolution.debs("kernel")  # the other parts are still served from the cache


def test_a_corrupted_cached_deb_is_not_used(locked: tuple[Config, Path], debs: dict[str, Deb],
                                            drivers: Selection) -> None:
    cfg, cache = locked
    damaged = deb_path(cache, debs["libc6"].sha256)
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    resolution = resolve(cfg, drivers, cache)
    with pytest.raises(FetchError):
        resolution.debs("jvm")
    # Never handed out, and not left where a later build would find it again.
    assert not damaged.exists() or damaged.read_bytes() == debs["libc6"].path.read_bytes()


def test_a_corrupted_cached_deb_is_fetched_again_from_the_mirror(
        locked: tuple[Config, Path], debs: dict[str, Deb], drivers: Selection,
        mirror: str) -> None:
    cfg, cache = locked
    deb_path(cache, debs["libc6"].sha256).write_bytes(b"garbage")
    resolution = resolve(cfg, drivers, cache)
    with pytest.raises(FetchError) as info:
        resolution.debs("jvm")
    assert f"{mirror}/{debs['libc6'].filename}" in str(info.value)


def _assert_tries_the_archive(cfg: Config, cache: Path, drivers: Selection, mirror: str,
                              update: bool = False) -> None:
    before = cfg.lock_path.read_bytes()
    with pytest.raises(FetchError) as info:
        resolve(cfg, drivers, cache, update=update)
    assert str(info.value).startswith(
        f"the mirror is unreachable: {mirror}/dists/{cfg.system.suite}/InRelease failed after ")
    assert cfg.lock_path.read_bytes() == before  # a failed resolution leaves the lock alone


def test_lock_for_another_jvm_version_is_not_used(tmp_path: Path, debs: dict[str, Deb],
                                                  mirror: str, drivers: Selection) -> None:
    old = _config(tmp_path, mirror, jvm=21)
    _write_lock(old.lock_path, debs, roots(old, drivers))
    cache = tmp_path / "cache"
    _seed_cache(cache, debs)
    assert resolve(old, drivers, cache).from_lock  # it did match the old config
    new = _config(tmp_path, mirror, jvm=25)
    _assert_tries_the_archive(new, cache, drivers, mirror)


def test_lock_without_the_apps_packages_is_not_used(tmp_path: Path, debs: dict[str, Deb],
                                                    mirror: str, drivers: Selection
                                                    ) -> None:
    cfg = _config(tmp_path, mirror, packages=True)
    lock_roots = roots(_config(tmp_path, mirror, packages=False), drivers)
    _write_lock(cfg.lock_path, debs, lock_roots)
    _assert_tries_the_archive(cfg, tmp_path / "cache", drivers, mirror)


def test_lock_for_another_suite_is_not_used(tmp_path: Path, debs: dict[str, Deb], mirror: str,
                                            drivers: Selection) -> None:
    cfg = _config(tmp_path, mirror, suite="forky")
    _write_lock(cfg.lock_path, debs, roots(cfg, drivers), suite="trixie")
    _assert_tries_the_archive(cfg, tmp_path / "cache", drivers, mirror)


def test_lock_without_sets_is_not_used(tmp_path: Path, debs: dict[str, Deb], mirror: str,
                                       drivers: Selection) -> None:
    cfg = _config(tmp_path, mirror)
    _write_lock(cfg.lock_path, debs, roots(cfg, drivers), sets={})
    _assert_tries_the_archive(cfg, tmp_path / "cache", drivers, mirror)


def test_update_ignores_a_matching_lock(locked: tuple[Config, Path], drivers: Selection,
                                        mirror: str) -> None:
    cfg, cache = locked
    _assert_tries_the_archive(cfg, cache, drivers, mirror, update=True)


def test_no_lock_needs_the_archive_and_writes_none(tmp_path: Path, mirror: str,
                                                   drivers: Selection) -> None:
    cfg = _config(tmp_path, mirror)
    with pytest.raises(FetchError, match="the mirror is unreachable"):
        resolve(cfg, drivers, tmp_path / "cache")
    assert not cfg.lock_path.exists()


def test_command_line_mirror_wins(tmp_path: Path, mirror: str, drivers: Selection) -> None:
    cfg = _config(tmp_path, "http://127.0.0.1:1/unused")
    with pytest.raises(FetchError) as info:
        resolve(cfg, drivers, tmp_path / "cache", mirror=mirror)
    assert f"{mirror}/dists/trixie/InRelease" in str(info.value)


def test_a_locked_package_gone_from_the_mirror_says_to_delete_the_lock(
        locked: tuple[Config, Path], debs: dict[str, Deb], drivers: Selection,
        tmp_path: Path) -> None:
    """Debian replaces old versions when a suite is updated: a stale lock must say what to do."""
    import functools
    import http.server
    import threading

    cfg, cache = locked
    deb_path(cache, debs["busybox-static"].sha256).unlink()
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(empty))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        resolution = resolve(cfg, drivers, cache,
                             mirror=f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(FetchError) as info:
            resolution.debs("base")
    finally:
        server.shutdown()
        server.server_close()
    message = str(info.value)
    assert f"busybox-static {debs['busybox-static'].version}, pinned by {cfg.lock_path}" in message
    assert "is no longer on the mirror" in message and "delete the lock file" in message
