"""The order workflow and go-live, applied to a rendered hook call: the per-card switch, shadow mode,
and decision memory (``pipeline.run`` calls ``apply_workflow`` once, on its way out).

In order:

1. **Per-card switch** (``DISABLED_CARDS``): a disabled card is never served, in any mode or view;
   audited as withheld, reason ``disabled``.
2. **Shadow mode** (``MODE=shadow``, CDS client calls only): the answer is ``200 {"cards": []}``
   whatever was decided, a 412 included; the audit row records what would have been answered
   (outcome ``shadow-cards`` | ``shadow-no-cards`` | ``shadow-412``; each card withheld with reason
   ``shadow-mode``, its version and content hash).
3. **Decision memory** (live, CDS client calls only): a card the same client accepted or overrode
   for the same patient and draft order(s), within ``DECISION_MEMORY_HOURS``, is not shown again
   while its content hash and facts fingerprint are unchanged; audited as withheld, reason
   ``decision-memory``.  Then every card that leaves is recorded in the store's issued-card table
   **before** the response leaves (synchronously), so feedback for it and the next call — at any
   replica — find it.  A store that is down costs the memory, never the response: cards are shown.

The demo page and the review packet (``client_call=False``) get step 1 only: they show what a
clinician would see on a first call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cds_service.clinical.model import Decision
from cds_service.clinical.orders import draft_reference
from cds_service.engine.content import Withheld
from cds_service.engine.runtime import Runtime
from cds_service.engine.store import IssuedCard
from cds_service.protocol.card import Card

if TYPE_CHECKING:
    from cds_service.engine.pipeline import CallResult

log = logging.getLogger("cds_service.engine.workflow")

DISABLED = "disabled"
SHADOW = "shadow-mode"
REMEMBERED = "decision-memory"


def facts_fingerprint(decision: Decision | None) -> str:
    """A hash of the sorted (finding, resource reference, value, date) that fired the card: a new lab
    result, a changed value or date changes it; the wording of the content does not."""
    if decision is None:
        return hashlib.sha256(b"no-decision").hexdigest()
    canonical = {
        "found": sorted(str(f) for f in decision.findings),
        "facts": sorted([f.reference or "", f.value_key or "", f.value_text or "", f.date or ""]
                        for f in decision.facts_used),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def order_key(audit_key: bytes, result: CallResult) -> str | None:
    """The draft order(s) the cards are about, keyed with the audit key; None when an order has no
    usable id (it cannot be recognised on the next call)."""
    references = [draft_reference(order.resource) for order in result.orders]
    if not references or not all(references):
        return None
    joined = "\n".join(sorted(set(references)))
    return hmac.new(audit_key, joined.encode("utf-8"), hashlib.sha256).hexdigest()


def apply_workflow(runtime: Runtime, result: CallResult, *, client_iss: str | None,
                   client_call: bool) -> CallResult:
    """Apply the switch, shadow mode and decision memory to ``result`` (changed in place, returned)."""
    settings = runtime.settings
    audit = result.audit
    entries = [_entry(runtime, str(w["cardId"]), str(w["reason"])) for w in audit.withheld]
    kept: list[Card] = []
    for card in result.cards:
        if card.card_id in settings.disabled_cards:
            result.withheld.append(Withheld(card.card_id, DISABLED))
            entries.append(_entry(runtime, card.card_id, DISABLED, card))
        else:
            kept.append(card)
    if client_call and settings.MODE == "shadow":
        would = "412" if result.status == 412 else ("cards" if kept else "no-cards")
        for card in kept:
            result.withheld.append(Withheld(card.card_id, SHADOW))
            entries.append(_entry(runtime, card.card_id, SHADOW, card))
        audit.outcome, audit.status_code = f"shadow-{would}", 200
        result.status, result.body, kept = 200, {"cards": []}, []
    elif client_call and kept:
        kept = _remember(runtime, result, kept, entries, client_iss)
    result.cards = kept
    if result.status == 200:
        result.body = {**result.body, "cards": [c.to_json() for c in kept]}
        if audit.outcome in ("cards", "no-cards"):
            audit.outcome = "cards" if kept else "no-cards"
    audit.cards = [c.identity.audit(c.uuid) for c in kept]
    audit.withheld = entries
    return result


def _entry(runtime: Runtime, card_id: str, reason: str, card: Card | None = None) -> dict[str, Any]:
    """An audit ``withheld`` entry: with the content version and hash, so the report can count it."""
    if card is not None:
        version, content_hash = card.identity.version, card.identity.content_hash
    else:
        content = runtime.catalog.cards.get(card_id)
        version = content.version if content is not None else ""
        content_hash = runtime.catalog.hashes.get(card_id, "")
    return {"cardId": card_id, "reason": reason, "version": version, "contentHash": content_hash}


def _remember(runtime: Runtime, result: CallResult, cards: list[Card], entries: list[dict[str, Any]],
              client_iss: str | None) -> list[Card]:
    """Withhold the cards already decided on; record the ones that leave.  Returns the ones that leave."""
    settings, store = runtime.settings, runtime.store
    client = client_iss or ""
    patient = result.audit.patient_hmac or ""
    order = order_key(runtime.audit_key, result)
    decisions: dict[str, Decision] = ({str(d.card_id): d for d in result.evaluation.decisions}
                                      if result.evaluation else {})
    fingerprints = {c.uuid: facts_fingerprint(decisions.get(c.card_id)) for c in cards}
    now = datetime.now(UTC)
    issued = [IssuedCard(card_uuid=c.uuid, issued_at=now, service_id=result.audit.service_id, client_iss=client,
                         patient_hmac=patient, order_hmac=order or "", card_id=c.card_id,
                         version=c.identity.version, content_hash=c.identity.content_hash,
                         facts_fingerprint=fingerprints[c.uuid]) for c in cards]
    remembered: set[str] = set()
    try:  # bounded: a slow or hung database costs a call STORE_TIMEOUT_S at most
        if order and patient and settings.DECISION_MEMORY_HOURS > 0:
            since = now - timedelta(hours=settings.DECISION_MEMORY_HOURS)
            remembered = {c.card_uuid for c in store.call_within(settings.STORE_TIMEOUT_S, store.remember,
                                                                  client, patient, order, since, issued)}
        else:
            store.call_within(settings.STORE_TIMEOUT_S, store.record_issued, issued)
    except Exception as exc:  # the store is down: show the cards rather than fail the call
        log.warning("decision memory not available (%s): cards shown, not recorded", type(exc).__name__)
    shown: list[Card] = []
    for card in cards:
        if card.uuid in remembered:
            result.withheld.append(Withheld(card.card_id, REMEMBERED))
            entries.append(_entry(runtime, card.card_id, REMEMBERED, card))
        else:
            shown.append(card)
    return shown
