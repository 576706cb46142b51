"""The verified archive: signature, index, resolution, packages, extraction, lock builds."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from imagebuilder.errors import FetchError, IntegrityError, NotFoundError, UserError
from imagebuilder.fetch.deb import extract_deb
from imagebuilder.fetch.debian import Archive, SuiteNotFoundError, deb_path, fetch_locked
from imagebuilder.fetch.debindex import Package, compare_versions, parse_packages
from imagebuilder.fetch.sources import mirror_from_apt

try:  # pytest puts tests/unit itself on sys.path while it is no package
    import archive_fixture as fx
except ImportError:
    from tests.unit import archive_fixture as fx  # type: ignore[no-redef]


# the fixtures this module uses
archive_tree, gpg_key, server = fx.archive_tree, fx.gpg_key, fx.server
fast_retries = fx.fast_retries

Small = tuple[fx.ArchiveTree, fx.ArchiveServer]
INDEX = f"/dists/{fx.SUITE}/main/binary-amd64/Packages.xz"


class NoNetwork(requests.Session):
    """A session that fails the test if anything tries to use the network."""

    def request(self, *args: object, **kwargs: object) -> requests.Response:  # type: ignore
        raise AssertionError(f"unexpected network access: {args}")


def make_archive(server: fx.ArchiveServer, tree: fx.ArchiveTree, cache: Path) -> Archive:
    return Archive(server.url + "/", fx.SUITE, cache, keyring=tree.key.keyring)


def cache_files(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())


# -- Release and index --------------------------------------------------------------------------


def test_release_is_verified_and_parsed(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    release = make_archive(server, archive_tree, tmp_path).release()
    packages_xz = (archive_tree.dists / "main/binary-amd64/Packages.xz").read_bytes()
    assert release["main/binary-amd64/Packages.xz"] == (
        hashlib.sha256(packages_xz).hexdigest(),
        len(packages_xz),
    )
    assert cache_files(tmp_path) == []  # InRelease is not kept


def test_bad_signature(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    text = (archive_tree.dists / "InRelease").read_bytes()
    server.overrides[f"/dists/{fx.SUITE}/InRelease"] = text.replace(b"Label: Test", b"Label: Tost")
    archive = make_archive(server, archive_tree, tmp_path)
    with pytest.raises(IntegrityError, match=f"InRelease of {fx.SUITE} from .* bad signature"):
        archive.release()
    assert not server.requested("Packages.xz")


def test_signature_by_an_unknown_key(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    stranger = fx.make_gpg_key(tmp_path / "stranger")
    try:
        archive = Archive(server.url, fx.SUITE, tmp_path / "cache", keyring=stranger.keyring)
        with pytest.raises(IntegrityError, match="bad signature"):
            archive.release()
    finally:
        stranger.close()


def test_unsigned_release_is_refused(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    server.overrides[f"/dists/{fx.SUITE}/InRelease"] = (archive_tree.dists / "Release").read_bytes()
    with pytest.raises(IntegrityError, match="bad signature"):
        make_archive(server, archive_tree, tmp_path).release()


def test_release_of_another_suite_is_refused(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    server.overrides["/dists/other/InRelease"] = (archive_tree.dists / "InRelease").read_bytes()
    archive = Archive(server.url, "other", tmp_path, keyring=archive_tree.key.keyring)
    with pytest.raises(IntegrityError, match="describes suite 'testsuite'.*not 'other'"):
        archive.release()


def test_codename_is_accepted_as_suite(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    server.overrides["/dists/fakecodename/InRelease"] = (
        archive_tree.dists / "InRelease"
    ).read_bytes()
    archive = Archive(server.url, "fakecodename", tmp_path, keyring=archive_tree.key.keyring)
    assert "main/binary-amd64/Packages" in archive.release()


def test_unknown_suite(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = Archive(server.url, "nosuch", tmp_path, keyring=archive_tree.key.keyring)
    with pytest.raises(SuiteNotFoundError, match="suite 'nosuch' not found on the mirror") as info:
        archive.release()
    assert isinstance(info.value, FetchError) and isinstance(info.value, NotFoundError)


def test_unreachable_mirror(
    archive_tree: fx.ArchiveTree, tmp_path: Path, fast_retries: None
) -> None:
    archive = Archive(fx.closed_port_url(), fx.SUITE, tmp_path, keyring=archive_tree.key.keyring)
    with pytest.raises(FetchError, match="mirror is unreachable"):
        archive.packages()


def test_packages_index(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    packages = make_archive(server, archive_tree, tmp_path).packages()
    assert set(packages) == {
        "hello",
        "libgreet",
        "base-lib",
        "tiny-mta",
        "other-mta",
        "docs-pkg",
        "docs-extra",
        "python3",
    }
    hello = packages["hello"]
    assert hello.depends == (
        ("base-lib",),
        ("libgreet", "libnope"),
        ("libnope2", "mail-agent"),
        ("docs-pkg",),
        ("python3",),
    )
    assert hello.filename == archive_tree.rel("hello", "2.10-1")
    assert hello.sha256 == archive_tree.sha256("hello", "2.10-1")
    assert packages["libgreet"].version == "1:0.9-1"  # the epoch makes it newer than 1.0-1
    assert packages["tiny-mta"].provides == ("mail-agent",)
    assert packages["base-lib"].arch == "all"


def test_index_is_verified(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    good = (archive_tree.dists / "main/binary-amd64/Packages").read_bytes()
    server.overrides[INDEX] = lzma.compress(good.replace(b"Version: 2.10-1", b"Version: 6.66-6"))
    with pytest.raises(IntegrityError, match="Packages.xz did not verify"):
        make_archive(server, archive_tree, tmp_path).packages()
    assert cache_files(tmp_path) == []


def test_index_is_cached_by_digest(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    make_archive(server, archive_tree, tmp_path).packages()
    again = make_archive(server, archive_tree, tmp_path)
    assert "hello" in again.packages()
    assert len(server.requested("Packages.xz")) == 1
    assert len(server.requested("InRelease")) == 2


@pytest.fixture
def small_archive(
    tmp_path: Path, gpg_key: fx.GpgKey, fast_retries: None, request: pytest.FixtureRequest
) -> Iterator[Small]:
    """A one-package archive built with the options the test passes as its parameter."""
    options = getattr(request, "param", {})
    tree = fx.build_archive(tmp_path / "t", gpg_key, [fx.DebSpec("solo", "1")], **options)
    srv = fx.ArchiveServer(tree.root).start()
    yield tree, srv
    srv.stop()


def with_archive(options: dict[str, object]) -> pytest.MarkDecorator:
    """Give the test a ``small_archive`` built with ``options`` (see ``fx.build_archive``)."""
    return pytest.mark.parametrize("small_archive", [options], indirect=True)


def small(tree: fx.ArchiveTree, srv: fx.ArchiveServer, cache: Path) -> Archive:
    return Archive(srv.url, fx.SUITE, cache, keyring=tree.key.keyring)


@with_archive({"compressions": ("gz",)})
def test_gz_index_when_there_is_no_xz(small_archive: Small, tmp_path: Path) -> None:
    tree, srv = small_archive
    assert list(small(tree, srv, tmp_path / "cache").packages()) == ["solo"]
    assert srv.requested("Packages.gz") and not srv.requested("Packages.xz")


@with_archive({"by_hash": True})
def test_index_by_hash(small_archive: Small, tmp_path: Path) -> None:
    tree, srv = small_archive
    assert list(small(tree, srv, tmp_path / "cache").packages()) == ["solo"]
    assert [r.path.split("/")[-2] for r in srv.requests[1:]] == ["SHA256"]


@with_archive({"by_hash": True})
def test_index_by_hash_falls_back_to_the_name(small_archive: Small, tmp_path: Path) -> None:
    tree, srv = small_archive
    shutil.rmtree(tree.dists / "main/binary-amd64/by-hash")
    assert list(small(tree, srv, tmp_path / "cache").packages()) == ["solo"]
    assert [r.path.split("/")[-1] for r in srv.requests[1:]][-1] == "Packages.xz"


@with_archive({"release_fields": ("Valid-Until: Sat, 01 Nov 2025 00:00:00 UTC",)})
def test_expired_release(small_archive: Small, tmp_path: Path) -> None:
    tree, srv = small_archive
    with pytest.raises(IntegrityError, match="expired on Sat, 01 Nov 2025"):
        small(tree, srv, tmp_path / "cache").release()


def test_parser_handles_odd_stanzas() -> None:
    data = (
        b"Package: a\nVersion: 1\nArchitecture: amd64\nFilename: pool/a.deb\nSize: 3\n"
        b"SHA256: " + b"1" * 64 + b"\n"
        b"Depends: libc6:any (>= 2.36) [amd64] <!nocheck>, b (<< 2) | c:amd64,  d \n\n"
        b"\n\nPackage: no-filename\nVersion: 1\n\n"
    )
    packages = parse_packages(data, {})
    assert list(packages) == ["a"]
    assert packages["a"].depends == (("libc6",), ("b", "c"), ("d",))


@pytest.mark.parametrize(
    "older, newer",
    [
        ("1.0", "1.0-1"),
        ("1.0~rc1", "1.0"),
        ("1.0-1", "1:0.1"),
        ("1.2", "1.10"),
        ("1.0a", "1.0b"),
        ("1.0", "1.0a"),
        ("1.0-1", "1.0-1+b1"),
        ("2.36-9", "2.36-10"),
        ("1.0~~", "1.0~"),
        ("6.12.107-1", "6.12.117-1"),
    ],
)
def test_version_order(older: str, newer: str) -> None:
    assert compare_versions(older, newer) < 0
    assert compare_versions(newer, older) > 0
    assert compare_versions(newer, newer) == 0


# -- resolution ---------------------------------------------------------------------------------


def test_resolve_follows_depends(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    names = [p.name for p in archive.resolve(["hello"])]
    # libgreet, not the missing libnope; other-mta: the first provider of mail-agent by name
    assert names == [
        "base-lib",
        "docs-extra",
        "docs-pkg",
        "hello",
        "libgreet",
        "other-mta",
        "python3",
    ]


def test_resolve_with_follow_filter(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    result = archive.resolve(["hello"], follow=lambda p: not p.name.startswith("docs-"))
    assert [p.name for p in result] == ["base-lib", "hello", "libgreet", "other-mta", "python3"]


def test_resolve_prefers_what_is_already_chosen(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    names = [p.name for p in archive.resolve(["tiny-mta", "hello"])]
    assert "tiny-mta" in names and "other-mta" not in names


def test_resolve_virtual_root_and_determinism(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    assert [p.name for p in archive.resolve(["mail-agent"])] == ["other-mta"]
    assert archive.providers("mail-agent") == ["other-mta", "tiny-mta"]
    assert archive.resolve(["hello", "python3"]) == archive.resolve(["python3", "hello"])


def test_resolve_unknown_root(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    with pytest.raises(
        NotFoundError, match=f"package 'nosuch' not found in Debian {fx.SUITE} \\(main, amd64\\)"
    ):
        archive.resolve(["hello", "nosuch"])


# -- packages -----------------------------------------------------------------------------------


def test_fetch_and_extract(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path / "cache")
    root = tmp_path / "root"
    for pkg in archive.resolve(["hello"]):
        deb = archive.fetch(pkg)
        assert deb == deb_path(tmp_path / "cache", pkg.sha256)
        extract_deb(deb, root)
    hello = root / "usr/bin/hello"
    assert hello.read_bytes() == b"#!/bin/sh\necho hello\n"
    assert stat.S_IMODE(hello.stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "etc/hello.conf").stat().st_mode) == 0o600
    assert os.readlink(root / "usr/bin/hi") == "/usr/bin/hello"  # absolute symlinks are kept
    assert os.readlink(root / "usr/bin/hey") == "hello"
    assert (root / "usr/bin/hello-again").stat().st_ino == hello.stat().st_ino
    assert (root / "usr/lib/libgreet.so.1").read_bytes() == b"\x7fELF new"  # zstd data.tar
    assert (root / "usr/sbin/other").exists()


def test_fetch_reuses_the_cache_without_network(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    pkg = archive.packages()["hello"]
    first = archive.fetch(pkg)
    archive.session = NoNetwork()
    assert archive.fetch(pkg) == first
    assert len(server.requested(".deb")) == 1


def test_truncated_deb_is_refused(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    pkg = archive.packages()["hello"]
    server.overrides["/" + pkg.filename] = archive_tree.debs[("hello", "2.10-1")].read_bytes()[:-9]
    with pytest.raises(IntegrityError, match=f"{pkg.sha256}"):
        archive.fetch(pkg)
    assert not (tmp_path / "debs").exists() or not any((tmp_path / "debs").iterdir())


def test_missing_deb(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    pkg = archive.packages()["hello"]
    gone = Package(
        pkg.name,
        pkg.version,
        pkg.arch,
        "pool/main/h/hello/gone.deb",
        pkg.sha256,
        pkg.size,
        pkg.depends,
        pkg.provides,
    )
    with pytest.raises(FetchError, match=r"not found on the mirror \(HTTP 404\)"):
        archive.fetch(gone)


def test_fetch_locked(
    server: fx.ArchiveServer, archive_tree: fx.ArchiveTree, tmp_path: Path
) -> None:
    archive = make_archive(server, archive_tree, tmp_path)
    entry = archive.packages()["hello"].lock_entry()
    requests_before = len(server.requests)
    cold = fetch_locked(tmp_path, server.url, entry)
    assert hashlib.sha256(cold.read_bytes()).hexdigest() == entry.sha256
    assert len(server.requests) == requests_before + 1  # the .deb only: no InRelease, no index
    assert fetch_locked(tmp_path, server.url, entry, NoNetwork()) == cold
    cold.write_bytes(b"damaged")
    assert fetch_locked(tmp_path, server.url, entry).read_bytes() != b"damaged"


# -- extraction ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "zstd", "gzip", "none"])
def test_extract_compressions(tmp_path: Path, compression: str) -> None:
    spec = fx.DebSpec(
        "c",
        files={"usr/share/c/data": b"x" * 100000, "usr/share/c/empty": b""},
        symlinks={"usr/share/c/link": "/etc/c"},
        compression=compression,
    )
    deb = fx.build_deb(tmp_path, spec)
    extract_deb(deb, tmp_path / "root")
    assert (tmp_path / "root/usr/share/c/data").read_bytes() == b"x" * 100000
    assert (tmp_path / "root/usr/share/c/empty").read_bytes() == b""
    assert os.readlink(tmp_path / "root/usr/share/c/link") == "/etc/c"


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize("name", ["/etc/evil", "./../evil", "usr/../../evil"])
def test_extract_refuses_escaping_members(tmp_path: Path, name: str) -> None:
    deb = fx.handmade_deb(tmp_path / "bad.deb", [_info(name)], {name: b"evil"})
    with pytest.raises(FetchError, match="refusing member"):
        extract_deb(deb, tmp_path / "root")
    assert not (tmp_path / "evil").exists()


def test_extract_refuses_hardlink_escape(tmp_path: Path) -> None:
    deb = fx.handmade_deb(
        tmp_path / "bad.deb", [_info("./x", tarfile.LNKTYPE, linkname="../../etc/passwd")]
    )
    with pytest.raises(FetchError, match="refusing member"):
        extract_deb(deb, tmp_path / "root")


def test_extract_stays_inside_through_symlinks(tmp_path: Path) -> None:
    """A symlink already in the tree is followed as inside a chroot of the destination."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "usr/bin").mkdir(parents=True)
    os.symlink(str(outside), root / "abs")  # absolute: means root/<outside> here
    os.symlink("../../../../../..", root / "up")  # climbs: stops at the root
    entries = [
        _info("./abs/a"),
        _info("./up/b"),
        _info("./lnk", tarfile.SYMTYPE, linkname="/"),
        _info("./lnk/usr/bin/c"),
    ]
    deb = fx.handmade_deb(
        tmp_path / "p.deb", entries, {"./abs/a": b"a", "./up/b": b"b", "./lnk/usr/bin/c": b"c"}
    )
    extract_deb(deb, root)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "a").read_bytes() == b"a"
    assert (root / "b").read_bytes() == b"b"
    assert (root / "usr/bin/c").read_bytes() == b"c"


def test_extract_skips_devices_and_keeps_dir_modes(tmp_path: Path) -> None:
    entries = [
        _info("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        _info("./fifo", tarfile.FIFOTYPE),
        _info("./ro", tarfile.DIRTYPE, mode=0o555),
        _info("./ro/file", mode=0o4755),
    ]
    deb = fx.handmade_deb(tmp_path / "p.deb", entries, {"./ro/file": b"suid"})
    root = tmp_path / "root"
    extract_deb(deb, root)
    assert not (root / "dev/null").exists() and not (root / "fifo").exists()
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "ro/file").stat().st_mode) == 0o4755


def test_extract_replaces_files_and_links(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("old")
    os.link(root / "f", root / "g")
    deb = fx.handmade_deb(tmp_path / "p.deb", [_info("./f")], {"./f": b"new"})
    extract_deb(deb, root)
    assert (root / "f").read_text() == "new" and (root / "g").read_text() == "old"


def test_extract_damaged_package(tmp_path: Path) -> None:
    deb = fx.build_deb(tmp_path, fx.DebSpec("d", files={"usr/x": os.urandom(50000)}))
    data = deb.read_bytes()
    (tmp_path / "cut.deb").write_bytes(data[: len(data) - 2000])
    with pytest.raises(FetchError, match="damaged"):
        extract_deb(tmp_path / "cut.deb", tmp_path / "root")
    (tmp_path / "not.deb").write_bytes(b"hello")
    with pytest.raises(FetchError, match="not a Debian package"):
        extract_deb(tmp_path / "not.deb", tmp_path / "root")


# -- the real archive ---------------------------------------------------------------------------


@pytest.mark.network
def test_real_archive(tmp_path: Path) -> None:
    try:
        mirror = mirror_from_apt()
    except UserError:
        pytest.skip("no Debian mirror in the host's apt configuration")
    archive = Archive(mirror, "trixie", tmp_path)
    release = archive.release()  # verified with the real Debian archive keyring
    assert "main/binary-amd64/Packages.xz" in release
    archive.packages()  # download once
    warm = Archive(mirror, "trixie", tmp_path)
    warm.release()
    packages = warm.packages()  # parsed from the cache (bench/build_boot.py times this path)
    assert len(packages) > 50000
    names = {p.name for p in warm.resolve(["busybox-static", "linux-image-cloud-amd64"])}
    assert {"busybox-static", "linux-image-cloud-amd64"} <= names
    assert any(name.startswith("linux-image-6.") for name in names)
