"""``cds-service cards approve``: record a reviewer's approval of a card's current text.

The approval is bound to the content hash (``Catalog.compute_hash``): any later change to what a
clinician can see voids it, and the card is withheld under ``CONTENT_POLICY=approved-only`` until
it is approved again.  The card file is edited textually, so comments and layout survive.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from cds_service.authoring.check import check
from cds_service.authoring.problems import ERROR, GovernanceError
from cds_service.clinical.dates import parse_date
from cds_service.engine.content import CardContent, Catalog, normalise_body, split_front_matter, split_rationale
from cds_service.settings import load_settings

_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:")


@dataclass(frozen=True)
class Approval:
    card_id: str
    reviewer: str
    role: str
    date: date
    content_hash: str
    path: Path


def _front_matter_bounds(lines: list[str]) -> int:
    """Index of the closing ``---`` line of the front matter (the opening one is line 0)."""
    if not lines or lines[0].strip() != "---":
        raise GovernanceError("the card has no YAML front matter")
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return index
    raise GovernanceError("the card's front matter is not closed by '---'")


def _key_block(lines: list[str], start: int, end: int, key: str) -> tuple[int, int] | None:
    """[first, last) line range of a top-level YAML key (its line and its indented continuation)."""
    for index in range(start, end):
        match = _TOP_LEVEL_KEY.match(lines[index])
        if match and match.group(1) == key:
            stop = index + 1
            while stop < end and (lines[stop].startswith((" ", "\t")) or not lines[stop].strip()):
                stop += 1
            while stop - 1 > index and not lines[stop - 1].strip():
                stop -= 1  # trailing blank lines belong to what follows
            return index, stop
    return None


def with_approval(text: str, reviewer: str, day: date, content_hash: str | None, role: str = "") -> str:
    """The card text with ``status: approved`` and (when ``content_hash``) the approval block, edited
    textually so that comments and layout of the rest of the front matter survive."""
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.replace("\r\n", "\n").split("\n")
    end = _front_matter_bounds(lines)
    status = _key_block(lines, 1, end, "status")
    if status is None:
        anchor = _key_block(lines, 1, end, "version") or _key_block(lines, 1, end, "id")
        position = anchor[1] if anchor else 1
        lines.insert(position, "status: approved")
        end += 1
    else:
        first, last = status
        quoted_end = lines[first].rstrip().endswith(("'", '"'))
        comment = None if quoted_end else re.search(r"\s+#.*$", lines[first])
        lines[first:last] = ["status: approved" + (comment.group(0) if comment else "")]
        end -= (last - first) - 1
    block = _key_block(lines, 1, end, "approval")
    new_block = [] if content_hash is None else [
        "approval:",
        f"  reviewer: {json.dumps(reviewer, ensure_ascii=False)}",
        *([f"  role: {json.dumps(role, ensure_ascii=False)}"] if role else []),
        f"  date: {day.isoformat()}",
        f"  content_hash: {content_hash}",
    ]
    if block is not None:
        lines[block[0]:block[1]] = new_block
    else:
        insert_at = end
        while insert_at - 1 > 0 and not lines[insert_at - 1].strip():
            insert_at -= 1
        lines[insert_at:insert_at] = new_block
    return newline.join(lines)


def approve(cards_dir: str | Path, card_id: str, reviewer: str, today: date | None = None,
            fixtures_dir: str | Path | None = None, role: str = "") -> Approval:
    """Record ``reviewer``'s approval (in ``role``, shown to clinicians) of the card's current text
    (``status: approved`` + approval block bound to the content hash).  Refuses content that fails ``check``."""
    cards_dir = Path(cards_dir)
    today = today or datetime.now(UTC).date()
    reviewer = " ".join(str(reviewer).split())
    if not reviewer:
        raise GovernanceError("a reviewer name is required")
    role = " ".join(str(role).split())
    if not role:
        raise GovernanceError("the reviewer's role is required (--role): clinicians see it in source.label")
    path = cards_dir / f"{card_id}.md"
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", card_id) or not path.is_file():
        raise GovernanceError(f"no card {card_id!r} in {cards_dir}")
    if fixtures_dir is None:
        fixtures_dir = load_settings().FIXTURES_DIR
    blocking = [p for p in check(cards_dir, fixtures_dir, today)
                if p.severity == ERROR and (p.card_id in (None, card_id))
                and not (p.kind == "stale-approval" and p.card_id == card_id)]
    if blocking:
        details = "\n".join(f"  {p}" for p in blocking)
        raise GovernanceError(f"{card_id} cannot be approved: `cards check` reports errors:\n{details}")
    original = path.read_text(encoding="utf-8")
    card_meta, _ = split_front_matter(original, path.name)
    if card_meta.get("status") == "retired":
        raise GovernanceError(f"{card_id} is retired: a retired card is never served; "
                              "change its status first")
    due = parse_date(card_meta.get("next_review_due"))
    if due is None or due < today:
        raise GovernanceError(f"{card_id}: next_review_due ({card_meta.get('next_review_due')}) has "
                              "passed: set the next review date before approving")

    # The hash covers the status (approved) but not the approval block: compute it on the new text.
    unapproved = with_approval(original, reviewer, today, None)
    catalog = Catalog.load(cards_dir)
    new_meta, new_body = split_front_matter(unapproved, path.name)
    new_detail, new_rationale = split_rationale(new_body)
    catalog.cards[card_id] = CardContent(card_id, new_meta, normalise_body(new_detail), path,
                                         rationale=normalise_body(new_rationale) if new_rationale.strip() else "")
    content_hash = catalog.compute_hash(card_id)
    approved_text = with_approval(original, reviewer, today, content_hash, role)
    path.write_text(approved_text, encoding="utf-8")
    reloaded = Catalog.load(cards_dir)
    if reloaded.hashes.get(card_id) != content_hash or reloaded.servable(card_id, "approved-only", today):
        path.write_text(original, encoding="utf-8")
        raise GovernanceError(f"{card_id}: the approval did not verify after writing; the file was restored")
    return Approval(card_id, reviewer, role, today, content_hash, path)
