"""Slow and internal FHIR servers (issue 15, findings 5 and 6), with real sockets on loopback.

- A server that sends headers and then one byte every half second must not hold a fetch thread
  past the call's deadline, and must not delay calls to a healthy server, then or afterwards.
- Under ``FHIR_SERVERS=*`` no internal address is ever contacted, whether written as an IP literal,
  a local name, or a name that resolves to one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from drip_server import DripServer, Listener
from fhir_server import FhirTestServer
from flask import Flask

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture, record_resources, shift_fixture
from cds_service.engine.fhir import FhirClient, FhirError, gather
from cds_service.engine.services import ServiceDefinition, default_services
from cds_service.errors import PreconditionFailed
from cds_service.protocol import HookRequest
from cds_service.settings import load_settings

HOOK = "order-select"
TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
}
SERVICE = ServiceDefinition(id="t", hook=HOOK, title="t", description="d", usage_requirements="u",
                            prefetch=TEMPLATES, required_keys=frozenset(TEMPLATES))
RECORD = [{"resourceType": "Patient", "id": "p1"},
          {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}]
REAL_GETADDRINFO = socket.getaddrinfo


def _request(fhir_server: str | None) -> HookRequest:
    context = {"patientId": "p1", "userId": "Practitioner/d1", "draftOrders": {"resourceType": "Bundle"}}
    return HookRequest(hook=HOOK, hook_instance="0d1c1b2e-0000-4000-8000-000000000015", context=context,
                       prefetch=None, fhir_server=fhir_server, access_token="tok", patient_id="p1",
                       user_id="Practitioner/d1", encounter_id=None)


def _ivig_fixture() -> dict[str, Any]:
    for name in list_fixtures():
        fixture = load_fixture(name)
        if (fixture.get("expected") or {}).get(HOOK):
            return fixture
    pytest.skip("no IVIG fixture")


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names under ``.test`` resolve to the addresses the test puts here; lookups are counted."""
    table: dict[str, list[str]] = {}
    calls: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            calls.append(host)
            if host not in table:
                raise socket.gaierror(socket.EAI_NONAME, "unknown test name")
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                     (ip, int(port)) if ":" not in ip else (ip, int(port), 0, 0)) for ip in table[host]]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    table["__calls__"] = calls  # the test reads the lookups here
    return table


# --------------------------------------------------------------------------------------------------
# A fetch ends at its deadline, to the byte
# --------------------------------------------------------------------------------------------------

def _timed_get(client: FhirClient, url: str, timeout: float, allow_list: list[str]) -> tuple[str, float]:
    """(FhirError reason, seconds) of ``client.get``, run in a thread so that a fetch that does not
    end fails the test instead of hanging it."""
    outcome: list[tuple[str, float]] = []

    def fetch() -> None:
        started = time.monotonic()
        try:
            client.get(url, None, timeout, allow_list=allow_list)
            outcome.append(("ok", time.monotonic() - started))
        except FhirError as exc:
            outcome.append((exc.reason, time.monotonic() - started))

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(timeout + 3)
    assert outcome, f"the fetch was still running {timeout + 3:.1f} s after a {timeout} s budget"
    return outcome[0]


@pytest.mark.parametrize("drip_headers", [False, True], ids=["dripping-body", "dripping-headers"])
def test_a_dripping_server_is_cut_at_the_deadline(drip_headers: bool) -> None:
    # A long per-read timeout: only the deadline can end these fetches.
    with DripServer(interval=0.2, drip_headers=drip_headers) as drip, \
            FhirClient(pool_size=4, read_timeout_s=30) as client:
        reason, elapsed = _timed_get(client, drip.base_url + "/Patient/p1", 0.8, [drip.base_url])
        assert reason == "timeout"
        assert 0.75 <= elapsed < 1.1
        assert drip.bytes_sent >= 2  # it was dripping, and each byte reset the socket timeout
        assert drip.wait_closed(2.0)  # the connection was closed, not left to drip on


def test_a_tls_handshake_that_never_ends_is_cut_at_the_deadline() -> None:
    # A TLS record header announcing 16 kB, then its bytes one by one: the handshake reads on
    # until the connect budget (the time left, never the 30 s read timeout) runs out.
    record = b"\x16\x03\x03\x40\x00" + b"\x02" * 0x4000
    with DripServer(interval=0.1, payload=record) as drip, FhirClient(pool_size=2, read_timeout_s=30) as client:
        base = f"https://127.0.0.1:{drip.port}/fhir"
        reason, elapsed = _timed_get(client, base + "/Patient/p1", 0.8, [base])
        assert reason == "timeout"
        assert elapsed < 1.1
        assert drip.bytes_sent >= 2
        assert drip.wait_closed(2.0)


def test_a_server_silent_longer_than_the_read_timeout_is_left_before_the_deadline() -> None:
    with DripServer(interval=3.0) as drip, FhirClient(pool_size=2, read_timeout_s=0.3) as client:
        reason, elapsed = _timed_get(client, drip.base_url + "/Patient/p1", 10.0, [drip.base_url])
        assert reason == "read timeout"
        assert elapsed < 1.0


def test_the_read_timeout_setting_reaches_the_client() -> None:
    settings = load_settings({"FHIR_READ_TIMEOUT_S": "0.25"}, environ={})
    with FhirClient.from_settings(settings) as client:
        assert client.read_timeout_s == 0.25
    with pytest.raises(ValueError, match="FHIR_READ_TIMEOUT_S"):
        load_settings({"FHIR_READ_TIMEOUT_S": "0"}, environ={})


def test_one_origin_gets_at_most_its_share_of_the_pool() -> None:
    with FhirTestServer(RECORD) as slow, FhirTestServer(RECORD) as fast, \
            FhirClient(pool_size=4, per_origin=2) as client:
        slow.delay = 0.4
        settings = load_settings({"FHIR_SERVERS": f"{slow.base_url},{fast.base_url}", "FHIR_DEADLINE_S": 5},
                                 environ={})
        services = {f"s{i}": ServiceDefinition(id=f"s{i}", hook=HOOK, title="t", description="d",
                                               usage_requirements="u", prefetch=TEMPLATES,
                                               required_keys=frozenset())
                    for i in range(3)}
        slow_calls = [threading.Thread(target=gather, args=(_request(slow.base_url), service, settings, client))
                      for service in services.values()]
        for thread in slow_calls:
            thread.start()
        time.sleep(0.1)  # 9 slow fetches queued or running
        started = time.monotonic()
        result = gather(_request(fast.base_url), SERVICE, settings, client)
        fast_elapsed = time.monotonic() - started
        for thread in slow_calls:
            thread.join()
        assert {o.status for o in result.outcomes.values()} <= {"fetched", "null"}
        assert fast_elapsed < 0.3  # not queued behind the slow server's 9 fetches (0.4 s each)
        assert slow.max_in_flight == 2


# --------------------------------------------------------------------------------------------------
# End to end: dripping calls do not delay calls to a healthy server
# --------------------------------------------------------------------------------------------------

def test_dripping_server_does_not_delay_a_healthy_one(make_app: Callable[..., Flask]) -> None:
    fixture = _ivig_fixture()
    service_id = next(s.id for s in default_services().values() if s.hook == HOOK)
    with FhirTestServer() as healthy, DripServer(interval=0.5) as drip:
        healthy.resources = record_resources(shift_fixture(fixture))
        app = make_app(CONTENT_POLICY="all", FHIR_SERVERS=f"{healthy.base_url},{drip.base_url}",
                       FHIR_DEADLINE_S=2)

        def call(server: str) -> tuple[int, float, dict[str, Any]]:
            started = time.monotonic()
            response = app.test_client().post(f"/cds-services/{service_id}",
                                              json=build_request(fixture, HOOK, prefetch=False,
                                                                 fhir_server=server))
            return response.status_code, time.monotonic() - started, response.get_json()

        status, normal, _ = call(healthy.base_url)  # warm: content loaded, connections pooled
        assert status == 200
        status, normal, _ = call(healthy.base_url)
        assert status == 200

        dripping: list[tuple[int, float, dict[str, Any]]] = []
        threads = [threading.Thread(target=lambda: dripping.append(call(drip.base_url))) for _ in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # every dripping call has its fetches running or queued
        status, during, body = call(healthy.base_url)
        assert status == 200, body
        assert during < max(1.0, 5 * normal)  # before the fix: 412 after the whole 2 s deadline
        for thread in threads:
            thread.join()
        assert [s for s, _, _ in dripping] == [412] * 20
        assert max(e for _, e, _ in dripping) < 2.5  # each ends at its own deadline

        # Nothing left dripping into a held thread: every connection to the slow server is closed
        # soon after the deadline (before the fix: 32 fetch threads held for ~40 s), and the next
        # call to the healthy server is as fast as before.
        assert drip.wait_closed(2.0)
        status, after, body = call(healthy.base_url)
        assert status == 200, body
        assert after < max(1.0, 5 * normal)


# --------------------------------------------------------------------------------------------------
# FHIR_SERVERS=* never reaches internal addresses
# --------------------------------------------------------------------------------------------------

def _star(**extra: Any) -> Any:
    return load_settings({"FHIR_SERVERS": "*", "FHIR_DEADLINE_S": 2, **extra}, environ={})


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener() as running:
        yield running


@pytest.fixture
def client() -> Iterator[FhirClient]:
    with FhirClient(pool_size=4) as fhir_client:
        yield fhir_client


@pytest.mark.parametrize("template", [
    "https://127.0.0.1:{port}/fhir", "http://127.0.0.1:{port}/fhir", "https://localhost:{port}/fhir",
    "http://localhost:{port}/fhir", "https://LocalHost:{port}/fhir", "https://[::ffff:127.0.0.1]:{port}/fhir",
    "https://127.1:{port}/fhir", "https://2130706433:{port}/fhir", "https://0x7f000001:{port}/fhir",
    "https://0177.0.0.1:{port}/fhir", "https://169.254.169.254/latest/meta-data",
    "https://[fd00:ec2::254]/latest", "https://10.0.0.1/fhir", "https://100.100.100.200/fhir",
    "https://[fe80::1]/fhir", "https://0.0.0.0:{port}/fhir", "https://[::]:{port}/fhir",
])
def test_internal_ip_literals_and_local_names_are_never_contacted(template: str, listener: Listener,
                                                                  client: FhirClient) -> None:
    server = template.format(port=listener.port)
    with pytest.raises(PreconditionFailed, match="server not allowed"):
        gather(_request(server), SERVICE, _star(), client)
    assert listener.accepted == 0


def test_ipv6_loopback_is_never_contacted(client: FhirClient) -> None:
    try:
        listener6 = Listener("::1", socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with listener6:
        with pytest.raises(PreconditionFailed, match="server not allowed"):
            gather(_request(f"https://[::1]:{listener6.port}/fhir"), SERVICE, _star(), client)
        assert listener6.accepted == 0


@pytest.mark.parametrize("addresses", [["127.0.0.1"], ["127.0.0.1", "8.8.8.8"], ["8.8.8.8", "127.0.0.1"]],
                         ids=["loopback", "loopback-first", "loopback-second"])
def test_a_name_resolving_to_an_internal_address_is_never_contacted(addresses: list[str], listener: Listener,
                                                                     client: FhirClient,
                                                                     fake_dns: dict[str, Any]) -> None:
    fake_dns["fhir.internal.test"] = addresses
    server = f"https://fhir.internal.test:{listener.port}/fhir"
    with pytest.raises(PreconditionFailed, match="every required query failed") as info:
        gather(_request(server), SERVICE, _star(), client)
    assert listener.accepted == 0
    assert fake_dns["__calls__"]  # the name was looked up: the refusal came after resolution
    assert set(info.value.missing_keys) == set(TEMPLATES)
    with pytest.raises(FhirError, match="^server not allowed$"):
        client.get(server + "/Patient/p1", None, 1.0, allow_list=["*"])
    assert listener.accepted == 0


def test_a_metadata_name_is_refused_after_resolution(client: FhirClient, fake_dns: dict[str, Any]) -> None:
    fake_dns["metadata.google.test"] = ["169.254.169.254"]
    fake_dns["fd.metadata.test"] = ["fd00:ec2::254"]
    for host in ("metadata.google.test", "fd.metadata.test"):
        with pytest.raises(FhirError, match="^server not allowed$"):
            client.get(f"https://{host}/computeMetadata/v1/", None, 1.0, allow_list=["*"])


def test_an_explicit_entry_may_name_loopback_and_connects_to_the_resolved_address(
        client: FhirClient, fake_dns: dict[str, Any]) -> None:
    with FhirTestServer(RECORD) as server:
        fake_dns["fhir.pinned.test"] = ["127.0.0.1"]
        base = f"http://fhir.pinned.test:{server.port}/fhir"
        settings = load_settings({"FHIR_SERVERS": f"*,{base}"}, environ={})
        result = gather(_request(base), SERVICE, settings, client)
        assert {o.status for o in result.outcomes.values()} <= {"fetched", "null"}
        assert len(server.requests) == len(TEMPLATES)
        # One lookup per new connection, never one per request on a pooled connection.
        assert 1 <= fake_dns["__calls__"].count("fhir.pinned.test") <= len(TEMPLATES)


def test_star_through_the_endpoint_never_contacts_loopback(make_app: Callable[..., Flask],
                                                          listener: Listener) -> None:
    fixture = _ivig_fixture()
    service_id = next(s.id for s in default_services().values() if s.hook == HOOK)
    app = make_app(CONTENT_POLICY="all", FHIR_SERVERS="*")
    for server in (f"https://127.0.0.1:{listener.port}/fhir", f"https://localhost:{listener.port}/fhir",
                   "https://169.254.169.254/fhir"):
        response = app.test_client().post(f"/cds-services/{service_id}",
                                          json=build_request(fixture, HOOK, prefetch=False, fhir_server=server))
        assert response.status_code == 412
    assert listener.accepted == 0
