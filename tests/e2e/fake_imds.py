"""A one-request EC2 instance metadata service (IMDSv2) on stdin/stdout, for QEMU's
``guestfwd=...-cmd:`` (one process per guest connection): answers the token PUT and the
user-data GET the init makes, serving the file named by argv[1] as the user-data."""

from __future__ import annotations

import sys
from pathlib import Path

TOKEN = b"token-for-the-test"


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    request = stdin.readline().split()
    headers = {}
    while (line := stdin.readline().strip()) and len(headers) < 100:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    method, path = [*request, b"", b""][:2]
    if method == b"PUT" and path == b"/latest/api/token" \
            and headers.get(b"x-aws-ec2-metadata-token-ttl-seconds"):
        status, body = b"200 OK", TOKEN
    elif method == b"GET" and path == b"/latest/user-data" \
            and headers.get(b"x-aws-ec2-metadata-token") == TOKEN:
        status, body = b"200 OK", Path(sys.argv[1]).read_bytes()
    else:
        status, body = b"401 Unauthorized", b""
    stdout.write(b"HTTP/1.0 " + status + b"\r\nContent-Length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    stdout.flush()


if __name__ == "__main__":
    main()
