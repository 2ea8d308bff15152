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

It runs on the tests' one loopback server (``loopback.LoopbackServer``): sleeps are interruptible,
so a test that abandons a 10-second request does not wait for it on teardown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from loopback import LoopbackServer, Request, Response

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
        self._lock = threading.Lock()
        self._server: LoopbackServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def server(self) -> LoopbackServer:
        assert self._server is not None, "server not started"
        return self._server

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def origin(self) -> str:
        return self.server.origin

    @property
    def base_url(self) -> str:
        return self.origin + self.base_path

    @property
    def in_flight(self) -> int:
        return self._server.in_flight if self._server is not None else 0

    @property
    def max_in_flight(self) -> int:
        return self._server.max_in_flight if self._server is not None else 0

    def start(self) -> FhirTestServer:
        self._server = LoopbackServer(self._handle, name="fhir-test-server").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

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
        if self._server is not None:
            self._server.clear()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    # -- internals -----------------------------------------------------------------------------
    def _find_override(self, relative: str) -> Override | None:
        for prefix in sorted(self.overrides, key=len, reverse=True):
            if relative.startswith(prefix):
                return self.overrides[prefix]
        return None

    def _handle(self, request: Request) -> Response:
        path = request.route
        if self.base_path and (path == self.base_path or path.startswith(self.base_path + "/")):
            path = path[len(self.base_path):]
        path = path.strip("/")
        record = RecordedRequest(request.method, path, request.query, request.authorization, request.started)
        with self._lock:
            self.requests.append(record)
            index = len(self.requests) - 1
        try:
            return self.answer(path, request.query)
        finally:
            with self._lock:
                if index < len(self.requests) and self.requests[index] is record:
                    self.requests[index] = RecordedRequest(record.method, record.path, record.query,
                                                           record.authorization, record.started, time.monotonic())

    def _sleep(self, seconds: float) -> None:
        if self._server is not None:
            self._server.sleep(seconds)
        elif seconds > 0:
            time.sleep(seconds)

    def answer(self, path: str, query: str) -> Response:
        """The answer to a GET of ``path`` (relative to the base) with ``query``."""
        relative = path + ("?" + query if query else "")
        override = self._find_override(relative)
        self._sleep(override.delay if override is not None and override.delay is not None else self.delay)
        if override is not None and (override.body is not None or override.status != 200):
            return Response(override.status, override.body, override.content_type, override.headers)
        if self.fail_status is not None:
            return Response(self.fail_status, operation_outcome(f"test server answers {self.fail_status}"),
                            FHIR_JSON)
        if self.html:
            return Response(200, "<!doctype html><html><body><h1>Log in</h1></body></html>",
                            "text/html; charset=utf-8")
        params = parse_qsl(query, keep_blank_values=True)
        if self.page_size is not None and "/" not in path:  # a search, not a read
            counts = [int(v) for n, v in params if n == "_count" and v.isdigit()]
            size = min([self.page_size, *counts])
            params = [(n, v) for n, v in params if n != "_count"] + [("_count", str(size))]
        try:
            result = search(self.resources, path + ("?" + urlencode(params, safe="|,:/") if params else ""),
                            base_url=self.base_url)
        except ValueError:
            return Response(400, operation_outcome("unsupported query", "not-supported"), FHIR_JSON)
        if result is None:
            return Response(404, operation_outcome("not found", "not-found"), FHIR_JSON)
        return Response(200, result, FHIR_JSON)


@pytest.fixture
def fhir_server() -> Iterator[FhirTestServer]:
    """A started, empty ``FhirTestServer``; set ``.resources`` and behaviours in the test."""
    with FhirTestServer() as server:
        yield server
