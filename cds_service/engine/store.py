"""Feedback and audit records: SQLite by default, PostgreSQL by URL (SQLAlchemy Core).

No PHI: audit rows hold an HMAC of the patient id, card ids with content versions and hashes,
per-prefetch-key statuses and latency.  Audit writes never block a response: they go to a
bounded queue flushed by a background thread; when the store is down the response still goes
out, and the loss is counted and reported on ``/readyz``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
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
    create_engine,
    func,
    insert,
    literal,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

log = logging.getLogger("cds_service.engine.store")

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


class Store:
    def __init__(self, url: str, *, queue_size: int = 10_000) -> None:
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: SQL parameters (feedback comments, ...) stay out of SQLAlchemy's log
        # lines and exception messages, whatever level the sqlalchemy loggers are set to.
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 5}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
        else:
            kwargs["connect_args"] = {"connect_timeout": 3}
        self.engine: Engine = create_engine(url, **kwargs)
        # A deque polled by the writer: appending wakes no thread, so the response path pays
        # nothing for the audit beyond one append.
        self._pending: deque[AuditRecord] = deque()
        self._queue_size = queue_size
        self._in_flight = 0
        self._stop = threading.Event()
        self.audit_lost = 0
        self.audit_written = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._schema_ready = False

    # -- schema -------------------------------------------------------------------------
    def create_schema(self) -> None:
        metadata.create_all(self.engine)
        self._schema_ready = True

    def ping(self) -> str | None:
        """None when reachable, else the reason (no credentials)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            if not self._schema_ready:
                self.create_schema()
            return None
        except SQLAlchemyError as exc:
            return type(exc).__name__

    # -- feedback -----------------------------------------------------------------------
    def add_feedback(self, service_id: str, items: Iterable[dict[str, Any]], client_iss: str | None) -> int:
        """Store feedback items; an item posted again is stored once. Returns rows added."""
        added = 0
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            for item in items:
                key = _feedback_key(service_id, item)
                exists = conn.execute(select(feedback_table.c.id).where(feedback_table.c.dedup_key == key)).first()
                if exists:
                    continue
                reason = (item.get("overrideReason") or {})
                coding = reason.get("reason") or {}
                row = {
                    "dedup_key": key, "received_at": now, "service_id": service_id,
                    "card_uuid": item["card"], "outcome": item["outcome"],
                    "accepted_suggestions": json.dumps([s.get("id") for s in item.get("acceptedSuggestions", [])])
                    if item.get("acceptedSuggestions") else None,
                    "override_system": coding.get("system"), "override_code": coding.get("code"),
                    "override_display": coding.get("display"), "user_comment": reason.get("userComment"),
                    "outcome_timestamp": item["outcomeTimestamp"], "client_iss": client_iss,
                }
                try:
                    with conn.begin_nested():
                        conn.execute(insert(feedback_table), row)
                    added += 1
                except IntegrityError:
                    continue  # a concurrent duplicate: stored once
        return added

    def feedback_rows(self, card_uuid: str | None = None) -> list[dict[str, Any]]:
        query = select(feedback_table).order_by(feedback_table.c.id)
        if card_uuid:
            query = query.where(feedback_table.c.card_uuid == card_uuid)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # -- audit --------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()

    def audit(self, record: AuditRecord) -> None:
        """Queue an audit record; never blocks, never raises."""
        if self._thread is None or not self._thread.is_alive():
            self.start()
        if len(self._pending) >= self._queue_size:
            with self._lock:
                self.audit_lost += 1
            return
        self._pending.append(record)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until queued records are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._in_flight) and time.monotonic() < deadline:
            time.sleep(0.005)
        return not self._pending and not self._in_flight

    def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stop.wait(0.05) and not self._pending:
                    return
                continue
            batch: list[AuditRecord] = []
            with self._lock:
                self._in_flight += 1
            while self._pending and len(batch) < 500:
                batch.append(self._pending.popleft())
            try:
                self._write(batch)
                with self._lock:
                    self.audit_written += len(batch)
                    self.last_error = None
            except Exception as exc:  # the store is down: count the loss, keep serving
                with self._lock:
                    self.audit_lost += len(batch)
                    self.last_error = type(exc).__name__
                log.warning("audit write failed (%s); %d record(s) lost", type(exc).__name__, len(batch))
            finally:
                with self._lock:
                    self._in_flight -= 1

    def _write(self, records: list[AuditRecord]) -> None:
        if not self._schema_ready:
            self.create_schema()
        rows = []
        card_rows = []
        for r in records:
            rows.append({
                "at": r.at, "service_id": r.service_id, "hook": r.hook, "hook_instance": r.hook_instance,
                "client_iss": r.client_iss, "patient_hmac": r.patient_hmac, "outcome": r.outcome,
                "status_code": r.status_code, "cards": json.dumps(r.cards) if r.cards else None,
                "withheld": json.dumps(r.withheld) if r.withheld else None,
                "prefetch": json.dumps(r.prefetch) if r.prefetch else None, "latency_ms": r.latency_ms,
            })
            for card in r.cards:
                card_rows.append({"card_uuid": card["uuid"], "audit_at": r.at, "service_id": r.service_id,
                                  "card_id": card["cardId"], "version": card["version"],
                                  "content_hash": card["contentHash"]})
        with self.engine.begin() as conn:
            conn.execute(insert(audit_table), rows)
            if card_rows:
                conn.execute(insert(audit_cards_table), card_rows)

    def audit_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(audit_table).order_by(audit_table.c.id))]

    # -- issued cards and decision memory -------------------------------------------------
    def record_issued(self, cards: Iterable[IssuedCard]) -> None:
        """Record cards about to leave in a response; synchronous, so that feedback for them (and the
        next call's decision memory, at any replica) finds them.  Raises ``SQLAlchemyError``."""
        rows = [dataclasses.asdict(card) for card in cards]
        if not rows:
            return
        if not self._schema_ready:
            self.create_schema()
        with self.engine.begin() as conn:
            conn.execute(insert(issued_cards_table), rows)

    def issued_card(self, card_uuid: str) -> IssuedCard | None:
        """The card issued under ``card_uuid`` (client ``iss``, issued_at, card id, hash, ...), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(issued_cards_table)
                               .where(issued_cards_table.c.card_uuid == card_uuid)).first()
        if row is None:
            return None
        values = dict(row._mapping)
        if values["issued_at"].tzinfo is None:  # SQLite keeps no zone: the store writes UTC
            values["issued_at"] = values["issued_at"].replace(tzinfo=UTC)
        return IssuedCard(**values)

    def decided_cards(self, client_iss: str, patient_key: str, order_key: str,
                      since: datetime) -> set[tuple[str, str, str]]:
        """(card id, content hash, facts fingerprint) of the cards issued to this client for this
        patient and draft order that the same client accepted or overrode since ``since``."""
        issued, fb = issued_cards_table, feedback_table
        query = (select(issued.c.card_id, issued.c.content_hash, issued.c.facts_fingerprint)
                 .join(fb, fb.c.card_uuid == issued.c.card_uuid)
                 .where(issued.c.client_iss == client_iss, issued.c.patient_hmac == patient_key,
                        issued.c.order_hmac == order_key, fb.c.outcome.in_(("accepted", "overridden")),
                        func.coalesce(fb.c.client_iss, literal("")) == issued.c.client_iss,
                        fb.c.received_at >= since)
                 .distinct())
        with self.engine.connect() as conn:
            return {(r[0], r[1], r[2]) for r in conn.execute(query)}

    # -- report -------------------------------------------------------------------------
    def report(self, since: datetime) -> list[dict[str, Any]]:
        """Per card id, version and content hash since ``since``: shown, shadow (would have been shown),
        suppressed (decision memory), withheld (disabled, unapproved), accepted, overridden, and the
        override reasons as sent ({system, code, display or None, count}).  Rates and displays from
        the card content are the report's business (``authoring/report.py``)."""
        cards, fb = audit_cards_table, feedback_table
        with self.engine.connect() as conn:
            shown = conn.execute(
                select(cards.c.card_id, cards.c.version, cards.c.content_hash, func.count())
                .where(cards.c.audit_at >= since)
                .group_by(cards.c.card_id, cards.c.version, cards.c.content_hash)
            ).all()
            outcomes = conn.execute(
                select(cards.c.card_id, cards.c.version, cards.c.content_hash, fb.c.outcome,
                       fb.c.override_system, fb.c.override_code, fb.c.override_display, fb.c.card_uuid)
                .join(fb, fb.c.card_uuid == cards.c.card_uuid)
                .where(cards.c.audit_at >= since)
                .order_by(fb.c.id)
            ).all()
            not_shown = conn.execute(
                select(audit_table.c.withheld)
                .where(audit_table.c.at >= since, audit_table.c.withheld.is_not(None))
            ).all()
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}

        def row_for(card_id: str, version: str, content_hash: str) -> dict[str, Any]:
            return rows.setdefault((card_id, version, content_hash), {
                "cardId": card_id, "version": version, "contentHash": content_hash, "shown": 0, "shadow": 0,
                "suppressed": 0, "withheld": 0, "accepted": 0, "overridden": 0, "overrideReasons": []})

        for card_id, version, content_hash, count in shown:
            row_for(card_id, version, content_hash)["shown"] += count
        counted: set[tuple[str, str]] = set()
        for card_id, version, content_hash, outcome, system, code, display, card_uuid in outcomes:
            row = row_for(card_id, version, content_hash)
            # A card answered twice (e.g. override then accept) counts once per outcome.
            if (card_uuid, outcome) in counted:
                continue
            counted.add((card_uuid, outcome))
            if outcome == "accepted":
                row["accepted"] += 1
            elif outcome == "overridden":
                row["overridden"] += 1
                if code:
                    # Counted by code; the first display sent names it.
                    reason = next((r for r in row["overrideReasons"] if r["code"] == code), None)
                    if reason is None:
                        reason = {"system": system, "code": code, "display": display, "count": 0}
                        row["overrideReasons"].append(reason)
                    reason["display"] = reason["display"] or display
                    reason["count"] += 1
        for (withheld_json,) in not_shown:
            for entry in _json_list(withheld_json):
                kind = NOT_SHOWN_KINDS.get(str(entry.get("reason", "")), "withheld")
                row = row_for(str(entry.get("cardId", "")), str(entry.get("version", "")),
                              str(entry.get("contentHash", "")))
                row[kind] += 1
        return sorted(rows.values(), key=lambda r: (r["cardId"], r["version"], r["contentHash"]))

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=5)
        self.engine.dispose()
