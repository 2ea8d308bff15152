"""``cds-service report``: per card and content version, what happened to it — shown, shadow (would have
been shown in shadow mode), suppressed by decision memory, withheld (disabled, unapproved), accepted,
overridden with the override reasons, and the override rate — read from the store's audit and
feedback tables, as text, CSV or JSON.  The review packet shows the same figures (``packet.with_usage``).

A real client's override reason often carries only ``code`` and ``system`` (the CDS Hooks sandbox
sends no ``display``): the display is then looked up in the card's own ``override_reasons``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cds_service.engine.content import Catalog, ContentError
from cds_service.engine.store import Store

COLUMNS = ("cardId", "version", "contentHash", "shown", "shadow", "suppressed", "withheld", "accepted",
           "overridden", "overrideRate", "overrideReasons")
FORMATS = ("text", "csv", "json")


def midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def report_rows(database_url: str, since: date, cards_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per (card id, version, content hash) with anything recorded since ``since`` (00:00 UTC);
    override reason displays from the content in ``cards_dir`` when the client sent none."""
    store = Store(database_url)
    try:
        store.create_schema()
        raw = store.report(midnight(since))
    finally:
        store.close()
    catalog: Catalog | None = None
    if cards_dir is not None:
        try:
            catalog = Catalog.load(Path(cards_dir))
        except (ContentError, OSError):  # no content to read displays from: the codes still count
            catalog = None
    return complete(raw, catalog)


def usage_rows(store: Store, catalog: Catalog, since: date) -> list[dict[str, Any]]:
    """The report's rows for a running service (the review page)."""
    return complete(store.report(midnight(since)), catalog)


def complete(rows: Sequence[Mapping[str, Any]], catalog: Catalog | None) -> list[dict[str, Any]]:
    """Rows from ``Store.report`` with reason displays filled in and the override rate."""
    done = []
    for row in rows:
        reasons = [dict(r, display=r.get("display") or _display(catalog, str(row["cardId"]), r))
                   for r in row.get("overrideReasons", [])]
        reasons.sort(key=lambda r: (-int(r["count"]), str(r["code"])))
        shown = int(row["shown"])
        rate = round(int(row["overridden"]) / shown, 2) if shown else None
        done.append({**row, "overrideReasons": [{"code": r["code"], "display": r["display"], "count": r["count"]}
                                                for r in reasons], "overrideRate": rate})
    return done


def _display(catalog: Catalog | None, card_id: str, reason: Mapping[str, Any]) -> str | None:
    if catalog is None or card_id not in catalog.cards:
        return None
    ours = catalog.shared.get("override_reason_system")
    if reason.get("system") and ours and reason.get("system") != ours:
        return None  # another code system's code: not ours to name
    for entry in catalog.cards[card_id].meta.get("override_reasons", []) or []:
        if isinstance(entry, Mapping) and str(entry.get("code")) == str(reason.get("code")):
            display = entry.get("display")
            return str(display) if display else None
    return None


def _reasons_text(row: Mapping[str, Any]) -> str:
    return "; ".join(f"{r['display'] or r['code']} [{r['code']}]: {r['count']}" for r in row["overrideReasons"])


def _rate_text(row: Mapping[str, Any]) -> str:
    return "-" if row["overrideRate"] is None else f"{row['overrideRate']:.2f}"


def format_rows(rows: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The rows as ``text`` (a table for people), ``csv`` or ``json`` (a list, one object per row)."""
    if fmt == "json":
        return json.dumps(list(rows), indent=2, ensure_ascii=False, default=str) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in COLUMNS[:-2]] + [
                "" if row["overrideRate"] is None else row["overrideRate"], _reasons_text(row)])
        return buffer.getvalue()
    if fmt != "text":
        raise ValueError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not rows:
        return "nothing recorded in this period\n"
    headers = ("card", "version", "hash", "shown", "shadow", "suppressed", "withheld", "accepted",
               "overridden", "rate")
    table = [[str(row["cardId"]), str(row["version"]), str(row["contentHash"])[:12]]
             + [str(row[c]) for c in COLUMNS[3:9]] + [_rate_text(row)] for row in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row, cells in zip(rows, table, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
        for reason in row["overrideReasons"]:
            lines.append(f"    overridden: {reason['display'] or reason['code']} [{reason['code']}] "
                         f"x{reason['count']}")
    return "\n".join(lines) + "\n"
