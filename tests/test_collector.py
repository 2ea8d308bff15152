"""The cyclic garbage collector is kept off a large call's payload (issue 16): no collection runs
while a large body is decoded and read, the collector is back on afterwards, overlapping calls
share one pause, and a pause cannot last for good."""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine.services import default_services
from cds_service.http import collector

SERVICE = "ivig-order-select"


def _lab(index: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": f"lab-{index}", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}],
                 "text": "Hemoglobin"},
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": f"2026-0{1 + index % 9}-1{index % 10}T08:00:00Z",
        "valueQuantity": {"value": 13.5, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
        "referenceRange": [{"low": {"value": 12, "unit": "g/dL"}, "high": {"value": 16, "unit": "g/dL"}}],
    }


def _large_body(labs: int) -> bytes:
    """The typical patient's order-select call with ``labs`` routine labs more in ``laboratory``:
    about 20 containers each, so 4,000 labs are past one young collection's 50,000."""
    request = build_request(load_fixture("pl7-ro52-rpild"), "order-select",
                            templates=default_services()[SERVICE].prefetch)
    bundle = request["prefetch"]["laboratory"]
    bundle.setdefault("entry", []).extend({"resource": _lab(i)} for i in range(labs))
    return json.dumps(request).encode()


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """Generations of the collections that started while the test ran."""
    seen: list[int] = []

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(callback)
    try:
        yield seen
    finally:
        gc.callbacks.remove(callback)


@pytest.fixture
def large_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(MAX_BODY_BYTES=50_000_000, CONTENT_POLICY="all")


def _post(app: Flask, body: bytes) -> dict[str, Any]:
    response = app.test_client().post(f"/cds-services/{SERVICE}", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_data(as_text=True)
    answer: dict[str, Any] = response.get_json()
    return answer


def test_no_collection_during_a_large_call(large_app: Flask, collections: list[int]) -> None:
    body = _large_body(4000)
    assert len(body) >= collector.PAUSE_MIN_BODY_BYTES
    _post(large_app, body)  # warm: caches filled outside the measured call
    gc.collect()
    collections.clear()
    before = collector.pauses()
    answer = _post(large_app, body)
    assert answer["cards"], "the typical patient's IVIG order gets its cards"
    assert collections == []
    assert collector.pauses() == before + 1
    assert gc.isenabled()


def test_without_the_pause_the_same_call_collects(large_app: Flask, collections: list[int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the test above can fail."""
    monkeypatch.setattr(collector, "PAUSE_MIN_BODY_BYTES", 1 << 40)
    body = _large_body(4000)
    _post(large_app, body)
    gc.collect()
    collections.clear()
    _post(large_app, body)
    assert collections, "a 4,000-lab body allocates past the young threshold"


def test_a_small_call_does_not_pause(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    before = collector.pauses()
    _post(app, _large_body(0))
    assert collector.pauses() == before
    assert gc.isenabled()


def test_overlapping_pauses_end_with_the_last() -> None:
    large = collector.PAUSE_MIN_BODY_BYTES
    with collector.paused_for(large) as first:
        assert first and not gc.isenabled()
        with collector.paused_for(large) as second:
            assert second and not gc.isenabled()
        assert not gc.isenabled(), "the first call is still in flight"
    assert gc.isenabled()


def test_overlap_across_threads() -> None:
    large = collector.PAUSE_MIN_BODY_BYTES
    inside, release = threading.Event(), threading.Event()

    def other_call() -> None:
        with collector.paused_for(large):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_call)
    thread.start()
    assert inside.wait(10)
    with collector.paused_for(large):
        pass
    assert not gc.isenabled(), "the other thread's call is still in flight"
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_long_pause_takes_no_new_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    large = collector.PAUSE_MIN_BODY_BYTES
    monkeypatch.setattr(collector, "MAX_PAUSE_S", -1.0)
    with collector.paused_for(large) as first:
        with collector.paused_for(large) as late:
            assert first and not late
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_collector_turned_off_elsewhere_stays_off() -> None:
    gc.disable()
    try:
        with collector.paused_for(collector.PAUSE_MIN_BODY_BYTES) as joined:
            assert not joined
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_error_inside_ends_the_pause() -> None:
    with pytest.raises(RuntimeError), collector.paused_for(collector.PAUSE_MIN_BODY_BYTES):
        raise RuntimeError("boom")
    assert gc.isenabled()
