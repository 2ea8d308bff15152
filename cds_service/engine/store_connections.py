"""How the store's connections behave: SQLite's journal, and a liveness check for server databases
that costs a round trip only when a connection has sat idle (not on every checkout)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError

#: A pooled connection unused for longer than this is checked (``SELECT 1``) before it is handed out.
IDLE_PING_S = 10.0


def configure(engine: Engine, url: str) -> None:
    if url.startswith("sqlite"):
        if url not in ("sqlite://", "sqlite:///:memory:"):
            event.listen(engine, "connect", _sqlite_wal)
        return
    event.listen(engine, "checkin", _checked_in)
    event.listen(engine, "checkout", _ping_if_idle)


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """SQLite file: write-ahead log, synced at checkpoints (``synchronous=NORMAL``).  Readers no longer
    wait for the writer, and a commit is not an fsync: with the default rollback journal, every issued-
    card insert (one per hook call that shows cards) took the file lock and synced, and the workers
    queued behind each other.  A power loss can lose the last commits; it cannot corrupt the file."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["idle_since"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a whole extra round trip on each hook call.
    A connection that was just used is alive; one idle for a while (the database restarted, a proxy or
    firewall dropped it) is checked, and replaced when the check fails (the pool retries the checkout)."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since <= IDLE_PING_S:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()  # the check leaves no transaction open
    except Exception as exc:  # any driver error: a dead connection
        raise DisconnectionError(f"idle connection failed its check ({type(exc).__name__})") from exc
