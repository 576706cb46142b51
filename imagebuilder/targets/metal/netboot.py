"""Network boot: serve an image's kernel, initrd layers and an iPXE script over HTTP.

A server whose firmware runs iPXE (built in, chain-loaded from PXE, or QEMU's network ROMs)
fetches ``/boot.ipxe`` from this server and follows it: ``kernel`` fetches ``/vmlinuz`` with
the image's command line, one ``initrd`` line per layer fetches ``/initrd/<n>.img`` in unpack
order (the kernel unpacks concatenated initramfs archives in turn, so the layers stay separate
blobs), and ``boot`` starts the kernel. The script's URLs are absolute, built from the ``Host``
header of the request for it, so they name this server as the client reached it (behind NAT,
by name or by address). A ``Host`` header that is not ``host[:port]`` (a DNS name, an IPv4
address or a bracketed IPv6 address) is never pasted into the script: the address the client
connected to is used instead.

The environment (``--env``) travels as one more initrd, ``/initrd/env.img``: an uncompressed
newc cpio holding ``/etc/imagebuilder/env`` (mode 0600, the config drive's ``KEY=VALUE``
format), unpacked last. The init reads it when it finds no config drive. The image's layers
and digest are unchanged; only the script and the extra archive depend on the environment.
Since it holds the environment's secrets, only the clients in ``allow`` (``--allow CIDR``) get
it; others get 403. A server with an environment on an address other than loopback must name
them: :func:`check_allow` refuses to start it otherwise.

The source is a stored image or a ``kernel-initrd`` export directory (``vmlinuz``,
``initrd.img``, ``cmdline``). The server is the standard library's threading HTTP server:
files are sent with ``sendfile``; GET and HEAD only; nothing else is reachable.
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from ...disk.boot import BootSource
from ...errors import HostError, UserError
from ...layers.cmdline import SPECIAL, check_cmdline
from ...text import printable

if TYPE_CHECKING:
    from ...store.layout import Image, Store

ENV_PATH = "etc/imagebuilder/env"
"""Where the environment layer puts the variables (read by the init)."""
_LISTEN_RE = re.compile(r"^(?:\[(?P<ip6>[0-9a-fA-F:]+)\]|(?P<ip>[0-9.]+)):(?P<port>\d{1,5})$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(
    rf"(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d{{1,5}}))?")
ENV_ROUTE = "/initrd/env.img"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class NetbootSource:
    """What a network boot fetches: the boot source's kernel, its initrds in order and its
    command line, and the environment's initrd when there is one."""

    boot: BootSource
    title: str = "imagebuilder"
    env_layer: bytes | None = field(default=None, repr=False)

    @classmethod
    def of_image(cls, store: Store, image: Image) -> NetbootSource:
        boot = BootSource.of_image(store, image)
        boot.verify()  # served with sendfile, which cannot hash: checked once before serving
        return cls(boot, title=image.ref)

    @classmethod
    def of_directory(cls, path: Path) -> NetbootSource:
        """A ``kernel-initrd`` export directory."""
        path = Path(path)
        missing = [n for n in ("vmlinuz", "initrd.img") if not (path / n).is_file()]
        if missing:
            raise UserError(f"{path} is not a kernel-initrd export (no {', '.join(missing)}): "
                            "write one with 'imagebuilder export REF --format kernel-initrd'")
        cmdline_file = path / "cmdline"
        cmdline = cmdline_file.read_text().strip() if cmdline_file.exists() else "console=ttyS0"
        try:
            check_cmdline(cmdline)
        except UserError as e:
            raise UserError(f"{printable(str(cmdline_file))}: {e}") from None
        boot = BootSource(path / "vmlinuz", (("initrd", path / "initrd.img"),), cmdline, ())
        return cls(boot, title=_title(path))

    def with_env(self, env_name: str, env_vars: Mapping[str, str]) -> NetbootSource:
        return dataclasses.replace(self, env_layer=env_layer(env_name, env_vars))


def _title(path: Path) -> str:
    """The export directory's name, which the iPXE script echoes: plain printable ASCII, as a
    command line must be (a newline would start an iPXE command, ``${...}`` would expand)."""
    bad = [c for c in path.name if not " " <= c <= "~" or c in SPECIAL]
    if bad:
        raise UserError(f"{printable(str(path))}: the directory's name has {bad[0]!r}, which "
                        "cannot go into an iPXE script; rename it (printable ASCII without "
                        f"{' '.join(sorted(SPECIAL))})")
    return path.name


def env_layer(env_name: str, env_vars: Mapping[str, str]) -> bytes:
    """The environment as an initrd: a newc cpio holding :data:`ENV_PATH`."""
    from ...disk.configdrive import env_file
    from ...layers.cpio import Tree, write_cpio

    tree = Tree()
    tree.add_dir("etc")
    tree.add_dir("etc/imagebuilder")
    tree.add_file(ENV_PATH, data=env_file(env_name, env_vars), mode=0o600)
    out = io.BytesIO()
    write_cpio(tree, out, mtime=0)
    return out.getvalue()


def ipxe_script(source: NetbootSource, base_url: str) -> str:
    """The iPXE script booting ``source`` from ``base_url`` (``http://host:port``)."""
    from ...resources import render

    names = [f"{i}.img" for i in range(1, len(source.boot.initrds) + 1)]
    if source.env_layer is not None:
        names.append("env.img")
    return render("boot.ipxe.j2", title=source.title, base=base_url.rstrip("/"),
                  cmdline=source.boot.cmdline, initrds=names)


def parse_listen(text: str) -> tuple[str, int]:
    """``IP:PORT`` (``[IPv6]:PORT``) to ``(ip, port)``."""
    m = _LISTEN_RE.match(text.strip())
    if not m or not 0 < int(m["port"]) < 65536:
        raise UserError(f"--listen {text}: expected IP:PORT, e.g. 10.0.0.1:8000")
    ip = m["ip6"] or m["ip"]
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UserError(f"--listen {text}: '{ip}' is not an IP address") from None
    return ip, int(m["port"])


def parse_allow(texts: Sequence[str]) -> tuple[Network, ...]:
    """``--allow`` values (``10.0.0.0/24``, ``10.0.0.7``, ``fd00::/64``) to networks."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise UserError(f"--allow {text}: expected an address or CIDR network, e.g."
                            " 10.0.0.0/24") from None
    return tuple(networks)


def check_allow(listen_ip: str, allow: Sequence[Network], has_env: bool) -> tuple[Network, ...]:
    """The networks that may fetch the environment: ``allow``, or loopback when the server
    listens on loopback. Serving an environment elsewhere without ``allow`` is refused."""
    if allow and not has_env:
        raise UserError("--allow names the clients that may fetch the environment: use it with"
                        " --env")
    if allow or not has_env:
        return tuple(allow)
    if ipaddress.ip_address(listen_ip).is_loopback:
        return LOOPBACK
    raise UserError(f"serve --env on {listen_ip} would hand the environment's variables to"
                    " anyone who can reach it: name the clients that may fetch them with"
                    " --allow CIDR (e.g. --allow 10.0.0.0/24), or listen on 127.0.0.1")


def valid_host(header: str | None) -> str | None:
    """``header`` if it is ``host[:port]``, else None."""
    if not header or len(header) > 255:
        return None
    m = _HOST_RE.fullmatch(header)
    if not m or (m["port"] is not None and not 0 < int(m["port"]) < 65536):
        return None
    if header.startswith("["):
        try:
            ipaddress.IPv6Address(header[1:header.index("]")])
        except ValueError:
            return None
    return header


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], routes: Mapping[str, Path | bytes],
                 source: NetbootSource, log: Callable[[str], None] | None,
                 allow: tuple[Network, ...]) -> None:
        import socket

        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.routes = routes
        self.source = source
        self.log = log
        self.allow = allow
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that resets the connection or stops reading is one quiet log line; any
        other error in a handler is a bug and keeps its traceback."""
        error = sys.exc_info()[1]
        if not isinstance(error, _GONE):
            super().handle_error(request, client_address)  # type: ignore[arg-type]
            return
        if self.log is not None:
            client = client_address[0] if isinstance(client_address, tuple) else client_address
            self.log(f"{printable(str(client), backslash=True)} {_gone(error)}")

    def allowed(self, client: str) -> bool:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allow)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "imagebuilder"

    def log_message(self, format: str, *args: object) -> None:
        if self.server.log is not None:  # the request line and path are the client's bytes
            self.server.log(printable(f"{self.client_address[0]} {format % args}", backslash=True))

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/boot.ipxe":
            host = (valid_host(self.headers.get("Host"))
                    or _host_port(self.connection.getsockname()))
            data: Path | bytes = ipxe_script(self.server.source, f"http://{host}").encode()
        elif path == ENV_ROUTE and not self.server.allowed(self.client_address[0]):
            self.send_error(403, "forbidden: this client may not fetch the environment")
            return
        elif path in self.server.routes:
            data = self.server.routes[path]
        else:
            self.send_error(404, "not found")
            return
        size = len(data) if isinstance(data, bytes) else data.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "text/plain" if path.endswith(".ipxe")
                         else "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if not body:
            return
        try:
            if isinstance(data, bytes):
                self.wfile.write(data)
            else:
                self.wfile.flush()
                with open(data, "rb") as f:
                    _send_file(self.connection.fileno(), f, size, self.wfile)
        except _GONE as e:
            self.log_message("%s (%s)", _gone(e), path)


_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
"""What a client that went away mid-request raises in its handler."""


def _gone(error: BaseException) -> str:
    if isinstance(error, BrokenPipeError):
        return "closed the connection before the reply was sent (broken pipe)"
    return "reset the connection"


def _host_port(address: tuple[str | bytes | bytearray, int] | tuple[object, ...]) -> str:
    host, port = address[0], address[1]
    host = host.decode() if isinstance(host, bytes | bytearray) else str(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _send_file(sock: int, f: io.BufferedReader, size: int, fallback: io.BufferedIOBase) -> None:
    offset = 0
    try:
        while offset < size:
            n = os.sendfile(sock, f.fileno(), offset, size - offset)
            if n == 0:
                break
            offset += n
    except OSError:
        if offset:
            raise
        f.seek(0)
        shutil.copyfileobj(f, fallback, 1 << 20)


class NetbootServer:
    """The HTTP server for one source; :meth:`start` runs it on a thread, :meth:`serve_forever`
    in the caller's."""

    def __init__(self, source: NetbootSource, listen: tuple[str, int], *,
                 log: Callable[[str], None] | None = None,
                 allow: Sequence[Network] = ()) -> None:
        allowed = check_allow(listen[0], allow, source.env_layer is not None)
        routes: dict[str, Path | bytes] = {"/vmlinuz": source.boot.kernel}
        for i, (_name, path) in enumerate(source.boot.initrds, 1):
            routes[f"/initrd/{i}.img"] = path
        if source.env_layer is not None:
            routes[ENV_ROUTE] = source.env_layer
        for p in [source.boot.kernel, *(p for _n, p in source.boot.initrds)]:
            if not Path(p).is_file():
                raise HostError(f"{p} is missing: the image store is incomplete")
        try:
            self._server = _Server(listen, routes, source, log, allowed)
        except OSError as e:
            raise UserError(f"cannot listen on {listen[0]}:{listen[1]}: {e.strerror}") from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def env_clients(self) -> tuple[Network, ...]:
        """The networks whose clients may fetch the environment."""
        return self._server.allow

    @property
    def url(self) -> str:
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/boot.ipxe"

    def start(self) -> NetbootServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="imagebuilder-netboot")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> NetbootServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
