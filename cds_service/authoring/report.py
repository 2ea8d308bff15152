"""``cds-service report``: per card and version, how often it was shown, accepted and overridden (with
the override reasons), read from the audit and feedback tables of the store, as CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from cds_service.engine.store import Store

REPORT_COLUMNS = ("card_id", "version", "shown", "accepted", "overridden", "override_reasons")
FORMATS = ("csv", "json")


def report_rows(database_url: str, since: date) -> list[dict[str, Any]]:
    """One row per (card id, version) shown since ``since`` (00:00 UTC)."""
    store = Store(database_url)
    try:
        store.create_schema()
        return store.report(datetime(since.year, since.month, since.day, tzinfo=UTC))
    finally:
        store.close()


def format_rows(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The rows as ``csv`` (override reasons as "label: count; …") or ``json``."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2, ensure_ascii=False, default=str) + "\n"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(REPORT_COLUMNS)
    for row in rows:
        reasons = "; ".join(f"{label}: {count}"
                            for label, count in sorted(row.get("override_reasons", {}).items()))
        writer.writerow([row["card_id"], row["version"], row["shown"], row["accepted"], row["overridden"],
                         reasons])
    return buffer.getvalue()
