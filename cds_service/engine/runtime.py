"""Everything a request needs that is built once at start-up (value sets, content, services)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cds_service.clinical import facts as clinical_facts
from cds_service.clinical import orders as clinical_orders
from cds_service.clinical import rules as clinical_rules
from cds_service.engine.content import Catalog, Withheld
from cds_service.engine.fhir import FhirClient, Gathered, gather
from cds_service.engine.services import ServiceDefinition, build_services
from cds_service.engine.store import AuditRecord, Store, patient_hmac
from cds_service.errors import PreconditionFailed
from cds_service.protocol import HookRequest, Limits
from cds_service.settings import Settings
from cds_service.terminology import Terminology

log = logging.getLogger("cds_service.engine.runtime")

# Prefetch keys whose data decides whether the patient is in the clinical scope at all.
SCOPE_KEYS = ("conditions", "myositisAntibodies")


@dataclass
class CallResult:
    body: dict[str, Any]
    status: int
    audit: AuditRecord
    withheld: list[Withheld] = field(default_factory=list)


@dataclass
class Runtime:
    settings: Settings
    terminology: Terminology
    catalog: Catalog
    services: dict[str, ServiceDefinition]
    store: Store
    fhir: FhirClient
    audit_key: bytes
    limits: Limits
    started_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        cards_dir = Path(settings.CARDS_DIR)
        terminology = Terminology.load(cards_dir / "valuesets")
        catalog = Catalog.load(cards_dir, terminology)
        store = Store(settings.DATABASE_URL, queue_size=settings.AUDIT_QUEUE_SIZE)
        try:
            store.create_schema()
        except Exception as exc:  # a down store must not stop the service; /readyz says so
            log.warning("store not reachable at start-up (%s); hook calls still served", type(exc).__name__)
        if settings.AUDIT_KEY:
            audit_key = settings.AUDIT_KEY.encode("utf-8")
        else:
            audit_key = secrets.token_bytes(32)
            log.warning("CDS_AUDIT_KEY is not set: patient ids in audit rows are keyed per process "
                        "and cannot be linked across restarts or replicas")
        limits = Limits.from_settings(settings)
        return cls(settings, terminology, catalog, build_services(terminology), store,
                   FhirClient.from_settings(settings), audit_key, limits)

    # -- one hook call ------------------------------------------------------------------
    def today(self) -> date:
        return datetime.now(UTC).date()

    def call(self, service: ServiceDefinition, request: HookRequest, base_url: str | Callable[[], str],
             client_iss: str | None, started: float) -> CallResult:
        """One hook call. ``base_url`` may be a callable: it is only needed when cards are rendered."""
        audit = AuditRecord(service_id=service.id, hook=service.hook, outcome="no-cards", status_code=200,
                            latency_ms=0.0, hook_instance=request.hook_instance, client_iss=client_iss,
                            patient_hmac=patient_hmac(self.audit_key, request.patient_id))
        entries = request.context.get("draftOrders", {}).get("entry")
        orders = clinical_orders.ivig_orders(service.hook, request.draft_orders, request.selections,
                                             self.terminology, entries if isinstance(entries, list) else None)
        if not orders:
            # Most orders are not IVIG: answer at once, read no prefetch, call no server.
            audit.latency_ms = (time.perf_counter() - started) * 1000
            return CallResult({"cards": []}, 200, audit)
        try:
            gathered: Gathered = gather(request, service, self.settings, self.fhir)
        except PreconditionFailed as exc:
            audit.outcome, audit.status_code = "412", 412
            audit.prefetch = {"missing": list(exc.missing_keys)}
            audit.latency_ms = (time.perf_counter() - started) * 1000
            return CallResult(exc.body(), 412, audit)
        audit.prefetch = gathered.summary()
        facts = clinical_facts.extract(gathered.resources, self.terminology, self.today(),
                                       draft_orders=request.draft_orders,
                                       exclude_references=[o.reference for o in orders])
        # Keys that failed, and keys cut short while paging: both get a data note, never silence.
        unavailable = frozenset(gathered.failed_keys) | frozenset(gathered.incomplete_keys)
        evaluation = clinical_rules.decide(facts, orders, self.terminology, unavailable)
        undecided = [k for k in SCOPE_KEYS if k in unavailable]
        if undecided and not evaluation.decisions:
            # No card on the data we have, but what decides the cards (conditions, antibodies) could
            # not be read: "no cards" would be silent wrong advice, so nothing can be decided.
            failed = PreconditionFailed(f"cannot decide: {', '.join(undecided)} unavailable", undecided)
            audit.outcome, audit.status_code = "412", 412
            audit.latency_ms = (time.perf_counter() - started) * 1000
            return CallResult(failed.body(), 412, audit)
        variables = dict(evaluation.variables, patient_id=request.patient_id)
        base = base_url() if callable(base_url) else base_url
        cards: list[dict[str, Any]] = []
        withheld: list[Withheld] = []
        policy = self.settings.CONTENT_POLICY
        today = self.today()
        for decision in evaluation.decisions:
            reason = self.catalog.servable(decision.card_id, policy, today)
            if reason is not None:
                withheld.append(Withheld(decision.card_id, reason))
                continue
            cards.append(self.catalog.render(decision, variables, evaluation.notes, base, policy))
        cards.sort(key=lambda c: clinical_rules.INDICATOR_ORDER.get(c["indicator"], 3))
        if withheld:
            log.warning("content withheld under %s: %s", policy,
                        ", ".join(f"{w.card_id} ({w.reason})" for w in withheld))
        audit.outcome = "cards" if cards else "no-cards"
        audit.cards = [{"uuid": c["uuid"], **{k: c["extension"]["org.example.ivig-cds"][k]
                                              for k in ("cardId", "version", "contentHash")}} for c in cards]
        audit.withheld = [{"cardId": w.card_id, "reason": w.reason} for w in withheld]
        audit.latency_ms = (time.perf_counter() - started) * 1000
        return CallResult({"cards": cards}, 200, audit, withheld)
