"""Message channels between the live processes: length-prefixed msgpack frames over a Unix or TCP socket.

    server, address = await serve("unix:", on_channel)       # a private Unix socket (or "tcp://host:port")
    channel = await connect(address, on_message, on_closed)
    channel.send({"op": "ping"})                             # to the peer's on_message(channel, message)

Ingresses, the scheduler and the workers exchange many small messages (a
request's metadata, a batch, a reply). A frame written straight from the
event loop costs about 2 us of CPU per message for both ends together where
zmq.asyncio costs about 22 (it wakes its I/O thread for every send), and
that difference decides how many requests per second one scheduler process
can carry. A peer that goes away closes its socket, so a dead worker or
ingress is noticed at once (`on_closed`), not at the next ping.

Addresses: `unix:/path/to/socket`, or `tcp://host:port` for a worker on
another host (port 0 binds any free port; the bound address is returned).
`BlockingChannel` is the same framing over a plain socket, for threads.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import tempfile
import threading
from typing import Any, Callable

import msgpack

HEADER = struct.Struct("<I")
MAX_FRAME = 1 << 30


def _split(address: str) -> tuple[str, object]:
    if address.startswith("unix:"):
        return "unix", address[len("unix:"):]
    if address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad address {address!r}; use tcp://host:port or unix:/path")
        return "tcp", (host.strip("[]"), int(port))
    raise ValueError(f"bad address {address!r}; use tcp://host:port or unix:/path")


def remove_socket(address: str) -> None:
    """Remove a Unix socket made by private_socket_path, and its directory (gone already: fine)."""
    path = address[len("unix:"):]
    for remove in (lambda: os.unlink(path), lambda: os.rmdir(os.path.dirname(path))):
        try:
            remove()
        except OSError:
            pass


def private_socket_path(name: str) -> str:
    """A fresh path for a Unix socket in a private directory (short: socket paths are limited to ~100 bytes)."""
    return os.path.join(tempfile.mkdtemp(prefix="harness-"), name)


class Channel(asyncio.Protocol):
    """One end of a connection; `on_message(channel, message)` for each frame, `on_closed(channel)` once."""

    def __init__(self, on_message: Callable[["Channel", Any], None], on_closed: Callable[["Channel"], None] | None):
        self.on_message = on_message
        self.on_closed = on_closed
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._pack = msgpack.Packer().pack
        self._unpack = msgpack.unpackb

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at, size = 0, len(buffer)
        unpack, deliver = self._unpack, self.on_message
        while size - at >= 4:
            (n,) = HEADER.unpack_from(buffer, at)
            if n > MAX_FRAME:
                self.close()
                return
            if size - at - 4 < n:
                break
            message = unpack(buffer[at + 4:at + 4 + n])
            at += 4 + n
            deliver(self, message)
            if self.closed:
                return
        del buffer[:at]

    def send(self, message: Any) -> None:
        if self.closed:
            return
        body = self._pack(message)
        self.transport.write(HEADER.pack(len(body)) + body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.closed = True
            if self.on_closed is not None:
                self.on_closed(self)


async def serve(address: str, on_channel: Callable[[Channel], None],
                on_message: Callable[[Channel, Any], None], on_closed: Callable[[Channel], None] | None = None):
    """Listen at `address` ("unix:" alone: a private path); returns (server, the address bound)."""
    loop = asyncio.get_running_loop()

    def make() -> Channel:
        channel = Channel(on_message, on_closed)
        loop.call_soon(on_channel, channel)
        return channel

    if address == "unix:":
        address = "unix:" + private_socket_path("s.sock")
    kind, where = _split(address)
    if kind == "unix":
        server = await loop.create_unix_server(make, where)
        return server, address
    server = await loop.create_server(make, where[0], where[1], reuse_address=True)
    host, port = server.sockets[0].getsockname()[:2]
    return server, f"tcp://{host}:{port}"


async def connect(address: str, on_message: Callable[[Channel, Any], None],
                  on_closed: Callable[[Channel], None] | None = None) -> Channel:
    loop = asyncio.get_running_loop()
    kind, where = _split(address)
    if kind == "unix":
        _, channel = await loop.create_unix_connection(lambda: Channel(on_message, on_closed), where)
    else:
        _, channel = await loop.create_connection(lambda: Channel(on_message, on_closed), where[0], where[1])
    return channel


def listen_socket(address: str) -> tuple[socket.socket, str]:
    """A blocking listening socket at `address` ("unix:" alone: a private path); returns it and its address."""
    if address == "unix:":
        address = "unix:" + private_socket_path("w.sock")
    kind, where = _split(address)
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
        bound = address
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in where[0] else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
        host, port = sock.getsockname()[:2]
        bound = f"tcp://{host}:{port}"
    sock.listen(16)
    return sock, bound


class BlockingChannel:
    """The same framing over a blocking socket, for threads: `recv()` (None once the peer closed), `send()`."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._pack = msgpack.Packer().pack

    def send(self, message: Any) -> bool:
        """False if the peer is gone."""
        body = self._pack(message)
        try:
            with self._lock:
                self.sock.sendall(HEADER.pack(len(body)) + body)
            return True
        except OSError:
            return False

    def recv(self) -> Any:
        buffer = self._buffer
        while True:
            if len(buffer) >= 4:
                (n,) = HEADER.unpack_from(buffer, 0)
                if n > MAX_FRAME:
                    return None
                if len(buffer) >= 4 + n:
                    message = msgpack.unpackb(buffer[4:4 + n])
                    del buffer[:4 + n]
                    return message
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return None
            if not chunk:
                return None
            buffer += chunk

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
