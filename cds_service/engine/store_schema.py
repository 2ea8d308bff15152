"""The store's tables and row types: feedback, audit, issued cards, jti replay memory; the checks
that keep every stored field within its column (4xx before the database, never a 500)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

feedback_table = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("dedup_key", String(64), nullable=False, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(100), nullable=False, index=True),
    Column("outcome", String(20), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),
    Column("override_system", String(300), nullable=True),
    Column("override_code", String(200), nullable=True),
    Column("override_display", String(500), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", String(40), nullable=False),
    Column("client_iss", String(300), nullable=True),
)

audit_table = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("service_id", String(100), nullable=False),
    Column("hook", String(50), nullable=False),
    Column("hook_instance", String(100), nullable=True),
    Column("client_iss", String(300), nullable=True),
    Column("patient_hmac", String(64), nullable=True),
    Column("outcome", String(20), nullable=False),  # cards | no-cards | 412 | 4xx
    Column("status_code", Integer, nullable=False),
    Column("cards", Text, nullable=True),  # JSON [{uuid, cardId, version, contentHash}]
    Column("withheld", Text, nullable=True),  # JSON [{cardId, reason}]
    Column("prefetch", Text, nullable=True),  # JSON {key: {status, ms}}
    Column("latency_ms", Float, nullable=False),
)

audit_cards_table = Table(
    "audit_card", metadata,
    Column("card_uuid", String(100), primary_key=True),
    Column("audit_at", DateTime(timezone=True), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("card_id", String(100), nullable=False, index=True),
    Column("version", String(40), nullable=False),
    Column("content_hash", String(64), nullable=False),
)


# -- production hardening (issue 15): replay store, issued cards --------------------------------
# ``jti`` replay memory shared by every worker and replica and surviving restarts (when no Redis):
# one row per (iss, jti) digest until the token expires.
jti_table = Table(
    "jti_seen", metadata,
    Column("key", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

# -- issued cards (decision memory; issue 15's feedback check reads it too) ---------------------------
# One row per card that left the service in a live response, written before the response leaves, so
# feedback for it - arriving at any replica - finds it.  No PHI: patient and draft orders are keyed
# with the audit key.  ``client_iss`` is "" for the anonymous client of AUTH=off.
issued_cards_table = Table(
    "issued_card", metadata,
    Column("card_uuid", String(100), primary_key=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("service_id", String(100), nullable=False),
    Column("client_iss", String(300), nullable=False),
    Column("patient_hmac", String(64), nullable=False),
    Column("order_hmac", String(64), nullable=False),
    Column("card_id", String(100), nullable=False),
    Column("version", String(40), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("facts_fingerprint", String(64), nullable=False),
    Index("ix_issued_card_memory", "client_iss", "patient_hmac", "order_hmac", "card_id"),
)


# -- decisions (decision memory's read side) ----------------------------------------------------------
# One row per accept/override of an issued card, written with the feedback that carries it (rare), so the
# per-call lookup is one index probe on a small table that is empty for most patients, instead of a join
# over every card ever issued for the patient (which grows with each call of an eagerly firing client).
DECIDED_OUTCOMES = ("accepted", "overridden")
card_decisions_table = Table(
    "card_decision", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    Column("card_uuid", String(100), nullable=False),
    Column("client_iss", String(300), nullable=False),
    Column("patient_hmac", String(64), nullable=False),
    Column("order_hmac", String(64), nullable=False),
    Column("card_id", String(100), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("facts_fingerprint", String(64), nullable=False),
    Index("ix_card_decision_memory", "client_iss", "patient_hmac", "order_hmac", "decided_at"),
)


@dataclass(frozen=True)
class IssuedCard:
    """A card this service issued to a client (``Store.issued_card(uuid)`` returns one)."""

    card_uuid: str
    issued_at: datetime
    service_id: str
    client_iss: str  # "" = the anonymous client of AUTH=off
    patient_hmac: str
    order_hmac: str
    card_id: str
    version: str
    content_hash: str
    facts_fingerprint: str


class StoreTimeout(Exception):
    """The store did not answer within the bounded wait."""


def _limit(column: Column[Any]) -> int | None:
    return getattr(column.type, "length", None)


# Feedback fields and the column each lands in: checked before the database sees them (400, never 500).
FEEDBACK_COMMENT_MAX = 4000
FEEDBACK_SUGGESTIONS_MAX = 2000


def feedback_field_problem(item: dict[str, Any]) -> str | None:
    """Why one (schema-valid) feedback item cannot be stored, or None: every stored field fits its column."""
    reason = item.get("overrideReason") or {}
    coding = reason.get("reason") or {} if isinstance(reason, dict) else {}
    checks: list[tuple[str, Any, int | None]] = [
        ("card", item.get("card"), _limit(feedback_table.c.card_uuid)),
        ("outcomeTimestamp", item.get("outcomeTimestamp"), _limit(feedback_table.c.outcome_timestamp)),
        ("overrideReason.reason.system", coding.get("system"), _limit(feedback_table.c.override_system)),
        ("overrideReason.reason.code", coding.get("code"), _limit(feedback_table.c.override_code)),
        ("overrideReason.reason.display", coding.get("display"), _limit(feedback_table.c.override_display)),
        ("overrideReason.userComment", reason.get("userComment") if isinstance(reason, dict) else None,
         FEEDBACK_COMMENT_MAX),
    ]
    for name, value, most in checks:
        if isinstance(value, str) and most is not None and len(value) > most:
            return f"{name} is {len(value)} characters; at most {most} are accepted"
    suggestions = item.get("acceptedSuggestions")
    if suggestions:
        size = len(json.dumps([s.get("id") for s in suggestions]))
        if size > FEEDBACK_SUGGESTIONS_MAX:
            return f"acceptedSuggestions take {size} characters; at most {FEEDBACK_SUGGESTIONS_MAX} are accepted"
    return None


@functools.cache
def _limits(table: Table) -> dict[str, int]:
    """Column name -> length, for the table's bounded string columns (read once per table)."""
    return {c.name: most for c in table.columns if (most := _limit(c)) is not None}


def _clip(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Strings cut to their column's length: one over-long value must not lose a whole audit batch."""
    for name, most in _limits(table).items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > most:
            row[name] = value[:most]
    return row


def patient_hmac(key: bytes, patient_id: str | None) -> str | None:
    if not patient_id:
        return None
    return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass
class AuditRecord:
    service_id: str
    hook: str
    outcome: str
    status_code: int
    latency_ms: float
    hook_instance: str | None = None
    client_iss: str | None = None
    patient_hmac: str | None = None
    cards: list[dict[str, Any]] = field(default_factory=list)
    withheld: list[dict[str, Any]] = field(default_factory=list)
    prefetch: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


#: Audit ``withheld`` reasons that are not "withheld": what the report counts them as.
NOT_SHOWN_KINDS = {"shadow-mode": "shadow", "decision-memory": "suppressed"}


def _json_list(text_value: str | None) -> list[dict[str, Any]]:
    try:
        value = json.loads(text_value or "[]")
    except ValueError:
        return []
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _feedback_key(service_id: str, item: dict[str, Any]) -> str:
    canonical = json.dumps({"service": service_id, "entry": item}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
