"""Fallback: five prefetch keys missing, fetched by the service from a slow loopback FHIR server.

The server is the project's test server (``tests/fhir_server.py``), answering from the typical
patient's record with a fixed delay per request.  "One query" is a plain ``requests`` GET of one of
the five missing queries against the same server (a fresh pooled session, like the service's own
client); the ratio is the hook call's median over the single query's median, taken in the same run,
calls and single queries interleaved.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from flask.testing import FlaskClient

from cds_service.devtools.fixtures import record_resources, shift_fixture
from cds_service.engine.services import default_services
from cds_service.protocol import render_template

from . import profiling, workloads
from .inprocess import make_app, post
from .profiling import Profile
from .stats import median

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from fhir_server import FhirTestServer  # noqa: E402  (tests/ is not a package)


@dataclass
class FallbackResult:
    workload: workloads.Workload
    delay_s: float
    call_s: list[float] = field(default_factory=list)
    query_s: list[float] = field(default_factory=list)
    status: int = 0
    cards: list[str] = field(default_factory=list)
    server_requests_per_call: float = 0.0
    max_in_flight: int = 0
    gather_log: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.cards == self.workload.expected_cards

    @property
    def ratio(self) -> float:
        return median(self.call_s) / median(self.query_s)


class _LastMessage(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.message = record.getMessage()


@contextmanager
def _capture(logger_name: str) -> Iterator[_LastMessage]:
    handler = _LastMessage()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def single_queries(workload_fixture: dict[str, object]) -> list[str]:
    """The five missing keys' queries, relative to the FHIR base, as the service renders them."""
    templates = default_services()[workloads.SERVICE_ID].prefetch
    context = {"patientId": workload_fixture["patientId"], "userId": workload_fixture["userId"]}
    queries = []
    for key in workloads.FALLBACK_MISSING_KEYS:
        url = render_template(templates[key], context, encode=False)
        if url is not None:
            queries.append(url)
    return queries


@contextmanager
def _setup(delay_s: float) -> Iterator[tuple[FhirTestServer, FlaskClient, workloads.Workload, list[str]]]:
    fixture = workloads.typical_fixture()
    with FhirTestServer(record_resources(shift_fixture(fixture))) as server:
        server.delay = delay_s
        app = make_app({"FHIR_SERVERS": server.origin})
        yield server, app.test_client(), workloads.fallback(server.base_url), single_queries(fixture)


def run(*, delay_s: float, repeats: int, warmup: int) -> FallbackResult:
    headers = {"Accept": "application/fhir+json"}
    with _setup(delay_s) as (server, client, workload, queries), requests.Session() as session:
        result = FallbackResult(workload, delay_s)
        first = post(client, workload)
        result.status, result.cards = first.status, first.cards
        for index in range(max(0, warmup - 1)):
            post(client, workload)
            session.get(f"{server.base_url}/{queries[index % len(queries)]}", headers=headers,
                        timeout=10).raise_for_status()
        server.reset()
        server.delay = delay_s
        with _capture("cds_service.engine.fhir") as gather_log:
            for index in range(repeats):
                started = time.perf_counter()
                response = client.post(workload.path, data=workload.body, content_type="application/json")
                response.get_data()
                response.close()
                result.call_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                answer = session.get(f"{server.base_url}/{queries[index % len(queries)]}", headers=headers,
                                     timeout=10)
                answer.content  # noqa: B018 - read the body, as the service does
                result.query_s.append(time.perf_counter() - started)
                answer.raise_for_status()
            result.gather_log = gather_log.message
        result.server_requests_per_call = (len(server.requests) - repeats) / max(1, repeats)
        result.max_in_flight = server.max_in_flight
    return result


def profile(*, delay_s: float, out_dir: Path, calls: int) -> Profile:
    with _setup(delay_s) as (_server, client, workload, _queries):
        post(client, workload)  # warm the connection pool

        def call() -> None:
            post(client, workload)

        return profiling.profile("fallback", out_dir, call, calls=calls,
                                 note="pyinstrument samples the request thread: the FHIR queries run on the "
                                      "client's worker threads, their wait shows as concurrent.futures.wait")
