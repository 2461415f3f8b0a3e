"""A lean HTTP/1.1 client for the load generator: keep-alive connections over gevent sockets.

One request in flight per connection (no pipelining: a slow answer must not
hold up the next request's send time); each request goes out as one
pre-built byte string; an answer is read as its status line, its headers
(Content-Length, chunked transfer coding, Connection: close) and its body.
Locust's own HTTP clients spend about twice the CPU per request on work a
schedule replay does not need (URL objects, header dictionaries, response
objects), and CPU per request is what decides how many load-generator cores a
high-rate run needs (benchmarks/load_rate.py).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import gevent.socket as gsocket

CRLF2 = b"\r\n\r\n"
READ_SIZE = 65536


class HttpError(Exception):
    """The connection broke or the answer was not HTTP/1.1 the client can read."""


class Endpoint:
    """Where the requests go: host, port and the path prefix of an http:// URL."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load generator speaks plain http://host:port (got {url!r})")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.base = parts.path.rstrip("/")
        self._host_header = f"{self.host}:{self.port}".encode()

    def post(self, path: str, body: bytes, content_type: bytes = b"application/json", headers: bytes = b"") -> bytes:
        """The bytes of a POST of `body` to base + path; `headers`: more header lines, each ending CRLF."""
        return b"".join((b"POST ", (self.base + path).encode(), b" HTTP/1.1\r\nHost: ", self._host_header,
                         b"\r\nContent-Type: ", content_type, b"\r\nContent-Length: ", str(len(body)).encode(),
                         b"\r\n", headers, b"\r\n", body))

    def connect(self, timeout_s: float) -> "Connection":
        return Connection(self, timeout_s)


class Connection:
    """One keep-alive connection; `exchange` sends a request and returns (status code, body)."""

    __slots__ = ("sock", "buf", "open")

    def __init__(self, endpoint: Endpoint, timeout_s: float):
        self.sock = gsocket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.open = True               # False once the server said it closes, or the stream broke

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        try:
            self.sock.sendall(request)
            return self._answer()
        except OSError as exc:
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self.open = False
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(READ_SIZE)
        if not chunk:
            self.close()
            raise HttpError("the server closed the connection")
        self.buf += chunk

    def _answer(self) -> tuple[int, bytes]:
        end = self.buf.find(CRLF2)
        while end < 0:
            self._fill()
            end = self.buf.find(CRLF2)
        head, self.buf = self.buf[:end].lower(), self.buf[end + 4:]
        if not head.startswith(b"http/1."):
            self.close()
            raise HttpError(f"not an HTTP/1.x answer: {head[:40]!r}")
        code = int(head[9:12])
        if b"\r\nconnection: close" in head:
            self.open = False
        length = _header(head, b"\r\ncontent-length:")
        if length is not None:
            n = int(length)
            while len(self.buf) < n:
                self._fill()
            body, self.buf = self.buf[:n], self.buf[n:]
        elif b"chunked" in (_header(head, b"\r\ntransfer-encoding:") or b""):
            body = self._chunked()
        elif code in (204, 304) or code < 200:
            body = b""
        else:                                        # delimited by the close
            try:
                while True:
                    self._fill()
            except HttpError:
                pass
            body, self.buf = self.buf, b""
        if not self.open:
            self.sock.close()
        return code, body

    def _chunked(self) -> bytes:
        parts = []
        while True:
            line_end = self.buf.find(b"\r\n")
            while line_end < 0:
                self._fill()
                line_end = self.buf.find(b"\r\n")
            size = int(self.buf[:line_end].split(b";", 1)[0], 16)
            need = line_end + 2 + size + 2
            while len(self.buf) < need:
                self._fill()
            parts.append(self.buf[line_end + 2:line_end + 2 + size])
            self.buf = self.buf[need:]
            if size == 0:
                return b"".join(parts)


def _header(head: bytes, name: bytes) -> bytes | None:
    at = head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    stop = head.find(b"\r\n", start)
    return head[start:stop if stop >= 0 else len(head)].strip()
