"""A real threaded FHIR test server on a loopback port, answering reads and searches over a list
of resources with ``cds_service.devtools.fixtures.search``.

Behaviours are switched per test on the running server (attributes, or ``override`` per path):

    with FhirTestServer(resources) as server:        # or the ``fhir_server`` pytest fixture
        server.delay = 0.1                           # slow: sleep per request
        server.fail_status = 500                     # every request answers 500 (or 401, ...)
        server.html = True                           # every request answers an HTML page
        server.page_size = 2                         # searches page: _count capped, next links
        server.override("Observation?", status=500)  # per path prefix (relative to the base)
        ...
        server.requests                              # every request: path, query, Authorization
        server.max_in_flight                         # most requests handled at the same time

Sleeps are interruptible: stopping the server wakes sleeping handlers, so a test that abandons a
10-second request does not wait for it on teardown.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from cds_service.devtools.fixtures import search

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str  # relative to the server's base path, e.g. "Observation" or "Patient/p1"
    query: str  # raw query string
    authorization: str | None
    started: float  # time.monotonic()
    finished: float | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(parse_qsl(self.query, keep_blank_values=True))


@dataclass
class Override:
    """A canned answer for requests whose relative URL (``path?query``) starts with a prefix."""

    status: int = 200
    body: Any = None  # dict -> JSON; str/bytes as is; None -> normal search result (with delay only)
    content_type: str = FHIR_JSON
    headers: dict[str, str | None] = field(default_factory=dict)  # None removes a header
    delay: float | None = None


def operation_outcome(text: str, code: str = "processing") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


class FhirTestServer:
    def __init__(self, resources: Sequence[dict[str, Any]] = (), *, base_path: str = "/fhir") -> None:
        self.resources: list[dict[str, Any]] = list(resources)
        self.base_path = "/" + base_path.strip("/") if base_path.strip("/") else ""
        self.delay = 0.0
        self.fail_status: int | None = None
        self.html = False
        self.page_size: int | None = None
        self.overrides: dict[str, Override] = {}
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    def start(self) -> FhirTestServer:
        handler = _make_handler(self)
        httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fhir-test-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FhirTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- behaviours ----------------------------------------------------------------------------
    def override(self, prefix: str, *, status: int = 200, body: Any = None,
                 content_type: str = FHIR_JSON, headers: dict[str, str | None] | None = None,
                 delay: float | None = None) -> None:
        """Answer requests whose relative URL starts with ``prefix`` this way (longest prefix wins)."""
        self.overrides[prefix] = Override(status, body, content_type, dict(headers or {}), delay)

    def reset(self) -> None:
        """Back to normal behaviour, with an empty request log."""
        with self._lock:
            self.delay = 0.0
            self.fail_status = None
            self.html = False
            self.page_size = None
            self.overrides.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # -- internals -----------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _find_override(self, relative: str) -> Override | None:
        for prefix in sorted(self.overrides, key=len, reverse=True):
            if relative.startswith(prefix):
                return self.overrides[prefix]
        return None

    def _enter(self, record: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(record)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return len(self.requests) - 1

    def _leave(self, index: int) -> None:
        with self._lock:
            self.in_flight -= 1
            record = self.requests[index] if index < len(self.requests) else None
            if record is not None:
                self.requests[index] = RecordedRequest(record.method, record.path, record.query,
                                                       record.authorization, record.started,
                                                       time.monotonic())

    def answer(self, path: str, query: str) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for a GET of ``path`` (relative to the base) with ``query``."""
        relative = path + ("?" + query if query else "")
        override = self._find_override(relative)
        self._sleep(override.delay if override is not None and override.delay is not None else self.delay)
        if override is not None and (override.body is not None or override.status != 200):
            return _encode(override.status, override.body, override.content_type, override.headers)
        if self.fail_status is not None:
            return _encode(self.fail_status, operation_outcome(f"test server answers {self.fail_status}"),
                           FHIR_JSON, {})
        if self.html:
            return _encode(200, "<!doctype html><html><body><h1>Log in</h1></body></html>",
                           "text/html; charset=utf-8", {})
        params = parse_qsl(query, keep_blank_values=True)
        if self.page_size is not None and "/" not in path:  # a search, not a read
            counts = [int(v) for n, v in params if n == "_count" and v.isdigit()]
            size = min([self.page_size, *counts])
            params = [(n, v) for n, v in params if n != "_count"] + [("_count", str(size))]
        try:
            result = search(self.resources, path + ("?" + urlencode(params, safe="|,:/") if params else ""),
                            base_url=self.base_url)
        except ValueError:
            return _encode(400, operation_outcome("unsupported query", "not-supported"), FHIR_JSON, {})
        if result is None:
            return _encode(404, operation_outcome("not found", "not-found"), FHIR_JSON, {})
        return _encode(200, result, FHIR_JSON, {})


def _encode(status: int, body: Any, content_type: str,
            headers: dict[str, str | None]) -> tuple[int, dict[str, str], bytes]:
    if isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    elif body is None:
        payload = b""
    else:
        payload = json.dumps(body).encode("utf-8")
    out: dict[str, str] = {"Content-Type": content_type, "Content-Length": str(len(payload))}
    for name, value in headers.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    if "Content-Length" not in out:
        out["Connection"] = "close"  # the body ends when the connection does
    return status, out, payload


def _make_handler(server: FhirTestServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            path = parts.path
            if server.base_path and (path == server.base_path or path.startswith(server.base_path + "/")):
                path = path[len(server.base_path):]
            path = path.strip("/")
            record = RecordedRequest("GET", path, parts.query, self.headers.get("Authorization"),
                                     time.monotonic())
            index = server._enter(record)
            try:
                status, headers, body = server.answer(path, parts.query)
                if server._stopping.is_set():
                    return
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                if headers.get("Connection") == "close":
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (deadline): expected
            finally:
                server._leave(index)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
            return

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait for an abandoned slow handler on teardown

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # clients that give up at their deadline reset connections: expected, not noise


@pytest.fixture
def fhir_server() -> Iterator[FhirTestServer]:
    """A started, empty ``FhirTestServer``; set ``.resources`` and behaviours in the test."""
    with FhirTestServer() as server:
        yield server
