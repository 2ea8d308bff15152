"""The one loopback HTTP server of the tests: threaded, on 127.0.0.1 with a port the OS picks,
running in a thread for the length of a ``with`` block.

It answers in one of two ways:

* a **handler** ``handler(request) -> Response`` (or a route table, see ``routes``): for stand-ins
  (a FHIR server, a JWKS host, a fake CDS service)::

      with LoopbackServer(lambda request: Response(200, {"ok": True})) as server:
          requests.get(server.url("/anything"))
          server.requests                  # every request: method, path, headers, body
          server.max_in_flight             # most requests handled at the same time

* a **WSGI app** (``LoopbackServer(app=flask_app)``): the service itself, in werkzeug's threaded
  server (the same WSGI app gunicorn serves), where a browser or ``cds-service fire`` reach it.

Stopping is clean: handlers sleeping in ``server.sleep`` wake up at once and answer nothing, and the
server never waits for a handler a client has abandoned (its deadline passed).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    path: str  # the raw request target, query included (as ``http.server`` names it): "/fhir/Observation?x=1"
    headers: Message
    body: bytes
    started: float  # time.monotonic()

    @property
    def route(self) -> str:
        """The path without the query: "/fhir/Observation"."""
        return urlsplit(self.path).path

    @property
    def query(self) -> str:
        return urlsplit(self.path).query

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")


@dataclass
class Response:
    """An answer. ``body``: bytes or str are sent as they are, None as nothing, anything else as JSON.

    ``headers`` are added to Content-Type and Content-Length; a header set to None is removed (without
    Content-Length the body ends when the connection closes).
    """

    status: int = 200
    body: Any = None
    content_type: str = "application/json"
    headers: Mapping[str, str | None] = field(default_factory=dict)

    def encode(self) -> tuple[dict[str, str], bytes]:
        if isinstance(self.body, bytes):
            payload = self.body
        elif isinstance(self.body, str):
            payload = self.body.encode("utf-8")
        elif self.body is None:
            payload = b""
        else:
            payload = json.dumps(self.body).encode("utf-8")
        out: dict[str, str] = {"Content-Type": self.content_type, "Content-Length": str(len(payload))}
        for name, value in self.headers.items():
            if value is None:
                out.pop(name, None)
            else:
                out[name] = value
        if "Content-Length" not in out:
            out["Connection"] = "close"  # the body ends when the connection does
        return out, payload


Handler = Callable[[Request], Response]
Route = Response | Handler
NOT_FOUND = Response(404, {"error": "not found"})


def routes(table: Mapping[str, Route], default: Route = NOT_FOUND) -> Handler:
    """A handler answering from ``table``, looked up on every request (so the test may change it).

    Keys are ``"METHOD /path"`` or ``"/path"`` (any method), matched against the path without the query;
    values are a ``Response`` or a handler. Anything else gets ``default``.
    """

    def answer(request: Request) -> Response:
        route = table.get(f"{request.method} {request.route}", table.get(request.route, default))
        return route if isinstance(route, Response) else route(request)

    return answer


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then released): connections to it are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1:<free port>; serves while started (``with`` or start/stop)."""

    def __init__(self, handler: Handler | Mapping[str, Route] | None = None, *, app: Any = None,
                 name: str = "loopback-server") -> None:
        if (handler is None) == (app is None):
            raise TypeError("LoopbackServer needs a handler (or route table) or a WSGI app, not both")
        self.app = app
        self.handler: Handler | None = None
        if handler is not None:
            self.handler = routes(handler) if isinstance(handler, Mapping) else handler
        self.name = name
        self.requests: list[Request] = []  # handler mode only
        self.errors: list[BaseException] = []  # exceptions raised by the handler (answered 500)
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._httpd: BaseServer
        if app is not None:
            from werkzeug.serving import make_server

            self._httpd = make_server(HOST, 0, app, threaded=True)
        else:
            self._httpd = _QuietServer((HOST, 0), _request_handler(self))
        self.port = int(self._httpd.server_address[1])  # type: ignore[index]
        self.origin = f"http://{HOST}:{self.port}"

    def url(self, path: str = "") -> str:
        return self.origin + path

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers in sleep(); they answer nothing
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep in a handler, waking when the server stops; True if it stopped."""
        return self._stopping.wait(seconds) if seconds > 0 else self._stopping.is_set()

    # -- the request log -----------------------------------------------------------------------
    def clear(self) -> None:
        """Forget the requests seen so far (and the in-flight high-water mark)."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = 0

    def _enter(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _answer(self, request: Request) -> Response:
        assert self.handler is not None
        try:
            return self.handler(request)
        except Exception as error:  # a bug in the test's handler: say so instead of hanging up
            with self._lock:
                self.errors.append(error)
            return Response(500, f"loopback handler failed: {error!r}", "text/plain; charset=utf-8")


def _request_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(self.command, self.path, self.headers, body, time.monotonic())
            server._enter(request)
            try:
                response = server._answer(request)
                if server.stopping:
                    self.close_connection = True
                    return  # the test is over: nobody waits for this answer
                headers, payload = response.encode()
                self.send_response(response.status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
                if headers.get("Connection") == "close":
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its deadline): expected
            finally:
                server._leave()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
            return

    return RequestHandler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for an abandoned slow handler on teardown
    request_queue_size = 128  # the service queries every prefetch key at once; a backlog of 5 drops SYNs

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients that give up at their deadline reset connections: expected, not noise
