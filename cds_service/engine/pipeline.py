"""One hook call, end to end: scope -> gather -> facts -> decide -> render -> audit record.

``run()`` is the only implementation of a hook call: the HTTP API, the demo page and the review
packet all use it.  Its result carries the response body and status, the audit record, and what
was decided on the way (orders in scope, facts, decisions, cards, withheld cards), so a caller
that wants to show *why* never re-computes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from cds_service.clinical import orders as clinical_orders
from cds_service.clinical import rules as clinical_rules
from cds_service.clinical.facts import PatientFacts
from cds_service.clinical.model import Evaluation
from cds_service.clinical.orders import DraftOrder
from cds_service.engine.content import Withheld
from cds_service.engine.fhir import Gathered, gather
from cds_service.engine.runtime import Runtime
from cds_service.engine.services import ServiceDefinition
from cds_service.engine.store import AuditRecord, patient_hmac
from cds_service.engine.workflow import apply_workflow
from cds_service.errors import PreconditionFailed
from cds_service.protocol import HookRequest, check_prefetch
from cds_service.protocol.card import Card, sort_cards

log = logging.getLogger("cds_service.engine.pipeline")

# Prefetch keys whose data decides whether the patient is in the clinical scope at all.
SCOPE_KEYS = ("conditions", "myositisAntibodies")


@dataclass
class CallResult:
    body: dict[str, Any]
    status: int
    audit: AuditRecord
    cards: list[Card] = field(default_factory=list)
    withheld: list[Withheld] = field(default_factory=list)
    orders: list[DraftOrder] = field(default_factory=list)
    gathered: Gathered | None = None
    facts: PatientFacts | None = None
    evaluation: Evaluation | None = None


def today_utc() -> date:
    return datetime.now(UTC).date()


def run(runtime: Runtime, service: ServiceDefinition, request: HookRequest, *,
        base_url: str | Callable[[], str] = "", client_iss: str | None = None,
        started: float | None = None, today: date | None = None, policy: str | None = None,
        client_call: bool = False) -> CallResult:
    """One hook call.  ``base_url`` may be a callable: it is only needed when cards are rendered.
    ``today`` and ``policy`` default to the clock and the configured content policy.
    ``client_call``: the answer goes to a CDS client (shadow mode and decision memory apply, issued
    cards are recorded); the demo page and the review packet leave it False."""
    started = time.perf_counter() if started is None else started
    audit = AuditRecord(service_id=service.id, hook=service.hook, outcome="no-cards", status_code=200,
                        latency_ms=0.0, hook_instance=request.hook_instance, client_iss=client_iss,
                        patient_hmac=patient_hmac(runtime.audit_key, request.patient_id))

    def finish(result: CallResult) -> CallResult:
        # -- workflow (issue 14): per-card switch, shadow mode, decision memory; see workflow.py --
        result = apply_workflow(runtime, result, client_iss=client_iss, client_call=client_call)
        # -- end workflow --
        audit.latency_ms = (time.perf_counter() - started) * 1000
        return result

    entries = request.context.get("draftOrders", {}).get("entry")
    orders = clinical_orders.ivig_orders(service.hook, request.draft_orders, request.selections,
                                         runtime.terminology, entries if isinstance(entries, list) else None)
    if not orders:
        # Most orders are not IVIG: answer at once, read no prefetch, call no server.
        return finish(CallResult({"cards": []}, 200, audit))
    check_prefetch(request.prefetch, runtime.limits)  # read from here on: its count limit applies now
    try:
        gathered = gather(request, service, runtime.settings, runtime.fhir)
    except PreconditionFailed as exc:
        audit.outcome, audit.status_code = "412", 412
        audit.prefetch = {"missing": list(exc.missing_keys)}
        return finish(CallResult(exc.body(), 412, audit, orders=orders))
    audit.prefetch = gathered.summary()
    today = today or today_utc()
    facts = runtime.facts.extract(gathered.resources, today, draft_orders=request.draft_orders,
                                  exclude_references=[o.reference for o in orders],
                                  orders=[o.resource for o in orders])
    # Keys that failed, and keys cut short while paging: both get a data note, never silence.
    unavailable = frozenset(gathered.failed_keys) | frozenset(gathered.incomplete_keys)
    evaluation = clinical_rules.decide(facts, orders, runtime.terminology, runtime.parameters, unavailable)
    undecided = [k for k in SCOPE_KEYS if k in unavailable]
    if undecided and not evaluation.decisions:
        # No card on the data we have, but what decides the cards (conditions, antibodies) could
        # not be read: "no cards" would be silent wrong advice, so nothing can be decided.
        failed = PreconditionFailed(f"cannot decide: {', '.join(undecided)} unavailable", undecided)
        audit.outcome, audit.status_code = "412", 412
        return finish(CallResult(failed.body(), 412, audit, orders=orders, gathered=gathered, facts=facts,
                                 evaluation=evaluation))
    base = base_url() if callable(base_url) else base_url
    policy = policy or runtime.settings.CONTENT_POLICY
    cards: list[Card] = []
    withheld: list[Withheld] = []
    servable = []
    for decision in evaluation.decisions:
        reason = runtime.catalog.servable(decision.card_id, policy, today)
        if reason is not None:
            withheld.append(Withheld(decision.card_id, reason))
        else:
            servable.append(decision)
    fired = frozenset(str(d.card_id) for d in servable)
    for decision in servable:
        cards.append(runtime.renderer.render(decision, evaluation.variables, evaluation.notes, base, policy,
                                             patient_id=request.patient_id, fired=fired))
    cards = sort_cards(cards)
    if withheld:
        log.warning("content withheld under %s: %s", policy,
                    ", ".join(f"{w.card_id} ({w.reason})" for w in withheld))
    audit.outcome = "cards" if cards else "no-cards"
    audit.cards = [c.identity.audit(c.uuid) for c in cards]
    audit.withheld = [{"cardId": w.card_id, "reason": w.reason} for w in withheld]
    return finish(CallResult({"cards": [c.to_json() for c in cards]}, 200, audit, cards, withheld, orders,
                             gathered, facts, evaluation))
