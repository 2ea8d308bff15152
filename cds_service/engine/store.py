"""Feedback and audit records: SQLite by default, PostgreSQL by URL (SQLAlchemy Core).

No PHI: audit rows hold an HMAC of the patient id, card ids with content versions and hashes,
per-prefetch-key statuses and latency.  Audit writes never block a response: they go to a
bounded queue flushed by a background thread; when the store is down the response still goes
out, and the loss is counted and reported on ``/readyz``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    create_engine,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from cds_service.engine import gate
from cds_service.engine import store_connections as connections
from cds_service.engine import store_memory as memory
from cds_service.engine.store_schema import (  # noqa: F401 (re-exported: the store's public names)
    FEEDBACK_COMMENT_MAX,
    FEEDBACK_SUGGESTIONS_MAX,
    NOT_SHOWN_KINDS,
    AuditRecord,
    IssuedCard,
    StoreTimeout,
    _clip,
    _feedback_key,
    _json_list,
    _limit,
    audit_cards_table,
    audit_table,
    card_decisions_table,
    feedback_field_problem,
    feedback_table,
    issued_cards_table,
    jti_table,
    metadata,
    patient_hmac,
)

log = logging.getLogger("cds_service.engine.store")
_T = TypeVar("_T")


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


#: Audit rows wait at most this long to be written with the rows queued after them (issue 16) ...
AUDIT_LINGER_S = 0.1
#: ... or until this many wait (also the most written in one batch).
AUDIT_BATCH = 500


class Store:
    def __init__(self, url: str, *, queue_size: int = 10_000) -> None:
        self.url = url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and ":memory:" not in url:
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: SQL parameters (feedback comments, ...) stay out of SQLAlchemy's log
        # lines and exception messages, whatever level the sqlalchemy loggers are set to.
        kwargs: dict[str, Any] = {"hide_parameters": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 5}
            if url in ("sqlite://", "sqlite:///:memory:"):
                kwargs["poolclass"] = StaticPool  # one shared in-memory database for all threads
        else:
            kwargs["connect_args"] = {"connect_timeout": 3}
        self.engine: Engine = create_engine(url, **kwargs)
        connections.configure(self.engine, url)
        # Decision memory's statements outside a transaction on a server database: each is one round
        # trip (no BEGIN / COMMIT).  SQLite keeps its transactions (one shared in-memory connection).
        self._statements: Engine = self.engine if url.startswith("sqlite") else \
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
        # A deque polled by the writer: appending wakes no thread, so the response path pays
        # nothing for the audit beyond one append.
        self._pending: deque[AuditRecord] = deque()
        self._queue_size = queue_size
        self._in_flight = 0
        self._stop = threading.Event()
        self._wake = threading.Event()  # flush / close: write what is queued now
        self.audit_lost = 0
        self.audit_written = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._schema_ready = False

    # -- schema -------------------------------------------------------------------------
    def create_schema(self) -> None:
        # card_decision (decision memory's read side) came after issued_card and feedback: filled from them
        # at each start (only what it lacks), so an upgrade keeps the decisions already made.
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            memory.backfill(conn)
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
                        memory.record_decision(conn, item["card"], client_iss, item["outcome"], now)
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
        """Wait until queued records are written (tests, shutdown); the writer is woken at once."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._in_flight) and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)
        return not self._pending and not self._in_flight

    def _run(self) -> None:
        # Rows are written in batches, at most AUDIT_LINGER_S after they were queued (sooner when
        # AUDIT_BATCH rows wait, or on flush / close).  Writing each call's row as it came made a
        # transaction per call: database round trips on the writer thread, each a hand-over of
        # the GIL to and from the threads serving calls.
        while True:
            if len(self._pending) < AUDIT_BATCH and not self._stop.is_set():
                self._wake.wait(AUDIT_LINGER_S)
                self._wake.clear()
            if not self._pending:
                if self._stop.is_set():
                    return
                continue
            batch: list[AuditRecord] = []
            with self._lock:
                self._in_flight += 1
            while self._pending and len(batch) < AUDIT_BATCH:
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
            rows.append(_clip(audit_table, {
                "at": r.at, "service_id": r.service_id, "hook": r.hook, "hook_instance": r.hook_instance,
                "client_iss": r.client_iss, "patient_hmac": r.patient_hmac, "outcome": r.outcome,
                "status_code": r.status_code, "cards": _json_text(r.cards) if r.cards else None,
                "withheld": _json_text(r.withheld) if r.withheld else None,
                "prefetch": _json_text(r.prefetch) if r.prefetch else None, "latency_ms": r.latency_ms,
            }))
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
        cards = list(cards)
        if not cards:
            return
        if not self._schema_ready:
            self.create_schema()
        with self._statements.begin() as conn:
            memory.record_issued(conn, cards)

    def remember(self, client_iss: str, patient_key: str, order_key: str, since: datetime,
                 cards: list[IssuedCard]) -> list[IssuedCard]:
        """Decision memory on one connection: of ``cards`` (about to leave), those the same client
        accepted or overrode for this patient and draft order since ``since`` (same card id, content
        hash and facts fingerprint) are returned; the others are recorded as issued (two statements,
        two round trips on PostgreSQL).  Raises ``SQLAlchemyError``."""
        if not self._schema_ready:
            self.create_schema()
        try:
            with self._statements.begin() as conn:
                decided = memory.decided(conn, client_iss, patient_key, order_key, since)
        except SQLAlchemyError:
            self.record_issued(cards)  # no memory to read: the cards are shown, and still recorded
            raise
        withheld = [c for c in cards if (c.card_id, c.content_hash, c.facts_fingerprint) in decided]
        self.record_issued([c for c in cards if c not in withheld])
        return withheld

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
        if not self._schema_ready:
            self.create_schema()
        with self.engine.connect() as conn:
            return memory.decided(conn, client_iss, patient_key, order_key, since)

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

    def close(self, timeout: float = 5.0) -> bool:
        """Flush queued audit rows (waiting at most ``timeout`` seconds), then release the database.
        Called on graceful shutdown (gunicorn's ``worker_exit``, SIGTERM): True when nothing was lost."""
        self._flush_refused_summary()
        flushed = True
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=timeout)
            flushed = not self._thread.is_alive() and not self._pending
        elif self._pending:
            flushed = False
        if not flushed:
            log.warning("audit flush at shutdown incomplete: %d record(s) not written", len(self._pending))
        if self._bounded is not None:
            self._bounded.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()
        return flushed

    # -- production hardening (issue 15) -----------------------------------------------------
    # Bounded calls: the replay store and the issued-card record run on a small pool so a hung
    # database costs a call ``timeout`` seconds at most (fail closed), whatever the driver does.
    _bounded: ThreadPoolExecutor | None = None
    _refused_window: float = 0.0
    _refused_itemised: int = 0
    _refused_suppressed: int = 0
    _refused_last: AuditRecord | None = None
    _jti_pruned_at: float = 0.0

    def call_within(self, timeout: float, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` (a store method) on the store's small pool, waited for ``timeout`` seconds at most:
        ``StoreTimeout`` past it.  A hook call's slot (engine/gate.py) is kept for a quick answer and
        given up while a slow database keeps it waiting."""
        with self._lock:
            if self._bounded is None:
                self._bounded = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-bounded")
            pool = self._bounded
        future = pool.submit(fn, *args)
        try:
            return gate.wait_for(future, timeout)
        except FutureTimeout:
            future.cancel()
            raise StoreTimeout(f"no answer within {timeout:g} s") from None

    def claim_jti(self, key: str, expires_at: float, now: float, *, timeout: float) -> bool:
        """Remember ``key`` (a digest of iss and jti) until ``expires_at``: True the first time, False when
        it is remembered and not expired.  ``StoreTimeout`` or ``SQLAlchemyError`` when the database
        cannot answer (the caller refuses the token: fail closed)."""
        return self.call_within(timeout, self._claim_jti, key, expires_at, now)

    def _claim_jti(self, key: str, expires_at: float, now: float) -> bool:
        if not self._schema_ready:
            self.create_schema()
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert  # type: ignore[assignment]
        # RETURNING says whether this call inserted the row (psycopg reports no rowcount for ON CONFLICT).
        statement = (dialect_insert(jti_table).values(key=key, expires_at=expires_at).on_conflict_do_nothing()
                     .returning(jti_table.c.key))
        with self.engine.begin() as conn:
            if conn.execute(statement).first() is not None:
                first = True
            else:  # remembered: usable again only once the old entry has expired
                first = conn.execute(update(jti_table).where(jti_table.c.key == key, jti_table.c.expires_at <= now)
                                     .values(expires_at=expires_at).returning(jti_table.c.key)).first() is not None
            if now - self._jti_pruned_at > 60:
                self._jti_pruned_at = now
                conn.execute(delete(jti_table).where(jti_table.c.expires_at < now - 60))
        return first

    def replay_ping(self, *, timeout: float) -> str | None:
        """None when the SQL replay store answers within ``timeout``, else the reason."""
        def probe() -> None:
            if not self._schema_ready:
                self.create_schema()
            with self.engine.connect() as conn:
                conn.execute(select(jti_table.c.key).limit(1))
        try:
            self.call_within(timeout, probe)
            return None
        except StoreTimeout as exc:
            return str(exc)
        except SQLAlchemyError as exc:
            return type(exc).__name__

    def audit_refused(self, record: AuditRecord, per_minute: int) -> None:
        """Audit a refused (4xx) call: one row each up to ``per_minute`` a minute; beyond that they are
        counted, and one summary row (outcome ``4xx-summary``, the count in its ``prefetch`` column)
        is written when the minute ends or at shutdown.  Unauthenticated callers cannot flood the table."""
        now = time.monotonic()
        with self._lock:
            if now - self._refused_window >= 60:
                summary = self._refused_summary_locked()
                self._refused_window, self._refused_itemised = now, 0
            else:
                summary = None
            itemise = self._refused_itemised < per_minute
            if itemise:
                self._refused_itemised += 1
            else:
                self._refused_suppressed += 1
                self._refused_last = record
        if summary is not None:
            self.audit(summary)
        if itemise:
            self.audit(record)

    def _refused_summary_locked(self) -> AuditRecord | None:
        if not self._refused_suppressed or self._refused_last is None:
            return None
        last, count = self._refused_last, self._refused_suppressed
        self._refused_suppressed, self._refused_last = 0, None
        return AuditRecord(service_id=last.service_id, hook=last.hook, outcome="4xx-summary",
                           status_code=last.status_code, latency_ms=0.0,
                           prefetch={"refusedNotItemised": count})

    def _flush_refused_summary(self) -> None:
        with self._lock:
            summary = self._refused_summary_locked()
        if summary is not None:
            self._pending.append(summary)
