"""One hook call computing at a time per process (engine/gate.py, issue 16): calls take the slot in
turn, give it up while they wait for a slow database or a FHIR server, and a call stuck with it never
stops the others for good.  A hung database costs a hook call STORE_TIMEOUT_S at most."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from flask import Flask

from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine import gate
from cds_service.engine.gate import CallGate, released, wait_for
from cds_service.engine.services import default_services


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def holder() -> Iterator[Callable[[CallGate], threading.Event]]:
    """``holder(g)``: a thread that takes ``g``'s slot and keeps it until the returned event is set."""
    events: list[threading.Event] = []

    def start(call_gate: CallGate) -> threading.Event:
        taken, done = threading.Event(), threading.Event()

        def hold() -> None:
            with call_gate.held():
                taken.set()
                done.wait(10)

        _in_thread(hold)
        assert taken.wait(5)
        events.append(done)
        return done

    yield start
    for event in events:
        event.set()


def _try_take(call_gate: CallGate, within: float) -> bool:
    """Whether another thread gets the slot within ``within`` seconds."""
    got = threading.Event()

    def take() -> None:
        with call_gate.held():
            got.set()

    _in_thread(take)
    return got.wait(within)


def test_calls_take_the_slot_in_turn(holder: Callable[[CallGate], threading.Event]) -> None:
    call_gate = CallGate(1)
    done = holder(call_gate)
    assert not _try_take(call_gate, 0.2)
    done.set()
    assert _try_take(call_gate, 5)


def test_two_slots_let_two_calls_in(holder: Callable[[CallGate], threading.Event]) -> None:
    call_gate = CallGate(2)
    holder(call_gate)
    assert _try_take(call_gate, 5)


def test_no_slots_means_no_gate(holder: Callable[[CallGate], threading.Event]) -> None:
    call_gate = CallGate(0)
    holder(call_gate)
    assert _try_take(call_gate, 1)


def test_the_slot_is_given_up_while_waiting() -> None:
    call_gate = CallGate(1)
    inside, leave = threading.Event(), threading.Event()
    back: list[float] = []

    def waiting_call() -> None:
        with call_gate.held():
            with released():
                inside.set()
                leave.wait(10)
            back.append(time.monotonic())  # the slot is taken back before going on

    _in_thread(waiting_call)
    assert inside.wait(5)
    other_done = threading.Event()
    other_left: list[float] = []

    def other_call() -> None:
        with call_gate.held():
            leave.set()  # the waiting call's wait ends while this one computes
            time.sleep(0.2)
            other_left.append(time.monotonic())
        other_done.set()

    _in_thread(other_call)
    assert other_done.wait(5)
    deadline = time.monotonic() + 5
    while not back and time.monotonic() < deadline:
        time.sleep(0.01)
    assert back and back[0] >= other_left[0], "the waiting call went on only once the slot was free"


def test_a_thread_holding_the_slot_takes_no_second() -> None:
    call_gate = CallGate(1)
    with call_gate.held(), call_gate.held():
        pass
    assert _try_take(call_gate, 1), "the slot was given back once"


def test_a_stuck_call_stops_the_others_for_a_bounded_time(monkeypatch: pytest.MonkeyPatch,
                                                          holder: Callable[[CallGate], threading.Event]) -> None:
    monkeypatch.setattr(gate, "MAX_WAIT_S", 0.1)
    call_gate = CallGate(1)
    done = holder(call_gate)
    started = time.monotonic()
    with call_gate.held():
        waited = time.monotonic() - started
    assert 0.08 <= waited < 2
    assert call_gate.waited_out == 1
    done.set()  # the stuck call ends: its slot comes back, and only once
    assert _try_take(call_gate, 5)


def test_a_quick_database_answer_keeps_the_slot() -> None:
    call_gate = CallGate(1)
    future: Future[str] = Future()
    got: list[bool] = []

    def call() -> None:
        with call_gate.held():
            threading.Timer(0.01, future.set_result, ("ok",)).start()
            assert wait_for(future, timeout=2) == "ok"
            got.append(not _try_take(call_gate, 0.0))

    thread = _in_thread(call)
    thread.join(5)
    assert got == [True]


def test_a_slow_database_gives_the_slot_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate, "GRACE_S", 0.05)
    call_gate = CallGate(1)
    future: Future[str] = Future()
    waiting = threading.Event()
    result: list[str] = []

    def call() -> None:
        with call_gate.held():
            waiting.set()
            result.append(wait_for(future, timeout=5))

    _in_thread(call)
    assert waiting.wait(5)
    assert _try_take(call_gate, 2), "another call computes while this one waits past the grace"
    future.set_result("late")
    deadline = time.monotonic() + 5
    while not result and time.monotonic() < deadline:
        time.sleep(0.01)
    assert result == ["late"]


# -- over the public surface -------------------------------------------------------------------------


def _request(fixture: str) -> dict[str, Any]:
    service = default_services()["ivig-order-select"]
    return build_request(load_fixture(fixture), "order-select", templates=service.prefetch)


def _hung_store(app: Flask) -> threading.Event:
    """The app's store answers no decision-memory query until the returned event is set."""
    hang = threading.Event()
    app.extensions["cds_runtime"].store.remember = lambda *args, **kwargs: hang.wait(30)
    return hang


def test_a_hung_database_costs_a_call_the_store_timeout(make_app: Callable[..., Flask],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(CONTENT_POLICY="all", STORE_TIMEOUT_S=0.3)
    hang = _hung_store(app)
    try:
        started = time.monotonic()
        response = app.test_client().post("/cds-services/ivig-order-select", json=_request("pl7-ro52-rpild"))
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert response.get_json()["cards"], "the cards are shown, not recorded"
        assert elapsed < 2.0
        assert "decision memory not available (StoreTimeout)" in caplog.text
    finally:
        hang.set()


def test_other_calls_compute_while_one_waits_for_the_database(make_app: Callable[..., Flask]) -> None:
    app = make_app(CONTENT_POLICY="all", STORE_TIMEOUT_S=10)
    hang = _hung_store(app)
    slow_done = threading.Event()

    def slow_call() -> None:
        app.test_client().post("/cds-services/ivig-order-select", json=_request("pl7-ro52-rpild"))
        slow_done.set()

    try:
        _in_thread(slow_call)
        time.sleep(0.3)  # the slow call is waiting for the database by now
        started = time.monotonic()
        quick = app.test_client().post("/cds-services/ivig-order-select", json=_request("not-ivig-amoxicillin"))
        assert quick.status_code == 200 and quick.get_json() == {"cards": []}
        assert time.monotonic() - started < 2.0, "the fast path did not queue behind the waiting call"
        assert not slow_done.is_set()
    finally:
        hang.set()


def test_other_calls_compute_while_one_waits_for_a_fhir_server(make_app: Callable[..., Flask]) -> None:
    from fhir_server import FhirTestServer

    from cds_service.devtools.fixtures import record_resources

    fixture = load_fixture("pl7-ro52-rpild")
    with FhirTestServer(record_resources(fixture)) as served:
        served.delay = 3.0  # every FHIR request takes 3 s
        app = make_app(CONTENT_POLICY="all", FHIR_SERVERS=served.base_url, FHIR_DEADLINE_S=6,
                       FHIR_READ_TIMEOUT_S=5)
        service = default_services()["ivig-order-select"]
        slow_body = build_request(fixture, "order-select", templates=service.prefetch, prefetch=False,
                                  fhir_server=served.base_url)
        slow_body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                          "scope": "patient/*.read", "subject": "ivig-cds"}
        slow_done = threading.Event()

        def slow_call() -> None:
            app.test_client().post("/cds-services/ivig-order-select", json=slow_body)
            slow_done.set()

        _in_thread(slow_call)
        deadline = time.monotonic() + 5
        while not served.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert served.requests, "the slow call is waiting for the FHIR server"
        started = time.monotonic()
        quick = app.test_client().post("/cds-services/ivig-order-select", json=_request("pl7-ro52-rpild"))
        assert quick.status_code == 200 and quick.get_json()["cards"]
        assert time.monotonic() - started < 1.5, "a fully prefetched call did not queue behind the waiting one"
        assert not slow_done.is_set()
        assert slow_done.wait(15)
