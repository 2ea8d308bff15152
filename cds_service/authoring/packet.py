"""The review packet: everything a compliance reviewer reads, per card — the exact text as written,
status, approval and whether it still matches, review dates, HTI-1 source attributes with full
citations, value sets with their codes, and a rendering for a representative fixture patient.

``/review`` (``http/web/review.py``) and ``cards export`` (``export.py``) show it.  It is computed
once per catalogue and day (``review_packet`` caches it).  No clinical sentence is written here: the
packet only carries text read from ``cards/``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from cds_service.authoring.calls import FixtureError, call_fixture, check_runtime, expected_cards, read_fixture
from cds_service.authoring.problems import short_error
from cds_service.authoring.statements import statements
from cds_service.clinical.dates import parse_date
from cds_service.devtools.fixtures import list_fixtures
from cds_service.engine import pipeline
from cds_service.engine.content import EXPERT_OPINION, Catalog, Renderer, bibliographic
from cds_service.protocol import HOOKS
from cds_service.terminology import EXT_ALIAS, EXT_ALIAS_EXCLUDE, Terminology

WITHHELD_WORDS = {
    "approval-hash-mismatch": "the approval does not match the current text",
    "review-overdue": "the review is overdue (next_review_due has passed)",
    "retired": "the card is retired",
    "no-content": "there is no card file",
}
_PACKETS_PER_CATALOG = 4

_PACKET_LOCK = threading.Lock()
# id(catalog) -> (a weak reference to it, {(fixtures dir, day): packet}); dead catalogues are dropped
# whenever a new one arrives.  (A Catalog is an unhashable dataclass: no WeakKeyDictionary.)
_PACKET_CACHE: dict[int, tuple[weakref.ref[Catalog], dict[tuple[str, str], dict[str, Any]]]] = {}


def review_packet(catalog: Catalog, fixtures_dir: str | Path, today: date | None = None) -> dict[str, Any]:
    """Everything a compliance reviewer reads, per card; computed once per catalog (and day).

    The returned dict is shared between callers: treat it as read-only.
    """
    today = today or datetime.now(UTC).date()
    key = (str(fixtures_dir), today.isoformat())
    with _PACKET_LOCK:
        entry = _PACKET_CACHE.get(id(catalog))
        if entry is None or entry[0]() is not catalog:
            for stale in [k for k, (ref, _) in _PACKET_CACHE.items() if ref() is None]:
                del _PACKET_CACHE[stale]
            entry = (weakref.ref(catalog), {})
            _PACKET_CACHE[id(catalog)] = entry
        packets = entry[1]
        if key not in packets:
            if len(packets) >= _PACKETS_PER_CATALOG:
                packets.clear()
            packets[key] = _build_packet(catalog, Path(fixtures_dir), today)
        return packets[key]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _valueset_entry(terminology: Terminology, vs_id: str) -> dict[str, Any]:
    if vs_id not in terminology:
        return {"id": vs_id, "missing": True, "title": vs_id, "concepts": [], "filters": [], "aliases": [],
                "excludes": []}
    vs = terminology[vs_id]
    filters = []
    for include in vs.resource.get("compose", {}).get("include", []) or []:
        for flt in include.get("filter", []) or []:
            filters.append({"system": include.get("system", ""), "property": flt.get("property", ""),
                            "op": flt.get("op", ""), "value": flt.get("value", "")})

    def extension_values(url: str) -> list[str]:
        return [str(e.get("valueString")) for e in vs.resource.get("extension", []) or []
                if isinstance(e, dict) and e.get("url") == url]

    return {
        "id": vs.id, "missing": False, "title": vs.title, "url": vs.url, "version": vs.version,
        "description": str(vs.resource.get("description", "")),
        "concepts": [{"system": c.system, "code": c.code, "display": c.display, "confidence": c.confidence,
                      "source": c.source} for c in vs.concepts],
        "filters": filters,
        "aliases": extension_values(EXT_ALIAS),
        "excludes": extension_values(EXT_ALIAS_EXCLUDE),
    }


def _representatives(fixtures_dir: Path, card_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """card id -> (fixture, hook): the first fixture that expects the card."""
    wanted = set(card_ids)
    found: dict[str, tuple[str, str]] = {}
    for name in list_fixtures(fixtures_dir):
        try:
            fixture = read_fixture(name, fixtures_dir)
        except FixtureError:  # an unreadable fixture is reported by `cards check`
            continue
        for hook in HOOKS:
            for card_id in expected_cards(fixture, hook):
                if card_id in wanted and card_id not in found:
                    found[card_id] = (name, hook)
        if wanted <= set(found):
            break
    return found


def _examples(catalog: Catalog, fixtures_dir: Path, today: date) -> dict[str, dict[str, Any]]:
    chosen = _representatives(fixtures_dir, catalog.cards)
    examples: dict[str, dict[str, Any]] = {}
    if not chosen:
        return examples
    try:
        runtime = check_runtime(catalog.directory, fixtures_dir, catalog)
    except Exception as exc:  # boundary: the page shows why there is no example, never a 500
        failure = f"the service cannot start: {short_error(exc)}"
        return {card_id: {"fixture": name, "hook": hook, "error": failure}
                for card_id, (name, hook) in chosen.items()}
    results: dict[tuple[str, str], pipeline.CallResult] = {}
    try:
        for card_id, (name, hook) in chosen.items():
            example: dict[str, Any] = {"fixture": name, "hook": hook}
            try:
                fixture = read_fixture(name, fixtures_dir)
                example["description"] = str(fixture.get("description", ""))
                if (name, hook) not in results:
                    results[(name, hook)] = call_fixture(runtime, fixture, hook, today)
                result = results[(name, hook)]
            except Exception as exc:  # boundary: one failing example is shown as such
                example["error"] = f"{type(exc).__name__}: {short_error(exc)}"
                examples[card_id] = example
                continue
            card = next((c for c in result.cards if c.card_id == card_id), None)
            if card is None:
                reason = next((w.reason for w in result.withheld if w.card_id == card_id), None)
                example["error"] = (f"not served for this patient ({reason})" if reason
                                    else "the service did not return this card for this patient")
            else:
                shown = card.to_json()
                example.update(summary=shown["summary"], detail=shown["detail"], indicator=shown["indicator"],
                               card=shown)
            examples[card_id] = example
    finally:
        runtime.store.close()
    return examples


def _card_entry(catalog: Catalog, card_id: str, today: date,
                example: dict[str, Any] | None) -> dict[str, Any]:
    card = catalog.cards[card_id]
    renderer = Renderer(catalog)
    fm = card.meta
    current = catalog.hashes[card_id]
    approval = card.approval
    approval_matches = None if approval is None else approval.get("content_hash") == current
    reason = catalog.servable(card_id, "approved-only", today)
    citations = []
    for key in fm.get("citations", []) or []:
        ref = catalog.references.get(str(key))
        citations.append({"key": str(key), "text": bibliographic(ref) if isinstance(ref, dict) else "",
                          "kind": ref.get("kind") if isinstance(ref, dict) else None,
                          "pmid": ref.get("pmid") if isinstance(ref, dict) else None,
                          "doi": ref.get("doi") if isinstance(ref, dict) else None,
                          "verified_at": ref.get("verified_at") if isinstance(ref, dict) else None,
                          "url": ref.get("url") if isinstance(ref, dict) else None,
                          "note": str(ref.get("note", "")) if isinstance(ref, dict) else "",
                          "missing": not isinstance(ref, dict)})
    due = parse_date(fm.get("next_review_due"))
    return _jsonable({
        "id": card_id,
        "title": str(fm.get("title", card_id)),
        "version": card.version,
        "status": card.status,
        "approval": dict(approval) if approval else None,
        "content_hash": current,
        "approval_matches": approval_matches,
        "servable": reason is None,
        "withheld_reason": reason,
        "withheld_explanation": None if reason is None else WITHHELD_WORDS.get(
            reason, f"the status is {card.status}, not approved" if reason.startswith("status-") else reason),
        "owner": fm.get("owner"),
        "next_review_due": fm.get("next_review_due"),
        "review_overdue": due is not None and due < today,
        "hti1": {
            "developer": fm.get("developer"),
            "funding_source": fm.get("funding_source"),
            "release_date": fm.get("release_date"),
            "revision_date": fm.get("revision_date"),
            "citations": citations,
        },
        "trigger": " ".join(str(fm.get("trigger", "")).split()),
        "indicator": fm.get("indicator"),
        "indicator_rules": fm.get("indicator_rules") or {},
        "summary_template": str(fm.get("summary", "")),
        "body_source": card.body,
        "example": example,
        "override_reasons": [r for r in fm.get("override_reasons", []) or [] if isinstance(r, dict)],
        "override_reason_system": catalog.shared.get("override_reason_system"),
        "suggestions": fm.get("suggestions") or [],
        "links": renderer.links(card, ""),
        # The public rationale page (GET /cards/<card-id>) exactly as served, and what on it is expert opinion.
        "rationale": renderer.rationale(card_id),
        "expert_opinion": [s for s in statements(card.rationale) if f"[{EXPERT_OPINION}]" in s],
        "valuesets": [_valueset_entry(catalog.terminology, str(v)) for v in fm.get("valuesets", []) or []],
        "path": card.path.name,
    })


def _build_packet(catalog: Catalog, fixtures_dir: Path, today: date) -> dict[str, Any]:
    examples = _examples(catalog, fixtures_dir, today)
    cards = [_card_entry(catalog, card_id, today, examples.get(card_id)) for card_id in sorted(catalog.cards)]
    summary = [{key: card[key] for key in ("id", "title", "version", "status", "indicator", "approval",
                                           "approval_matches", "servable", "withheld_reason",
                                           "withheld_explanation", "next_review_due", "review_overdue")}
               for card in cards]
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "today": today.isoformat(),
        "policy": "approved-only",
        "counts": {"cards": len(cards), "servable": sum(1 for c in cards if c["servable"]),
                   "value_sets": len(catalog.terminology.value_sets), "references": len(catalog.references)},
        "summary": summary,
        "cards": cards,
    }


# -- usage figures (the report's, per card) ---------------------------------------------------------
def with_usage(packet: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], since: date) -> dict[str, Any]:
    """The packet with ``usage``: ``cds-service report``'s rows since ``since``, by card id.  The cached
    packet is not changed (a shallow copy carries the figures)."""
    by_card: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_card.setdefault(str(row["cardId"]), []).append(dict(row))
    return {**packet, "usage": {"since": since.isoformat(), "by_card": by_card}}
