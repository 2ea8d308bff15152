"""The CDS Hooks HTTP surface (Flask views, HTTP only): discovery, hook calls, feedback, health.

Each view authenticates with the app's verifier (``http/auth``), parses with ``protocol`` and hands
the work to the engine's runtime; errors are raised and answered by ``http/app.py``.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from cds_service.engine import pipeline
from cds_service.engine.store import AuditRecord, IssuedCard, feedback_field_problem
from cds_service.errors import BadRequest, CdsError, NotFound, PayloadTooLarge
from cds_service.http import collector
from cds_service.http.context import base_url, runtime, verifier
from cds_service.logs import mark_sensitive
from cds_service.protocol import check_content_type, parse_feedback, parse_json, parse_request

log = logging.getLogger("cds_service.http.api")

bp = Blueprint("cds", __name__)


def authenticate() -> str | None:
    """The calling client's ``iss`` for this endpoint (None for the anonymous client of ``AUTH=off``);
    ``errors.Unauthorized`` when the verifier refuses the call."""
    client = verifier().verify(request.headers.get("Authorization"), base_url() + request.path)
    return client.iss or None


def read_json() -> Any:
    return parse_json(read_json_body(), runtime().limits)


def read_json_body() -> bytes:
    """The body of a request that says it is JSON (415 otherwise), not yet decoded."""
    check_content_type(request.headers.get("Content-Type"))
    return read_body()


def read_body() -> bytes:
    """The request body; ``PayloadTooLarge`` (413) past ``MAX_BODY_BYTES`` also for a chunked body (no
    Content-Length: werkzeug would cut it at the limit, and the truncated JSON would answer 400)."""
    limit = runtime().settings.MAX_BODY_BYTES
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        # One read of the declared length: werkzeug's get_data() reads 64 KiB at a time, a Python loop
        # that under gunicorn re-buffers the rest of the body on every turn (slow for megabyte bodies).
        body = request.environ["wsgi.input"].read(length) if length else b""
        if len(body) < length:
            raise BadRequest(f"request body ended after {len(body)} of its {length} declared bytes",
                             code="incomplete_body")
        return bytes(body)
    if not request.environ.get("wsgi.input_terminated"):
        return request.get_data(cache=False)
    stream = request.environ["wsgi.input"]
    body = bytearray()
    while len(body) <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    return bytes(body)


def _json(body: Any, status: int = 200) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


@bp.get("/cds-services")
def discovery() -> Response:
    authenticate()
    services = [s.discovery_entry() for s in runtime().services.values()]
    return _json({"services": services})


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    started = time.perf_counter()
    # The decoded body is alive only inside _call (a large one with the cyclic collector paused).
    with collector.paused_for(request.content_length):
        return _call(service_id, started)


def _call(service_id: str, started: float) -> Response:
    rt = runtime()
    service = rt.services.get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id {service_id[:100]!r}; see GET /cds-services")
    iss: str | None = None

    def audit_refused(exc: CdsError | HTTPException) -> None:
        # Refused calls are audited too (no patient: nothing was read).
        status = exc.status if isinstance(exc, CdsError) else (exc.code or 400)
        # Rate-limited per worker (AUDIT_4XX_PER_MINUTE): the rest are counted in one summary row.
        rt.store.audit_refused(AuditRecord(service_id=service.id, hook=service.hook, outcome="4xx",
                                           status_code=status, client_iss=iss,
                                           latency_ms=(time.perf_counter() - started) * 1000),
                               rt.settings.AUDIT_4XX_PER_MINUTE)

    try:
        iss = authenticate()  # may wait (keys, the replay store): before the call slot is taken
        body = read_json_body()
    except (CdsError, HTTPException) as exc:
        audit_refused(exc)
        raise
    # The computing holds one of the process's call slots (engine/gate.py); waits give it up.
    with rt.gate.held():
        try:
            hook_request = parse_request(parse_json(body, rt.limits), service.hook, rt.limits)
        except (CdsError, HTTPException) as exc:
            audit_refused(exc)
            raise
        del body
        mark_sensitive(hook_request.patient_id, hook_request.access_token, hook_request.encounter_id)
        try:
            result = pipeline.run(rt, service, hook_request, base_url=base_url, client_iss=iss, started=started,
                                  client_call=True)
        except BadRequest as exc:  # the prefetch's count limit, checked once an IVIG order needs it
            audit_refused(exc)
            raise
        rt.store.audit(result.audit)
        log.info("hook call service=%s outcome=%s cards=%s withheld=%d ms=%.1f", service.id,
                 result.audit.outcome, ",".join(c["cardId"] for c in result.audit.cards) or "-",
                 len(result.withheld), result.audit.latency_ms)
        return _json(result.body, result.status)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    if service_id not in rt.services:
        raise NotFound(f"no CDS service with id {service_id[:100]!r}; see GET /cds-services")
    iss = authenticate()
    items = parse_feedback(read_json(), rt.limits)
    check_feedback(service_id, items, iss)
    added = rt.store.add_feedback(service_id, items, iss)
    log.info("feedback service=%s items=%d stored=%d", service_id, len(items), added)
    return _json({})


def issued_card(card_uuid: str) -> IssuedCard | None:
    """The card this service issued under ``card_uuid`` (the interface the feedback check needs; issue
    14's issued-cards record provides the same at merge)."""
    try:
        return runtime().store.issued_card(card_uuid)
    except SQLAlchemyError as exc:
        raise CdsError("feedback store unavailable; try again later", status=503) from exc


def check_feedback(service_id: str, items: list[dict[str, Any]], iss: str | None) -> None:
    """Each item fits the store's columns (400) and names a card this service issued, on this service, to
    this client, within ``FEEDBACK_WINDOW_HOURS`` (404 otherwise: no card of another client is confirmed)."""
    for index, item in enumerate(items):
        problem = feedback_field_problem(item)
        if problem:
            raise BadRequest(f"$.feedback[{index}].{problem}", code="feedback_field_too_long")
    window = timedelta(hours=runtime().settings.FEEDBACK_WINDOW_HOURS)
    now = datetime.now(UTC)
    for index, item in enumerate(items):
        issued = issued_card(item["card"])
        if (issued is None or issued.service_id != service_id or issued.client_iss != (iss or "")
                or now - issued.issued_at > window):
            raise NotFound(f"$.feedback[{index}].card: no card with this uuid was issued to this client by "
                           f"this service in the last {runtime().settings.FEEDBACK_WINDOW_HOURS:g} hours")


@bp.get("/healthz")
def healthz() -> Response:
    return _json({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Can this replica answer hook calls?  Content loaded and the ``jti`` replay store reachable: 503
    otherwise (with the reasons).  Trouble with the feedback/audit store alone is reported in the body
    (``warnings``) and logged, but stays 200: hook calls do not need it, and a shared database outage
    must not take every replica out of the load balancer at once.  (With no Redis the database is
    also the replay store, and then its outage is a reason.)"""
    rt = runtime()
    problems: list[str] = []
    warnings: list[str] = []
    if not rt.catalog.cards:
        problems.append("no card content loaded")
    replay_problem = verifier().readiness_problem()
    if replay_problem:
        problems.append(replay_problem)
    store_problem = rt.store.ping()
    if store_problem:
        warnings.append(f"feedback/audit store unreachable ({store_problem}): audit rows are counted as lost, "
                        "feedback is refused with 503")
        log.warning("readyz: %s", warnings[-1])
    body: dict[str, Any] = {
        "status": "ready" if not problems else "not-ready",
        "cards": len(rt.catalog.cards),
        "valueSets": len(rt.terminology.value_sets),
        "audit": {"written": rt.store.audit_written, "lost": rt.store.audit_lost},
    }
    if problems:
        body["reasons"] = problems
        log.warning("readyz: not ready: %s", "; ".join(problems))
    if warnings:
        body["warnings"] = warnings
    return _json(body, 200 if not problems else 503)
