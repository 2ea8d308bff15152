"""Decision memory's SQL, built once: the statements run on every hook call that shows cards are
constructed at import, so a call pays only for executing them (SQLAlchemy's compiled cache does the
rest), never for building expressions.

- ``issued``: the cards that leave, one multi-row INSERT per call;
- ``decided``: (card id, content hash, facts fingerprint) the client accepted or overrode for a patient
  and draft order, from ``card_decision`` (an index probe; no join with every card ever issued);
- ``record_decision``: written with the feedback that accepts or overrides an issued card — the
  issued card's keys copied by an INSERT … SELECT, so only a card this client was issued counts;
- ``backfill``: at each start, the decisions in ``feedback`` not yet in ``card_decision`` (a store upgraded
  from a version without it, or feedback taken by replicas still running that version); idempotent.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, func, insert, literal, select
from sqlalchemy.engine import Dialect

from cds_service.engine.store_schema import (
    DECIDED_OUTCOMES,
    IssuedCard,
    card_decisions_table,
    feedback_table,
    issued_cards_table,
)

_issued, _decisions, _feedback = issued_cards_table, card_decisions_table, feedback_table
_ISSUED_COLUMNS = [c.name for c in _issued.columns]
_DECISION_COLUMNS = ["decided_at", "card_uuid", "client_iss", "patient_hmac", "order_hmac", "card_id",
                     "content_hash", "facts_fingerprint"]

_DECIDED = (select(_decisions.c.card_id, _decisions.c.content_hash, _decisions.c.facts_fingerprint)
            .where(_decisions.c.client_iss == bindparam("client_iss"),
                   _decisions.c.patient_hmac == bindparam("patient_hmac"),
                   _decisions.c.order_hmac == bindparam("order_hmac"),
                   _decisions.c.decided_at >= bindparam("since"))
            .distinct())
# What a decision copies from the issued card (``_DECISION_COLUMNS`` after ``decided_at``).
_FROM_ISSUED = [_issued.c[name] for name in _DECISION_COLUMNS[1:]]
_RECORD_DECISION = insert(_decisions).from_select(
    _DECISION_COLUMNS,
    select(bindparam("decided_at", type_=_decisions.c.decided_at.type), *_FROM_ISSUED)
    .where(_issued.c.card_uuid == bindparam("card_uuid"), _issued.c.client_iss == bindparam("client_iss")))
_BACKFILL = insert(_decisions).from_select(
    _DECISION_COLUMNS,
    select(_feedback.c.received_at, *_FROM_ISSUED)
    .join(_feedback, _feedback.c.card_uuid == _issued.c.card_uuid)
    .where(_feedback.c.outcome.in_(DECIDED_OUTCOMES),
           func.coalesce(_feedback.c.client_iss, literal("")) == _issued.c.client_iss,
           ~exists().where(_decisions.c.card_uuid == _issued.c.card_uuid,
                           _decisions.c.decided_at == _feedback.c.received_at)))


class _DriverStatement:
    """A statement compiled once for a dialect, run with ``exec_driver_sql``: SQLAlchemy then neither
    looks the statement up in its compiled cache nor builds an execution context for an expression on
    every call; bind values go through their column types' processors (``TypeEngine.bind_processor``)."""

    def __init__(self, statement: Any, dialect: Dialect, types: dict[str, Any]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.names: list[str] | None = list(compiled.positiontup or []) if compiled.positional else None
        self.processors = {name: p for name, kind in types.items()
                           if (p := kind.dialect_impl(dialect).bind_processor(dialect))}

    def params(self, values: dict[str, Any]) -> Any:
        for name, process in self.processors.items():
            values[name] = process(values[name])
        return tuple(values[n] for n in self.names) if self.names is not None else values


@functools.lru_cache(maxsize=16)  # one dialect per engine: one entry in a server
def _statements(dialect: Dialect) -> tuple[_DriverStatement, _DriverStatement]:
    insert_issued = _DriverStatement(insert(_issued).values({c: bindparam(c) for c in _ISSUED_COLUMNS}), dialect,
                                     {c.name: c.type for c in _issued.columns})
    return insert_issued, _DriverStatement(_DECIDED, dialect, {"since": _decisions.c.decided_at.type})


def record_issued(conn: Connection, cards: Iterable[IssuedCard]) -> None:
    statement = _statements(conn.dialect)[0]
    rows = [statement.params({name: getattr(card, name) for name in _ISSUED_COLUMNS}) for card in cards]
    if rows:
        conn.exec_driver_sql(statement.sql, rows)


def decided(conn: Connection, client_iss: str, patient_key: str, order_key: str,
            since: datetime) -> set[tuple[str, str, str]]:
    statement = _statements(conn.dialect)[1]
    result = conn.exec_driver_sql(statement.sql, statement.params({
        "client_iss": client_iss, "patient_hmac": patient_key, "order_hmac": order_key, "since": since}))
    return {(r[0], r[1], r[2]) for r in result}


def record_decision(conn: Connection, card_uuid: str, client_iss: str | None, outcome: str,
                    at: datetime) -> None:
    """An accept/override of ``card_uuid`` by ``client_iss`` (None: the anonymous client)."""
    if outcome in DECIDED_OUTCOMES:
        conn.execute(_RECORD_DECISION, {"decided_at": at, "card_uuid": card_uuid, "client_iss": client_iss or ""})


def backfill(conn: Connection) -> None:
    conn.execute(_BACKFILL)
