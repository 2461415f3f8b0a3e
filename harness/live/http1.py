"""A lean HTTP/1.1 server: one plain asyncio.Protocol per connection, no task or future per request.

    server = Server(handler, max_body=1 << 20)
    listener = await loop.create_server(server, sock=sock)
    sweeper = asyncio.ensure_future(server.sweep())        # slow clients, idle connections, the Date header

`handler(request)` is called synchronously, in data_received, for each
whole request (line, headers, body). It answers with
`request.answer(status, body, headers)` then or at any later time (the
ingress answers an infer when the scheduler's DONE message comes back);
`headers` are whole header lines, `b"Content-Type: ...\\r\\n"`, and the
server adds Content-Length, Date, Server and Connection. So a request costs
a parse and one write, where aiohttp's low-level server spends a request
object, a task and a stream per request, about twice the CPU per request
(benchmarks/ingress_rate.py).

What the connection does:

- keep-alive: HTTP/1.1 keeps the connection unless `Connection: close`;
  HTTP/1.0 closes unless `Connection: keep-alive`. After an answer that
  closes, the server shuts its sending side and reads (and drops) what the
  client still sends, for up to LINGER_S, before it closes: a close with
  unread bytes would reset the connection and could destroy the answer
  before the client read it (a 413 to a client still sending its body).
- pipelining: requests are read ahead of their answers (at most
  MAX_PIPELINE on one connection, then reading pauses) and answered in
  request order: an answer that completes early waits for those before it.
- bodies: Content-Length or chunked transfer coding; `Expect:
  100-continue` gets `100 Continue` before the body is read (libcurl, under
  Triton's perf_analyzer, waits a second for it on bodies over 1 KiB). A
  body over `max_body` answers 413, a header block over HEAD_LIMIT bytes
  431, a malformed request 400, all with a JSON body {"error": ...}, and
  the connection closes.
- slow clients: a request not whole `head_timeout` seconds after its first
  byte (slow-loris: a dribbled line, headers or body) closes the
  connection, and so does a connection idle for `idle_timeout`.
- backpressure: while the transport's write buffer is over its high-water
  mark (a client that sends but does not read) reading pauses too.

Heads are read whole, with one regular expression (_HEAD: why, beside it).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from email.utils import formatdate
from typing import Callable
from urllib.parse import unquote_to_bytes

HEAD_LIMIT = 65536             # bytes of a request line and headers together
MAX_PIPELINE = 32              # requests read ahead of their answers on one connection
HEAD_TIMEOUT_S = 10.0          # a request must be whole (line, headers, body) this long after its first byte
IDLE_TIMEOUT_S = 75.0          # a keep-alive connection with nothing to do is closed after this long
LINGER_S = 2.0                 # after the last answer: how long what the client still sends is read and dropped
CHUNK_LINE_LIMIT = 4096        # a chunk-size line or a trailer line

JSON = b"Content-Type: application/json; charset=utf-8\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
REASONS = {100: "Continue", 200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Request Entity Too Large", 429: "Too Many Requests",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 504: "Gateway Timeout"}
_HEX = b"0123456789abcdefABCDEF"
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD = rb"\r\n" + _TOKEN + rb":[\t\x20-\x7e\x80-\xff]*"
# A whole head checked in one match (what a request line and header fields may hold, after RFC 9112: no bare
# CR or LF, no space before a colon, no folded lines), then the few headers the server acts on found in one
# pass over the lower-cased header block. httptools (llhttp, called through its per-header callbacks) parsed
# the load generator's requests about 1.5 us faster in isolation, a few percent of an ingress's CPU per
# request end to end: too little to add a compiled dependency.
_HEAD = re.compile(b"(" + _TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.([01])((?:" + _FIELD + b")*)")
_WANTED = re.compile(rb"\r\n(content-length|transfer-encoding|connection|expect|host):[ \t]*([^\r]*)")


def _status_lines(version: bytes) -> dict[int, bytes]:
    class Lines(dict):
        def __missing__(self, code: int) -> bytes:        # a code outside REASONS: still a valid line
            return b"%s %d Unknown\r\n" % (version, code)

    return Lines({code: b"%s %d %s\r\n" % (version, code, reason.encode()) for code, reason in REASONS.items()})


STATUS = {True: _status_lines(b"HTTP/1.1"), False: _status_lines(b"HTTP/1.0")}


def json_error(message: str) -> bytes:
    """The body of an error answer: {"error": message}."""
    return json.dumps({"error": message}).encode()


class BadRequest(Exception):
    """The bytes are not an HTTP/1.x request this server reads: answered `status` and the connection closed."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Request:
    """One whole request. `path` is percent-decoded, without the query; `head` is true for HEAD (the
    answer's body is left out, its Content-Length kept); `header(name)` reads a header."""

    __slots__ = ("conn", "seq", "method", "target", "block", "low", "v11", "keep_alive", "expect", "head", "body",
                 "_path")

    def __init__(self, conn: "Connection", seq: int, method: str, target: bytes, block: bytes, low: bytes,
                 v11: bool, keep_alive: bool, expect: bytes | None = None):
        self.conn = conn
        self.seq = seq
        self.method = method
        self.target = target
        self.block = block         # the header lines, each after its CR LF
        self.low = low             # ... in lower case, to look names up
        self.v11 = v11
        self.keep_alive = keep_alive
        self.expect = expect
        self.head = method == "HEAD"
        self.body = b""
        self._path: str | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = _path(self.target)
        return self._path

    @property
    def query(self) -> bytes:
        return self.target.partition(b"?")[2]

    def header(self, name: bytes) -> bytes | None:
        """The value of the header `name` (lower case; the first if repeated), or None."""
        key = b"\r\n" + name + b":"
        at = self.low.find(key)
        if at < 0:
            return None
        at += len(key)
        end = self.low.find(b"\r\n", at)
        return self.block[at:end if end >= 0 else len(self.block)].strip(b" \t")

    def answer(self, status: int, body: bytes = b"", headers: bytes = b"") -> None:
        """Answer this request (once); written when the answers to the requests before it on its
        connection are. Nothing happens if the connection is gone."""
        conn = self.conn
        if conn.lost:
            return
        server = conn.server
        tail = server.tail_keep11 if self.keep_alive and self.v11 else server.tail_keep10 if self.keep_alive \
            else server.tail_close
        conn.deliver(self.seq, b"%s%sContent-Length: %d\r\n%s%s" % (
            STATUS[self.v11][status], headers, len(body), tail, b"" if self.head else body))


class _Body:
    """A request waiting for the rest of its body."""

    __slots__ = ("request", "parts", "left", "chunked", "phase", "total")

    def __init__(self, request: Request, left: int, chunked: bool):
        self.request = request
        self.parts: list[bytes] = []
        self.left = left          # bytes still to come: of the body (Content-Length) or of the current chunk
        self.chunked = chunked
        self.phase = 0            # chunked: 0 size line, 1 chunk data, 2 the CRLF after it, 3 trailers
        self.total = 0


class Connection(asyncio.Protocol):
    """One client connection: parse, hand whole requests to the server's handler, write answers in order."""

    def __init__(self, server: "Server"):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""                 # bytes not parsed yet (the start of a head, a partial chunk line)
        self.scanned = 0               # ... of which the first `scanned` hold no end of a head
        self.body: _Body | None = None
        self.next_seq = 0              # the position of the next request read
        self.write_seq = 0             # the position of the next answer to write
        self.early: dict[int, bytes] = {}      # answers ready before the ones ahead of them
        self.last_seq = -1             # >= 0: the connection closes once this answer is written
        self.reading_since: float | None = None    # first byte of a request not yet whole
        self.active = time.monotonic()
        self.owe_continue = -1         # the position owed a 100 Continue once the answers before it are written
        self.stopped = False           # no more requests are read (closing, or lingering)
        self.lingering: float | None = None
        self.eof = False               # the client sent its last byte
        self.lost = False
        self.write_paused = False
        self.unsent = 0                # bytes in the transport's buffer at the last sweep, while write_paused
        self.blocked = False           # MAX_PIPELINE requests wait for their answers: parsing waits too
        self.read_paused = False

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.lost = True
        self.early.clear()
        self.body = None
        self.server.connections.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.active = time.monotonic()         # a client that reads is not idle
        self._update_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.lingering is not None:
            return False
        if self.blocked:
            return True                        # whole requests wait in self.buf: _resume reads them first
        return self._ended()

    def _ended(self) -> bool:
        """The client sent its last byte and what it sent is read: answer what is whole, then close.
        False: nothing is left to answer (close now)."""
        if self.body is not None:              # a request that will never be whole is dropped
            self.next_seq = self.body.request.seq
            self.body = None
        self.buf = b""
        self.reading_since = None
        self.stopped = True
        if self.write_seq >= self.next_seq:
            return False
        if not 0 <= self.last_seq < self.next_seq:
            self.last_seq = self.next_seq - 1
        return True

    def data_received(self, data: bytes) -> None:
        if self.stopped and self.body is None:
            return                             # past the last request (Connection: close, lingering): dropped
        self.active = time.monotonic()
        try:
            body = self.body
            if body is not None:
                if body.chunked:
                    if self.buf:
                        data, self.buf = self.buf + data, b""
                    at = self._chunked(body, data, 0)
                else:
                    at = self._content(body, data)
                if at < 0:
                    self._partial(False)
                    return
                self.body = None
                self._dispatch(body.request, b"".join(body.parts))
                if self.stopped:
                    return
                data = data[at:]
                if not data:
                    self._partial(True)
                    return
            elif self.buf:
                data, self.buf = self.buf + data, b""
                self._parse(data, self.scanned)
                return
            self._parse(data)
        except BadRequest as exc:
            self._reject(exc)

    # -- reading -----------------------------------------------------------------------
    def _parse(self, data: bytes, scanned: int = 0) -> None:
        """Read whole requests off `data` (whose first `scanned` bytes hold no end of a head); keep the rest."""
        n = len(data)
        at = 0
        whole = False
        while at < n:
            if self.next_seq - self.write_seq >= MAX_PIPELINE:
                self.buf = data[at:]
                self.scanned = 0
                self.blocked = True
                self.reading_since = None          # the server is the one behind now, not the client
                self._update_reading()
                return
            while data.startswith(b"\r\n", at):     # empty lines before a request line are allowed (RFC 9112)
                at += 2
            start = max(at, scanned - 3)
            end = data.find(b"\r\n\r\n", start, at + HEAD_LIMIT + 4)
            if end < 0:
                if n - at > HEAD_LIMIT:
                    raise BadRequest(f"bad request: request line and headers over {HEAD_LIMIT} bytes", 431)
                bare = data.find(b"\n", start)
                while bare >= 0:                   # a line that ends in a bare LF: the head would never end
                    if bare == at or data[bare - 1] != 13:
                        raise BadRequest("bad request: a line ends without CR LF")
                    bare = data.find(b"\n", bare + 1)
                self.buf = data[at:]
                self.scanned = n - at
                break
            scanned = 0
            request, length = self._head(data[at:end])
            at = end + 4
            whole = True
            if length == 0:
                self._dispatch(request, b"")
            elif length > 0:
                if n - at >= length:
                    body = data[at:at + length]
                    at += length
                    self._dispatch(request, body)
                else:
                    pending = _Body(request, length - (n - at), False)
                    pending.parts.append(data[at:])
                    self.body = pending
                    self._continue(request)
                    self._partial(False)
                    return
            else:                                  # chunked
                pending = self.body = _Body(request, 0, True)     # set first: a bad chunk answers this request
                got = self._chunked(pending, data, at)
                if got < 0:
                    self._continue(request)
                    self._partial(False)
                    return
                self.body = None
                at = got
                self._dispatch(request, b"".join(pending.parts))
            if self.stopped:
                return
        self._partial(whole)

    def _partial(self, whole: bool) -> None:
        """Bytes of a request not yet whole: its clock starts at its first byte."""
        if self.body is None and not self.buf:
            self.reading_since = None
        elif whole or self.reading_since is None:
            self.reading_since = self.active

    def _head(self, head: bytes) -> tuple[Request, int]:
        """The request of a head (line and headers, without the blank line), and its body's length
        (0: none, -1: chunked)."""
        m = _HEAD.fullmatch(head)
        if m is None:
            raise _malformed(head)
        method, target, minor, block = m.groups()
        v11 = minor == b"1"
        low = block.lower()
        length = coding = connection = expect = None
        host = False
        for name, value in _WANTED.findall(low):
            value = value.rstrip(b" \t")
            if name == b"content-length":
                if length is not None and length != value:
                    raise BadRequest("bad request: Content-Length given twice")
                length = value
            elif name == b"host":
                host = True
            elif name == b"connection":
                connection = value if connection is None else connection + b"," + value
            elif name == b"transfer-encoding":
                coding = value if coding is None else coding + b"," + value
            else:
                expect = value
        if v11 and not host:
            raise BadRequest("bad request: an HTTP/1.1 request needs a Host header")
        if coding is not None:
            if length is not None:
                raise BadRequest("bad request: both Content-Length and Transfer-Encoding")
            if coding != b"chunked":
                raise BadRequest(f"bad request: unsupported Transfer-Encoding {coding[:40]!r}", 501)
            size = -1
        elif length is None:
            size = 0
        elif not length.isdigit() or len(length) > 18:
            raise BadRequest(f"bad request: invalid Content-Length {length[:40]!r}")
        else:
            size = int(length)
            if size > self.server.max_body:
                raise BadRequest(f"request body larger than {self.server.max_body} bytes", 413)
        if connection is None:
            keep_alive = v11
        else:
            keep_alive = b"close" not in connection and (v11 or b"keep-alive" in connection)
        request = Request(self, self.next_seq, method.decode(), target, block, low, v11, keep_alive, expect)
        self.next_seq += 1
        if not keep_alive:
            self._stop_after(request.seq)
        return request, size

    def _content(self, body: _Body, data: bytes) -> int:
        """More of a Content-Length body: the position after it in `data` once whole, else -1."""
        left = body.left
        if len(data) < left:
            body.parts.append(data)
            body.left = left - len(data)
            return -1
        body.parts.append(data[:left])
        body.left = 0
        return left

    def _chunked(self, body: _Body, data: bytes, at: int) -> int:
        """More of a chunked body: the position after it (trailers included) once whole, else -1 (an
        unfinished line is kept in self.buf)."""
        n = len(data)
        while True:
            if body.phase == 1:
                take = min(body.left, n - at)
                if take:
                    body.parts.append(data[at:at + take])
                    at += take
                    body.left -= take
                if body.left:
                    return -1
                body.phase = 2
            if body.phase == 2:
                if n - at < 2:
                    self.buf = data[at:]
                    return -1
                if data[at:at + 2] != b"\r\n":
                    raise BadRequest("bad request: chunk data not followed by CR LF")
                at += 2
                body.phase = 0
            eol = data.find(b"\r\n", at)
            if eol < 0:
                if n - at > CHUNK_LINE_LIMIT:
                    raise BadRequest("bad request: chunk line too long")
                self.buf = data[at:]
                return -1
            line = data[at:eol]
            at = eol + 2
            if body.phase == 0:
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 15 or size.strip(_HEX):     # int() alone would take 0x1f or 1_0
                    raise BadRequest(f"bad request: invalid chunk size {line[:40]!r}")
                size = int(size, 16)
                body.total += size
                if body.total > self.server.max_body:
                    raise BadRequest(f"request body larger than {self.server.max_body} bytes", 413)
                if size:
                    body.left, body.phase = size, 1
                else:
                    body.phase = 3
            elif not line:                     # the blank line after the trailers: the body is whole
                return at
            elif body.left > CHUNK_LINE_LIMIT * 8:
                raise BadRequest("bad request: trailers too long")
            else:
                body.left += len(line)         # trailer fields are read and dropped

    def _continue(self, request: Request) -> None:
        """`Expect: 100-continue` on a request whose body is still to come: the client waits for 100 Continue
        (in its turn: it must not overtake answers to earlier requests)."""
        if request.expect != b"100-continue" or not request.v11:
            return
        if request.seq == self.write_seq:
            self.transport.write(CONTINUE)
        else:
            self.owe_continue = request.seq

    def _dispatch(self, request: Request, body: bytes) -> None:
        request.body = body
        if self.owe_continue == request.seq:
            self.owe_continue = -1             # the client sent the body without waiting for it
        try:
            self.server.handler(request)
        except Exception as exc:   # a bug serving one request must not take the connection down
            self.server.on_error(request, exc)
            if not self.lost and request.seq >= self.write_seq and request.seq not in self.early:
                request.answer(500, json_error(f"error: internal server error: {type(exc).__name__}"), JSON)

    # -- writing -----------------------------------------------------------------------
    def deliver(self, seq: int, data: bytes) -> None:
        """Write the answer at position `seq` now if it is next, else when the ones before it are."""
        if seq != self.write_seq:
            if seq > self.write_seq:
                self.early[seq] = data
            return
        early = self.early
        seq += 1
        if early and seq in early:
            out = [data]
            while seq in early:
                out.append(early.pop(seq))
                seq += 1
            data = b"".join(out)
        if self.owe_continue >= 0 and self.owe_continue == seq:
            data += CONTINUE
            self.owe_continue = -1
        self.write_seq = seq
        self.transport.write(data)
        if seq > self.last_seq >= 0:
            self._finish()
        elif self.blocked and self.next_seq - seq < MAX_PIPELINE:
            self.blocked = False
            self.server.loop.call_soon(self._resume)
        if seq == self.next_seq:
            self.active = time.monotonic()

    def _resume(self) -> None:
        """Parse what was read while MAX_PIPELINE requests waited."""
        self._update_reading()
        if self.lost or self.stopped or self.blocked:
            return
        data, self.buf = self.buf, b""
        if data:
            try:
                self._parse(data)
            except BadRequest as exc:
                self._reject(exc)
        if self.eof and not self.blocked and not self.lost and self.lingering is None and not self._ended():
            self.transport.close()

    def _update_reading(self) -> None:
        pause = (self.write_paused or self.blocked) and self.lingering is None
        if pause != self.read_paused and not self.lost:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _stop_after(self, seq: int) -> None:
        """Read no request after the one at `seq`; close once it is answered."""
        self.last_seq = seq
        self.stopped = True
        self.buf = b""
        self.reading_since = None

    def _reject(self, exc: BadRequest) -> None:
        """A request that cannot be read: answer it in its turn, with Connection: close, then close."""
        seq = self.next_seq if self.body is None else self.body.request.seq
        if self.body is None:
            self.next_seq += 1
        self.body = None
        self._stop_after(seq)
        message = str(exc)
        request = Request(self, seq, "GET", b"/", b"", b"", True, False)
        request.answer(exc.status, json_error(message), JSON)

    def _finish(self) -> None:
        """The last answer is written: shut the sending side and drop what comes in, then close (LINGER_S)."""
        self.stopped = True
        self.lingering = time.monotonic()
        self.early.clear()
        self._update_reading()
        transport = self.transport
        if self.eof or not transport.can_write_eof():
            transport.close()
        else:
            transport.write_eof()

    def close(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.close()


def _malformed(head: bytes) -> BadRequest:
    """What is wrong with a head that does not match _HEAD."""
    lines = head.split(b"\r\n")
    if any(b"\n" in line or b"\r" in line for line in lines):
        return BadRequest("bad request: a line ends without CR LF")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[1]:
        return BadRequest(f"bad request: malformed request line {lines[0][:100]!r}")
    if re.fullmatch(_TOKEN, parts[0]) is None:
        return BadRequest(f"bad request: invalid method {parts[0][:40]!r}")
    if parts[2] not in (b"HTTP/1.0", b"HTTP/1.1"):
        return BadRequest(f"bad request: unsupported HTTP version {parts[2][:20]!r}")
    for line in lines[1:]:
        if re.fullmatch(_FIELD, b"\r\n" + line) is None:
            return BadRequest(f"bad request: invalid header line {line[:100]!r}")
    return BadRequest(f"bad request: invalid request target {parts[1][:100]!r}")


def _path(target: bytes) -> str:
    """The path of a request target (origin form, absolute form or `*`), percent-decoded, without the query."""
    path = target.partition(b"?")[0]
    if path[:1] == b"/" and b"%" not in path and b"/." not in path:
        return path.decode("utf-8", "replace")
    if path[:1] != b"/" and b"://" in path:            # absolute form: http://host/path
        start = path.find(b"/", path.find(b"://") + 3)
        path = b"/" if start < 0 else path[start:]
    if b"%" in path:
        path = unquote_to_bytes(path)
    text = path.decode("utf-8", "replace")
    if "/." in text:                                    # dot segments, as a URL library would resolve them
        out: list[str] = []
        for segment in text.split("/"):
            if segment == "..":
                if len(out) > 1:
                    out.pop()
            elif segment != ".":
                out.append(segment)
        text = "/".join(out) or "/"
    return text


class Server:
    """The connections of one listener; call it as the protocol factory of loop.create_server."""

    def __init__(self, handler: Callable[[Request], None], *, max_body: int, name: str = "dnn-serving-harness",
                 head_timeout: float = HEAD_TIMEOUT_S, idle_timeout: float = IDLE_TIMEOUT_S,
                 linger: float = LINGER_S, on_error: Callable[[Request, Exception], None] | None = None):
        self.handler = handler
        self.max_body = max_body
        self.name = name.encode()
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.linger = linger
        self.on_error = on_error or (lambda request, exc: None)
        self.connections: set[Connection] = set()
        self.loop = asyncio.get_running_loop()
        self.tail_keep11 = self.tail_keep10 = self.tail_close = b""
        self._date()

    def __call__(self) -> Connection:
        return Connection(self)

    def _date(self) -> None:
        """The answers' last header lines, with the Date (renewed every second by sweep)."""
        common = b"Date: %s\r\nServer: %s\r\n" % (formatdate(usegmt=True).encode(), self.name)
        self.tail_keep11 = common + b"\r\n"
        self.tail_keep10 = common + b"Connection: keep-alive\r\n\r\n"
        self.tail_close = common + b"Connection: close\r\n\r\n"

    async def sweep(self) -> None:
        """Close what is too slow: a request not whole head_timeout after its first byte, a connection idle
        for idle_timeout, one lingering for linger; and renew the Date."""
        tick = min(1.0, self.head_timeout / 4, self.idle_timeout / 4, self.linger / 4)
        while True:
            await asyncio.sleep(tick)
            self._date()
            now = time.monotonic()
            for conn in list(self.connections):
                if conn.lingering is not None:
                    # The last answer, still unsent to a slow reader, gets idle_timeout more to go out.
                    unsent = conn.transport.get_write_buffer_size()
                    if now - conn.lingering > self.linger + (self.idle_timeout if unsent else 0):
                        conn.transport.abort()
                elif conn.reading_since is not None:
                    if now - conn.reading_since > self.head_timeout:
                        conn.transport.abort()
                elif conn.write_paused and conn.transport.get_write_buffer_size() != conn.unsent:
                    conn.unsent = conn.transport.get_write_buffer_size()
                    conn.active = now                  # slow, but it reads: not idle
                elif conn.write_seq == conn.next_seq and now - conn.active > self.idle_timeout:
                    if conn.write_paused:
                        conn.transport.abort()     # it reads nothing: what is left to send never goes
                    else:
                        conn.close()

    def close(self) -> None:
        """Close every connection (what was written is sent first)."""
        for conn in list(self.connections):
            conn.close()
