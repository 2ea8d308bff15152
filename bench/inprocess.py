"""In-process measurements: the Flask app driven by its test client, no sockets.

"Service time" is the wall time of one ``client.post(...)`` including reading the response body: the
Flask/Werkzeug request cycle, auth (off), parsing, gather, facts, rules, rendering, audit enqueue and
the response JSON.  The calling thread's CPU time for the same call is kept too: on a shared machine it
says what the call costs when wall time is inflated by waiting for a core.  Each call is paired with a
JSON round trip (``json.dumps(json.loads(body))``) of the same body, timed right after it, so the ratio
compares two numbers taken under the same machine conditions.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from flask import Flask
from flask.testing import FlaskClient

from cds_service.http.app import create_app
from cds_service.logs import configure_logging

from .stats import median
from .workloads import Workload, card_ids

# The in-process settings of the brief; MAX_BODY_BYTES is raised only for the scaling series (a
# 20,000-resource body is ~22 MB, over the 5 MiB production limit).
IN_PROCESS_CONFIG: dict[str, Any] = {"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all", "DATABASE_URL": "sqlite://"}
SCALING_MAX_BODY_BYTES = 256 * 1024 * 1024
IN_PROCESS_LOG_LEVEL = "INFO"  # the production default


def make_app(extra: Mapping[str, Any] | None = None) -> Flask:
    app = create_app({**IN_PROCESS_CONFIG, **(extra or {})})
    app.testing = True
    return app


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Keep every log line formatted as in production, but write it to /dev/null (thousands of
    INFO lines would otherwise flood the terminal and time the terminal, not the service)."""
    configure_logging(IN_PROCESS_LOG_LEVEL)  # what create_app does first: install the handler to redirect
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and not isinstance(h, logging.FileHandler)]
    with open(os.devnull, "w", encoding="utf-8") as sink:
        previous = [h.setStream(sink) for h in handlers]
        try:
            yield
        finally:
            for handler, stream in zip(handlers, previous, strict=True):
                if stream is not None:
                    handler.setStream(stream)


@dataclass
class Answer:
    status: int
    cards: list[str]
    body: Any


def post(client: FlaskClient, workload: Workload) -> Answer:
    response = client.post(workload.path, data=workload.body, content_type="application/json")
    try:
        payload = json.loads(response.get_data())
    except ValueError:
        payload = None
    finally:
        response.close()
    return Answer(response.status_code, card_ids(payload), payload)


@dataclass
class Measured:
    """Repeated calls of one workload, each paired with a JSON round trip of its body."""

    workload: Workload
    service_s: list[float] = field(default_factory=list)
    service_cpu_s: list[float] = field(default_factory=list)  # CPU time of the calling thread
    json_s: list[float] = field(default_factory=list)
    # The floor (issue 16): orjson's decode, and decode + encode, of the same body, timed after each call.
    orjson_decode_s: list[float] = field(default_factory=list)
    orjson_round_trip_s: list[float] = field(default_factory=list)
    status: int = 0
    cards: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.cards == self.workload.expected_cards

    @property
    def ratio(self) -> float:
        return median(self.service_s) / median(self.json_s)

    @property
    def decode_ratio(self) -> float:
        """Median call / median orjson decode of the body."""
        return median(self.service_s) / median(self.orjson_decode_s)

    @property
    def round_trip_ratio(self) -> float:
        """Median call / median orjson decode + encode of the body."""
        return median(self.service_s) / median(self.orjson_round_trip_s)


def measure(client: FlaskClient, workload: Workload, *, repeats: int, warmup: int) -> Measured:
    result = _first(client, workload, warmup)
    gc.collect()
    for _ in range(repeats):
        _timed_call(client, result)
    return result


def measure_interleaved(client: FlaskClient, plan: Sequence[tuple[Workload, int]], *, rounds: int,
                        warmup: int) -> list[Measured]:
    """``plan``: (workload, calls) pairs, measured in ``rounds`` rounds, each round making its share of
    every workload's calls in turn.  Figures compared with each other (the scaling ratio) then come
    from the same stretches of time, so a drift of the machine's speed over the run moves both."""
    results = [_first(client, workload, warmup) for workload, _ in plan]
    gc.collect()
    for index in range(rounds):
        for result, (_, calls) in zip(results, plan, strict=True):
            share = calls // rounds + (1 if index < calls % rounds else 0)
            for _ in range(share):
                _timed_call(client, result)
    return results


def _first(client: FlaskClient, workload: Workload, warmup: int) -> Measured:
    first = post(client, workload)
    for _ in range(max(0, warmup - 1)):
        post(client, workload)
    return Measured(workload, status=first.status, cards=first.cards)


def _timed_call(client: FlaskClient, result: Measured) -> None:
    """One call, then the JSON round trip and the orjson floor of the same body."""
    workload = result.workload
    body = workload.body
    cpu_started = time.thread_time()
    started = time.perf_counter()
    response = client.post(workload.path, data=body, content_type="application/json")
    response.get_data()
    response.close()
    middle = time.perf_counter()
    cpu_used = time.thread_time() - cpu_started
    json.dumps(json.loads(body))
    ended = time.perf_counter()
    decoded = orjson.loads(body)
    orjson_decoded = time.perf_counter()
    orjson.dumps(decoded)
    orjson_ended = time.perf_counter()
    del decoded
    result.service_s.append(middle - started)
    result.service_cpu_s.append(cpu_used)
    result.json_s.append(ended - middle)
    result.orjson_decode_s.append(orjson_decoded - ended)
    result.orjson_round_trip_s.append(orjson_ended - ended)


def measure_empty_request(client: FlaskClient, repeats: int) -> list[float]:
    """The test client's own cost: GET /healthz (no body, no work), for context."""
    samples: list[float] = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get("/healthz")
        response.get_data()
        response.close()
        samples.append(time.perf_counter() - started)
    return samples


@dataclass
class GcStats:
    """The cyclic garbage collector's work during one call (pyinstrument cannot show it: it charges
    collection time to whatever Python frame happened to allocate)."""

    call_s: float
    collections: dict[int, int]  # generation -> count
    gc_s: float


def gc_during_call(client: FlaskClient, workload: Workload) -> GcStats:
    counts: dict[int, int] = {0: 0, 1: 0, 2: 0}
    spent = 0.0
    started_at = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal spent, started_at
        if phase == "start":
            started_at = time.perf_counter()
        else:
            spent += time.perf_counter() - started_at
            counts[info["generation"]] = counts.get(info["generation"], 0) + 1

    gc.collect()
    gc.callbacks.append(callback)
    try:
        started = time.perf_counter()
        response = client.post(workload.path, data=workload.body, content_type="application/json")
        response.get_data()
        response.close()
        elapsed = time.perf_counter() - started
    finally:
        gc.callbacks.remove(callback)
    return GcStats(elapsed, counts, spent)


def process_cpu_per_call(app: Flask, client: FlaskClient, mix: list[Workload], calls: int) -> float:
    """CPU seconds of the whole process (every thread, the audit writer included) per call of ``mix``
    taken in turn: comparable with the gunicorn processes' CPU per call."""
    store = getattr(app.extensions.get("cds_runtime"), "store", None)
    flush = getattr(store, "flush", None)
    for workload in mix:
        post(client, workload)
    if callable(flush):
        flush()
    started = time.process_time()
    for index in range(calls):
        workload = mix[index % len(mix)]
        response = client.post(workload.path, data=workload.body, content_type="application/json")
        response.get_data()
        response.close()
    if callable(flush):
        flush()
    return (time.process_time() - started) / max(1, calls)
