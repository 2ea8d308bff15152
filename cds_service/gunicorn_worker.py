"""A gunicorn worker that slow or partial clients cannot starve: ``gthread`` with a buffering front.

gunicorn's ``gthread`` hands a connection to a worker thread as soon as its first byte arrives; the
thread then blocks reading the rest of the request.  Twenty connections that each send half a header
line hold all 2 x 8 threads, and ``/healthz`` stops answering (issue 15, finding 4).

``BufferingThreadWorker`` reads each request in the worker's event loop instead (non-blocking, next to
gunicorn's accept and keep-alive handling) and submits the connection to the thread pool only once the
whole request is buffered: the header, and the body by ``Content-Length`` or up to the last chunk.  A
request that is not complete in time is dropped:

- ``GUNICORN_HEADER_TIMEOUT`` (default 5 s): from the first byte of a request (or the accept) to the
  end of its header;
- ``GUNICORN_BODY_TIMEOUT`` (default 15 s): from the end of the header to the end of the body.

A request larger than the body limit (``CDS_MAX_BODY_BYTES``) is handed over as soon as that is known,
so the app answers 413 at once.  Threads only ever run the app on a complete request; what they can
still wait on is writing a response to a client that does not read it (see ``deploy/README.md``:
a proxy in front buffers responses and limits connections per client).

Plain HTTP/1.1 only: with TLS or HTTP/2 configured in gunicorn, the stock gthread path is used.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import selectors
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.http.body import LengthReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

_HEADER_END = b"\r\n\r\n"
_MAX_HEADER_BYTES = 64 * 1024  # gunicorn's own limits (limit_request_line, _fields) refuse far earlier
# Header lines end in CRLF: "$" (MULTILINE) matches before the LF, so the CR is part of the pattern.
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([0-9]+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.IGNORECASE | re.MULTILINE)
_TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:", re.IGNORECASE | re.MULTILINE)
_MAX_BODY_READ = 1024 * 1024  # one recv() of a body: gunicorn's own max_body_chunk
_LAST_CHUNK = re.compile(rb"(^|\r\n)0+(;[^\r\n]*)?\r\n(.*\r\n)?\r\n$", re.DOTALL)


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def content_length(header: bytes) -> int | None:
    """The body length of a request framed by exactly one Content-Length header and no
    Transfer-Encoding (None for any other framing: gunicorn's own readers handle those)."""
    if _TRANSFER_ENCODING.search(header):
        return None
    lengths = _CONTENT_LENGTH.findall(header)
    return int(lengths[0]) if len(lengths) == 1 else None


def request_complete(buffer: bytes | bytearray, body_limit: int) -> bool:
    """Is a whole HTTP/1.1 request (or enough to refuse it) in ``buffer``?"""
    end = buffer.find(_HEADER_END)
    if end < 0:
        return len(buffer) > _MAX_HEADER_BYTES  # hand over: the parser refuses it
    header = bytes(buffer[:end])
    body_length = len(buffer) - end - len(_HEADER_END)
    if _CHUNKED.search(header):
        if body_length > body_limit:
            return True
        tail = max(end + len(_HEADER_END), len(buffer) - 4096)  # the last chunk only: no copy of the body
        return bool(_LAST_CHUNK.search(bytes(buffer[tail:])))
    match = _CONTENT_LENGTH.search(header)
    if match is None:
        return True
    declared = int(match.group(1))
    return declared > body_limit or body_length >= declared


class BufferingThreadWorker(ThreadWorker):
    """``gthread`` whose threads see only complete requests (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = _env_float("GUNICORN_HEADER_TIMEOUT", 5.0)
        self.body_timeout = _env_float("GUNICORN_BODY_TIMEOUT", 15.0)
        self.body_limit = int(_env_float("CDS_MAX_BODY_BYTES", 5 * 1024 * 1024))
        self.reading: deque[TConn] = deque()

    def _buffering(self) -> bool:
        return not self.cfg.is_ssl

    # -- connections enter the reading state instead of the thread pool ------------------------
    def accept(self, listener: Any) -> None:
        if not self._buffering():
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self._start_reading(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection sends its next request: buffer it too."""
        if not self._buffering():
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_reading(conn)

    def _start_reading(self, conn: TConn) -> None:
        conn.sock.setblocking(False)
        conn.prebuf = bytearray()
        conn.body = None  # the pieces of a body of known length, once the header says it (_start_body)
        conn.body_missing = 0
        conn.header_done = False
        conn.read_deadline = time.monotonic() + self.header_timeout
        self.reading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: TConn, client: Any) -> None:
        if conn.body is not None:
            self._read_body(conn)
            return
        try:
            data = conn.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(conn)
            return
        conn.prebuf += data
        if not conn.header_done and _HEADER_END in conn.prebuf:
            conn.header_done = True
            conn.read_deadline = time.monotonic() + self.body_timeout
            if self._start_body(conn):
                return
        if request_complete(conn.prebuf, self.body_limit):
            self._complete(conn)

    def _start_body(self, conn: TConn) -> bool:
        """A body framed by one Content-Length within the limit is kept as the pieces received (joined
        once, in ``handle_request``), never past its end: no growing buffer copied on every read.  The
        header, and what a client pipelined behind the body, stay in ``prebuf``.  Memory grows with what
        the client sends, not with what it declares.  False for any other framing."""
        end = conn.prebuf.find(_HEADER_END) + len(_HEADER_END)
        length = content_length(bytes(conn.prebuf[:end]))
        if length is None or length > self.body_limit:
            return False
        received = bytes(conn.prebuf[end:end + length])
        del conn.prebuf[end:end + length]
        conn.body = [received]
        conn.body_missing = length - len(received)
        if not conn.body_missing:
            self._complete(conn)
        return True

    def _read_body(self, conn: TConn) -> None:
        try:
            data = conn.sock.recv(min(conn.body_missing, _MAX_BODY_READ))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away mid-body
            self._drop(conn)
            return
        conn.body.append(data)
        conn.body_missing -= len(data)
        if not conn.body_missing:
            self._complete(conn)

    def _complete(self, conn: TConn) -> None:
        self._stop_reading(conn)
        conn.data_ready = True
        self.enqueue_req(conn)

    def _drop(self, conn: TConn) -> None:
        self._stop_reading(conn)
        self.nr_conns -= 1
        conn.close()

    def _stop_reading(self, conn: TConn) -> None:
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(conn.sock)
        with contextlib.suppress(ValueError):
            self.reading.remove(conn)

    def murder_pending(self) -> None:
        """gunicorn's own expiry, and: drop requests not read in time (header or body timeout)."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self.reading if c.read_deadline <= now]:
            self._stop_reading(conn)
            self.nr_conns -= 1
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    # -- a thread starts from the buffered bytes -------------------------------------------------
    def handle(self, conn: TConn) -> Any:
        buffered = getattr(conn, "prebuf", None)
        if buffered is not None:
            conn.prebuf = None
            conn.sock.setblocking(True)
            conn.init()
            previous = conn.parser.unreader
            leftover = previous.take_buffered() if hasattr(previous, "take_buffered") else b""
            conn.parser.unreader = BufferedSocketUnreader(conn.sock, leftover + bytes(buffered))
        try:
            result = super().handle(conn)
        finally:
            conn.body = None
        unreader = getattr(conn.parser, "unreader", None) if conn.parser is not None else None
        if isinstance(unreader, BufferedSocketUnreader):
            unreader.settle()  # a pipelined next request: where gthread looks for it
        return result

    def handle_request(self, req: Any, conn: TConn) -> Any:
        """The app reads a body buffered by ``_start_body`` from memory, joined once (a 23 MB body cost
        49 ms of CPU copied piece by piece through gunicorn's readers' buffers, 14 ms so)."""
        pieces = getattr(conn, "body", None)
        if pieces is not None:
            conn.body = None
            body = b"".join(pieces)
            del pieces[:]
            reader = getattr(req.body, "reader", None)
            if not (isinstance(reader, LengthReader) and reader.length == len(body)):
                # gunicorn framed the request otherwise than the event loop did: the body bytes are
                # not where its reader looks, so the connection cannot carry another request.
                req.body = io.BytesIO()
                req.force_close()
            else:
                req.body = io.BytesIO(body)  # BytesIO shares the bytes: a whole read() returns them
        return super().handle_request(req, conn)


class BufferedSocketUnreader(SocketUnreader):
    """gunicorn's socket reader, serving first the bytes the event loop buffered — in pieces of at most
    ``max_body_chunk`` (1 MiB), as the socket would.  Pushing the whole buffered request back into the
    reader instead (``unread``) made every read of the body copy all of what was left of it: a 23 MB body
    read 64 KiB at a time cost gigabytes of copying (quadratic in the body size)."""

    def __init__(self, sock: Any, buffered: bytes) -> None:
        super().__init__(sock)
        self._pending: memoryview | None = memoryview(buffered) if buffered else None

    def take_buffered(self) -> bytes:
        data = bytes(super().take_buffered())
        if self._pending is not None:
            data, self._pending = data + bytes(self._pending), None
        return data

    def settle(self) -> None:
        """Move what is left of the buffered bytes (a pipelined request) into gunicorn's own buffer, after
        what it holds: gthread checks that buffer for a next request before it waits on the socket."""
        if self._pending is not None:
            rest, self._pending = bytes(self._pending), None
            held: bytes = self.buf.getvalue()  # type: ignore[has-type]
            self.buf = io.BytesIO()
            self.buf.write(held + rest)

    def chunk(self, size_hint: int | None = None) -> bytes:
        pending = self._pending
        if pending is None:
            return bytes(super().chunk(size_hint))
        size = self.mxchunk
        if size_hint and size_hint > size:
            size = min(size_hint, self.max_body_chunk)
        piece = bytes(pending[:size])
        self._pending = pending[size:] if len(pending) > size else None
        return piece
