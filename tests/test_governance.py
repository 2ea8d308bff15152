"""Content governance: `cards check`, approvals bound to the content hash, export, report, fixture requests."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from jsonschema import Draft202012Validator
from markupsafe import escape

from cds_service import create_app
from cds_service.authoring import (
    ERROR,
    INFO,
    WARNING,
    GovernanceError,
    Problem,
    approve,
    check,
    export,
    fixture_requests,
    format_rows,
    report_rows,
    with_approval,
)
from cds_service.authoring.front_matter import front_matter_schema
from cds_service.cli import main
from cds_service.clinical import facts
from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine.content import INDICATORS, STATUSES, Catalog, split_front_matter
from cds_service.engine.store import AuditRecord, Store
from cds_service.protocol import Limits, parse_request

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "cards"
FIXTURES = ROOT / "fixtures"
TODAY = datetime.now(UTC).date()
ROLE = "Consultant rheumatologist"
DEMO_FIXTURE = "pl7-ro52-rpild"  # fires ivig-not-first-line, asys-high-risk-phenotype, ild-monitoring
# Enough patients for every card to fire (the full set runs in test_check_passes_on_the_shipped_content).
SOME_FIXTURES = (DEMO_FIXTURE, "pl7-ro52-rpild-on-therapy", "mda5-dm-ild", "safety-iga-low-critical",
                 "ild-no-antibodies")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def content(tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of cards/ and of some fixtures, to break or approve."""
    cards = tmp_path / "cards"
    fixtures = tmp_path / "fixtures"
    shutil.copytree(CARDS, cards)
    fixtures.mkdir()
    for name in SOME_FIXTURES:
        shutil.copy(FIXTURES / f"{name}.json", fixtures)
    return cards, fixtures


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def drop_key(path: Path, key: str) -> None:
    """Remove a top-level front matter key and its indented block."""
    lines = path.read_text(encoding="utf-8").split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
    stop = start + 1
    while stop < len(lines) and (lines[stop].startswith((" ", "\t")) or not lines[stop].strip()):
        stop += 1
    del lines[start:stop]
    path.write_text("\n".join(lines), encoding="utf-8")


def set_key(path: Path, key: str, value: str) -> None:
    text = path.read_text(encoding="utf-8")
    text, n = re.subn(rf"(?m)^{key}:.*$", f"{key}: {value}", text, count=1)
    assert n == 1
    path.write_text(text, encoding="utf-8")


def front_matter(path: Path) -> dict[str, Any]:
    meta, _ = split_front_matter(path.read_text(encoding="utf-8"), path.name)
    return meta


# --------------------------------------------------------------------------------------------------
# cards check
# --------------------------------------------------------------------------------------------------

def test_check_passes_on_the_shipped_content() -> None:
    problems = check(CARDS, FIXTURES)
    assert errors(problems) == [], "\n".join(str(p) for p in errors(problems))
    # The shipped cards stay `submitted` (nobody here is a clinical reviewer).
    catalog = Catalog.load(CARDS)
    assert {c.status for c in catalog.cards.values()} <= {"draft", "submitted", "under-review"}


def test_check_lists_low_confidence_codes_as_information() -> None:
    problems = check(CARDS, FIXTURES)
    listed = [p for p in problems if p.kind == "low-confidence-code"]
    expected = Catalog.load(CARDS).terminology.low_confidence()
    assert len(listed) == len(expected)
    assert all(p.severity == INFO for p in listed)


def test_cli_check_exit_status_and_report(content: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cards, fixtures = content
    assert main(["cards", "check", "--cards-dir", str(cards), "--fixtures-dir", str(fixtures)]) == 0
    out = capsys.readouterr().out
    assert "Result: OK" in out
    edit(cards / "ivig-safety.md", "status: submitted", "status: published")
    assert main(["cards", "check", "--cards-dir", str(cards), "--fixtures-dir", str(fixtures)]) == 1
    out = capsys.readouterr().out
    assert "Result: FAILED" in out and "ivig-safety.md" in out and "published" in out


def _bad_status(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "status: submitted", "status: published")


def _missing_owner(cards: Path) -> None:
    drop_key(cards / "ivig-safety.md", "owner")


def _bad_date(cards: Path) -> None:
    set_key(cards / "ivig-safety.md", "next_review_due", '"next spring"')


def _bad_version(cards: Path) -> None:
    set_key(cards / "ivig-safety.md", "version", '"1.0"')


def _broken_yaml(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "indicator: info", "indicator: [info")


def _bad_indicator(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "indicator: info", "indicator: urgent")


def _bad_approval_block(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "status: submitted", "status: approved\napproval: {reviewer: Dr X}")


def _unknown_placeholder(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "{{ facts_used }}", "{{ facts_used }}\n\nPatient: {{ patient_name }}")


def _unknown_attribute(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "{{ facts_used }}", "{{ facts_used }}\n\neGFR {{ egfr.valu }}")


def _unknown_summary_placeholder(cards: Path) -> None:
    set_key(cards / "mda5-ild-ivig-adjunct.md", "summary", '"Anti-MDA5 with ILD in {{ patient.name }}"')


def _template_syntax(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "{{ facts_used }}", "{% if findings %}{{ facts_used }}")


def _unknown_citation_in_body(cards: Path) -> None:
    edit(cards / "ivig-not-first-line.md", "{{ facts_used }}", "{{ facts_used }}\n\n- A claim [smith-1999]")


def _unknown_citation_in_front_matter(cards: Path) -> None:
    edit(cards / "ivig-not-first-line.md", "citations: [", "citations: [smith-1999, ")


def _body_citation_not_listed(cards: Path) -> None:
    edit(cards / "mda5-ild-ivig-adjunct.md", "{{ facts_used }}", "{{ facts_used }}\n\n- A claim [huapaya-2019]")


def _bad_reference(cards: Path) -> None:
    edit(cards / "references.yaml", 'url: "https://pubmed.ncbi.nlm.nih.gov/38973731/"',
         'url: "http://pubmed.ncbi.nlm.nih.gov/38973731/"')


def _invalid_value_set(cards: Path) -> None:
    path = cards / "valuesets" / "antibody-pl7.json"
    resource = json.loads(path.read_text(encoding="utf-8"))
    resource["date"] = "last week"
    path.write_text(json.dumps(resource, indent=2), encoding="utf-8")


def _value_set_not_json(cards: Path) -> None:
    (cards / "valuesets" / "antibody-pl7.json").write_text("{ not json", encoding="utf-8")


def _unknown_value_set_id(cards: Path) -> None:
    edit(cards / "ivig-safety.md", "valuesets: [", "valuesets: [antibody-xyz, ")


def _summary_too_long(cards: Path) -> None:
    set_key(cards / "mda5-ild-ivig-adjunct.md", "summary", '"' + "Anti-MDA5 with ILD: " * 8 + '"')


def _summary_too_long_with_order_display(cards: Path) -> None:
    # 103 characters of text plus the IVIG order's display (longest product name): over 140 only when rendered.
    text = "Anti-MDA5 with ILD: IVIG added to immunosuppression was linked to lower 6-month mortality in one study"
    set_key(cards / "mda5-ild-ivig-adjunct.md", "summary", f'"{text} ({{{{ order_display }}}})"')


def _warning_without_override_reasons(cards: Path) -> None:
    drop_key(cards / "asys-high-risk-phenotype.md", "override_reasons")


def _escalating_card_without_override_reasons(cards: Path) -> None:
    edit(cards / "ild-monitoring.md", "indicator: info", "indicator: info\nindicator_rules:\n  rp-ild: critical")


def _override_reason_without_display(cards: Path) -> None:
    edit(cards / "asys-high-risk-phenotype.md",
         '{code: phenotype-already-known, display: "Phenotype known; treatment already adjusted"}',
         "{code: phenotype-already-known}")


def _invalid_suggestion_resource(cards: Path) -> None:
    edit(cards / "ild-monitoring.md", "intent: proposal", "authoredOn: yesterday")


def _stale_approval(cards: Path) -> None:
    approve(cards, "mda5-ild-ivig-adjunct", "Dr Reviewer", TODAY, fixtures_dir=cards.parent / "fixtures", role=ROLE)
    edit(cards / "mda5-ild-ivig-adjunct.md", "**Why you are seeing this**", "**Why you are seeing this (edited)**")


def _approved_without_approval(cards: Path) -> None:
    edit(cards / "mda5-ild-ivig-adjunct.md", "status: submitted", "status: approved")


def _missing_card_file(cards: Path) -> None:
    (cards / "ild-monitoring.md").unlink()


def _id_not_file_name(cards: Path) -> None:
    edit(cards / "ild-monitoring.md", "id: ild-monitoring", "id: ild-follow-up")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (how to break the copy, expected kind, file the error names)
    "bad status": (_bad_status, "front-matter", "ivig-safety.md"),
    "missing owner": (_missing_owner, "front-matter", "ivig-safety.md"),
    "bad date": (_bad_date, "front-matter", "ivig-safety.md"),
    "bad version": (_bad_version, "front-matter", "ivig-safety.md"),
    "broken YAML": (_broken_yaml, "front-matter", "ivig-safety.md"),
    "bad indicator": (_bad_indicator, "front-matter", "ivig-safety.md"),
    "bad approval block": (_bad_approval_block, "approval", "ivig-safety.md"),
    "unknown placeholder": (_unknown_placeholder, "placeholder", "ivig-safety.md"),
    "unknown attribute": (_unknown_attribute, "placeholder", "ivig-safety.md"),
    "unknown summary placeholder": (_unknown_summary_placeholder, "placeholder", "mda5-ild-ivig-adjunct.md"),
    "template syntax": (_template_syntax, "template", "ivig-safety.md"),
    "unknown citation in body": (_unknown_citation_in_body, "citation", "ivig-not-first-line.md"),
    "unknown citation in front matter": (_unknown_citation_in_front_matter, "citation", "ivig-not-first-line.md"),
    "body citation not listed": (_body_citation_not_listed, "citation", "mda5-ild-ivig-adjunct.md"),
    "bad reference": (_bad_reference, "reference", "references.yaml"),
    "invalid value set": (_invalid_value_set, "valueset", "valuesets/antibody-pl7.json"),
    "value set not JSON": (_value_set_not_json, "valueset", "valuesets/antibody-pl7.json"),
    "unknown value set id": (_unknown_value_set_id, "valueset", "ivig-safety.md"),
    "summary too long": (_summary_too_long, "summary-length", "mda5-ild-ivig-adjunct.md"),
    "summary too long with a long order display": (_summary_too_long_with_order_display, "summary-length",
                                            "mda5-ild-ivig-adjunct.md"),
    "warning card without overrideReasons": (_warning_without_override_reasons, "override-reasons",
                                             "asys-high-risk-phenotype.md"),
    "escalating card without overrideReasons": (_escalating_card_without_override_reasons, "override-reasons",
                                                "ild-monitoring.md"),
    "override reason without display": (_override_reason_without_display, "override-reasons",
                                        "asys-high-risk-phenotype.md"),
    "invalid suggestion resource": (_invalid_suggestion_resource, "suggestion", "ild-monitoring.md"),
    "stale approval hash": (_stale_approval, "stale-approval", "mda5-ild-ivig-adjunct.md"),
    "approved without approval": (_approved_without_approval, "approval", "mda5-ild-ivig-adjunct.md"),
    "missing card file": (_missing_card_file, "missing-card", "pl7-ro52-rpild.json"),
    "id is not the file name": (_id_not_file_name, "front-matter", "ild-monitoring.md"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_check_fails_on_each_kind_of_content_error(breakage: str, content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    breaker, kind, file_name = BREAKAGES[breakage]
    breaker(cards)
    found = errors(check(cards, fixtures))
    assert found, f"{breakage}: no error reported"
    matching = [p for p in found if p.kind == kind and p.file.endswith(file_name)]
    assert matching, f"{breakage}: expected a {kind} error on {file_name}, got:\n" + "\n".join(map(str, found))


def test_summary_overflow_found_only_with_fixture_facts_names_the_fixture(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    # Long only for a plainly "positive" anti-MDA5 (the synthetic contexts use strong-positive / unknown):
    # only a fixture patient (mda5-dm-ild) reaches the long branch.
    long_text = "Anti-MDA5 positive with ILD: IVIG added to immunosuppression was linked to lower six-month " \
                "mortality in one retrospective study from China (2022)"
    template = f"{{% if antibodies.mda5.status == 'positive' %}}{long_text}{{% else %}}Anti-MDA5 with ILD{{% endif %}}"
    set_key(cards / "mda5-ild-ivig-adjunct.md", "summary", f'"{template}"')
    found = [p for p in errors(check(cards, fixtures)) if p.kind == "summary-length"]
    assert found and all(p.message.startswith("fixture mda5-dm-ild") for p in found), found


def test_warnings_do_not_fail_the_check(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    # A list item glued to the line before it (a `{%-` ate the line break).
    edit(cards / "ivig-safety.md", "**Why you are seeing this**", "- first item [label-privigen]\n{%- if true %}\n"
         "- Second item [label-privigen]\n{%- endif %}\n\n**Why you are seeing this**")
    # A finding key that no rule sets.
    edit(cards / "ivig-safety.md", "{{ data_notes }}",
         "{% if 'rp-ildd' in findings %}- x [label-privigen]{% endif %}\n{{ data_notes }}")
    # A review that is overdue.
    set_key(cards / "ild-monitoring.md", "next_review_due", (TODAY - timedelta(days=1)).isoformat())
    problems = check(cards, fixtures)
    assert not errors(problems), errors(problems)
    warned = {(p.kind, p.file) for p in problems if p.severity == WARNING}
    assert {("markdown", "ivig-safety.md"), ("unknown-finding", "ivig-safety.md"),
            ("review-overdue", "ild-monitoring.md")} <= warned


def test_front_matter_schema_is_draft_2020_12_and_speaks_the_engines_vocabulary() -> None:
    schema = front_matter_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    # The values the catalogue serves by are the values the schema allows: they cannot drift apart.
    assert tuple(schema["properties"]["status"]["enum"]) == STATUSES
    assert tuple(schema["$defs"]["indicator"]["enum"]) == INDICATORS


def test_front_matter_problems_name_the_file_the_field_and_the_fault(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    path = cards / "ivig-safety.md"
    _bad_status(cards)
    _missing_owner(cards)
    _bad_date(cards)
    edit(path, "developer:", "ownr: someone\ndeveloper:")
    set_key(path, "citations", "[]")
    edit(path, "- {code: risk-reviewed-benefit-outweighs, ", "- {code: Risk Reviewed, ")
    problems = [p for p in check(cards, fixtures) if p.file == "ivig-safety.md"]
    shown = {(p.severity, p.kind, p.message) for p in problems}
    assert (ERROR, "front-matter", "`status` must be one of draft, submitted, under-review, approved, retired, "
            "not 'published'") in shown
    assert (ERROR, "front-matter", "`owner` is required") in shown
    assert (ERROR, "front-matter", "`next_review_due` must be a date (YYYY-MM-DD), not 'next spring'") in shown
    assert (WARNING, "front-matter", "unknown front matter key `ownr` (a typo?)") in shown
    assert (WARNING, "front-matter", "`citations` is empty") in shown
    assert (WARNING, "override-reasons",
            "`override_reasons[0].code` 'Risk Reviewed': use lower-case letters, digits and '-'") in shown
    # One message per field, not one per failed keyword.
    assert sum("`status`" in p.message for p in problems) == 1


def test_front_matter_shape_errors_in_nested_blocks(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    edit(cards / "ild-monitoring.md", "is_recommended: false", "is_recommended: maybe")
    edit(cards / "ild-monitoring.md", "      - type: create", "      - type: replace")
    _bad_approval_block(cards)
    found = {(p.file, p.kind, p.message) for p in errors(check(cards, fixtures))}
    assert ("ild-monitoring.md", "suggestion", "`suggestions[0].is_recommended` must be true or false") in found
    assert ("ild-monitoring.md", "suggestion",
            "`suggestions[0].actions[0].type` must be one of create, update, delete") in found
    assert ("ivig-safety.md", "approval", "`approval.content_hash` is required") in found
    assert ("ivig-safety.md", "approval", "`approval.date` is required") in found


# --------------------------------------------------------------------------------------------------
# cards approve
# --------------------------------------------------------------------------------------------------

def test_approve_writes_status_and_approval_and_keeps_the_rest(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    path = cards / "ivig-not-first-line.md"
    before = path.read_text(encoding="utf-8")
    result = approve(cards, "ivig-not-first-line", "Dr Ada Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    after = path.read_text(encoding="utf-8")

    meta = front_matter(path)
    assert meta["status"] == "approved"
    assert meta["approval"] == {"reviewer": "Dr Ada Reviewer", "role": ROLE, "date": TODAY,
                                "content_hash": result.content_hash}
    # Only the status line changed and the approval block was added: comments and body survive.
    removed = [line for line in before.split("\n") if line not in after.split("\n")]
    added = [line for line in after.split("\n") if line not in before.split("\n")]
    assert removed == ["status: submitted"]
    assert added[0] == "status: approved" and added[1] == "approval:" and len(added) == 6
    assert "# The seeds' reasons" in after
    assert after.split("\n---\n", 1)[1] == before.split("\n---\n", 1)[1]

    catalog = Catalog.load(cards)
    assert catalog.hashes["ivig-not-first-line"] == result.content_hash
    assert catalog.servable("ivig-not-first-line", "approved-only", TODAY) is None
    assert not errors(check(cards, fixtures))


def test_reapproval_replaces_the_approval_block(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    first = approve(cards, "ivig-safety", "Dr One", TODAY, fixtures_dir=fixtures, role=ROLE)
    edit(cards / "ivig-safety.md", "**Adverse events to watch for**", "**Adverse events to monitor**")
    assert Catalog.load(cards).servable("ivig-safety", "approved-only", TODAY) == "approval-hash-mismatch"
    second = approve(cards, "ivig-safety", "Dr Two", TODAY, fixtures_dir=fixtures, role=ROLE)
    text = (cards / "ivig-safety.md").read_text(encoding="utf-8")
    assert text.count("approval:") == 1 and text.count("status: approved") == 1
    assert first.content_hash != second.content_hash
    assert front_matter(cards / "ivig-safety.md")["approval"]["reviewer"] == "Dr Two"
    assert Catalog.load(cards).servable("ivig-safety", "approved-only", TODAY) is None


def test_approve_refuses_content_that_fails_check(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    _unknown_placeholder(cards)
    before = (cards / "ivig-safety.md").read_text(encoding="utf-8")
    with pytest.raises(GovernanceError, match="patient_name"):
        approve(cards, "ivig-safety", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    assert (cards / "ivig-safety.md").read_text(encoding="utf-8") == before
    # Errors in another card do not block this one.
    approve(cards, "ild-monitoring", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)


def test_approve_refuses_when_shared_files_are_broken(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    _bad_reference(cards)
    with pytest.raises(GovernanceError, match="references.yaml"):
        approve(cards, "ild-monitoring", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)


def test_approve_refuses_retired_unknown_and_overdue_cards(content: tuple[Path, Path]) -> None:
    cards, fixtures = content
    edit(cards / "ild-monitoring.md", "status: submitted", "status: retired")
    with pytest.raises(GovernanceError, match="retired"):
        approve(cards, "ild-monitoring", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    with pytest.raises(GovernanceError, match="no card"):
        approve(cards, "no-such-card", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    with pytest.raises(GovernanceError, match="reviewer"):
        approve(cards, "ivig-safety", "  ", TODAY, fixtures_dir=fixtures, role=ROLE)
    set_key(cards / "ivig-safety.md", "next_review_due", (TODAY - timedelta(days=1)).isoformat())
    set_key(cards / "ivig-safety.md", "last_reviewed", (TODAY - timedelta(days=100)).isoformat())
    with pytest.raises(GovernanceError, match="next_review_due"):
        approve(cards, "ivig-safety", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)


def test_cli_approve(content: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cards, fixtures = content
    args = ["cards", "approve", "ild-monitoring", "--reviewer", "Dr CLI", "--role", ROLE, "--cards-dir", str(cards),
            "--fixtures-dir", str(fixtures)]
    assert main(args) == 0
    assert "approved ild-monitoring by Dr CLI" in capsys.readouterr().out
    assert front_matter(cards / "ild-monitoring.md")["approval"]["reviewer"] == "Dr CLI"
    assert main(["cards", "approve", "nope", "--reviewer", "X", "--role", ROLE, "--cards-dir", str(cards)]) == 1
    assert "no card" in capsys.readouterr().err


def test_with_approval_inserts_status_and_handles_crlf() -> None:
    text = "---\r\nid: x\r\nversion: 1.0.0\r\ntitle: \"T\"  # a comment\r\n---\r\nBody\r\n"
    out = with_approval(text, 'Dr "Quote"', date(2026, 1, 2), "a" * 64)
    assert "\r\nstatus: approved\r\n" in out and out.endswith("Body\r\n")
    assert 'reviewer: "Dr \\"Quote\\""' in out
    meta, body = split_front_matter(out)
    assert meta["status"] == "approved" and meta["approval"]["reviewer"] == 'Dr "Quote"'
    assert meta["title"] == "T" and body.strip() == "Body"


def test_with_approval_keeps_a_status_comment() -> None:
    text = "---\nid: x\nstatus: submitted   # draft | submitted\napproval: {reviewer: A, date: 2026-01-01,\n" \
           "  content_hash: abc}\nowner: me\n---\nBody\n"
    out = with_approval(text, "B", date(2026, 1, 2), "b" * 64)
    assert "status: approved   # draft | submitted" in out
    assert out.count("approval:") == 1 and "owner: me" in out and "reviewer: A" not in out


# -- serving policy through the HTTP endpoint --------------------------------------------------------

@pytest.fixture
def policy_app(content: tuple[Path, Path], tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    for name in list(os.environ):
        if name.startswith("CDS_") and name != "CDS_TEST_DATABASE_URL":
            monkeypatch.delenv(name)
    cards, _ = content
    made: list[Flask] = []

    def factory(policy: str = "approved-only") -> Flask:
        app = create_app({"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": policy, "CARDS_DIR": str(cards),
                          "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"})
        made.append(app)
        return app

    yield factory
    for app in made:
        app.extensions["cds_runtime"].store.close()


def served(app: Flask) -> list[str]:
    request = build_request(load_fixture(DEMO_FIXTURE, FIXTURES), "order-select")
    response = app.test_client().post("/cds-services/ivig-order-select", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


def test_approved_card_is_served_until_edited_and_again_when_reapproved(
        content: tuple[Path, Path], policy_app: Callable[..., Flask]) -> None:
    cards, fixtures = content
    assert served(policy_app()) == []  # nothing approved: everything withheld
    assert set(served(policy_app("all"))) == {"ivig-not-first-line", "asys-high-risk-phenotype", "ild-monitoring"}

    approve(cards, "ivig-not-first-line", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    app = policy_app()
    assert served(app) == ["ivig-not-first-line"]
    request = build_request(load_fixture(DEMO_FIXTURE, FIXTURES), "order-select")
    card = app.test_client().post("/cds-services/ivig-order-select", json=request).get_json()["cards"][0]
    assert card["extension"]["org.example.ivig-cds"]["status"] == "approved"
    assert card["extension"]["org.example.ivig-cds"]["contentHash"] == \
        front_matter(cards / "ivig-not-first-line.md")["approval"]["content_hash"]

    edit(cards / "ivig-not-first-line.md", "**Why you are seeing this**", "**Why you are seeing this (edited)**")
    app = policy_app()
    assert served(app) == []
    store = app.extensions["cds_runtime"].store
    assert store.flush()
    withheld = [{"cardId": w["cardId"], "reason": w["reason"]} for w in json.loads(store.audit_rows()[-1]["withheld"])]
    assert {"cardId": "ivig-not-first-line", "reason": "approval-hash-mismatch"} in withheld

    approve(cards, "ivig-not-first-line", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    assert served(policy_app()) == ["ivig-not-first-line"]


def test_expired_review_is_withheld(content: tuple[Path, Path], policy_app: Callable[..., Flask]) -> None:
    cards, fixtures = content
    path = cards / "asys-high-risk-phenotype.md"
    set_key(path, "next_review_due", (TODAY - timedelta(days=1)).isoformat())
    # Approved while the review was still current (two days ago) ...
    approve(cards, "asys-high-risk-phenotype", "Dr Reviewer", TODAY - timedelta(days=2),
            fixtures_dir=fixtures, role=ROLE)
    assert Catalog.load(cards).servable("asys-high-risk-phenotype", "approved-only",
                                        TODAY - timedelta(days=2)) is None
    # ... and withheld today, when the review is overdue.
    app = policy_app()
    assert served(app) == []
    store = app.extensions["cds_runtime"].store
    assert store.flush()
    withheld = [{"cardId": w["cardId"], "reason": w["reason"]} for w in json.loads(store.audit_rows()[-1]["withheld"])]
    assert {"cardId": "asys-high-risk-phenotype", "reason": "review-overdue"} in withheld


def test_retired_card_is_never_served(content: tuple[Path, Path], policy_app: Callable[..., Flask]) -> None:
    cards, fixtures = content
    approve(cards, "ild-monitoring", "Dr Reviewer", TODAY, fixtures_dir=fixtures, role=ROLE)
    assert served(policy_app()) == ["ild-monitoring"]
    edit(cards / "ild-monitoring.md", "status: approved", "status: retired")
    assert served(policy_app()) == []
    assert "ild-monitoring" not in served(policy_app("all"))


# --------------------------------------------------------------------------------------------------
# cards export
# --------------------------------------------------------------------------------------------------

def test_export_html_contains_every_card_and_citation(tmp_path: Path) -> None:
    out = export(CARDS, FIXTURES, tmp_path / "packet" / "review.html")
    html = out.read_text(encoding="utf-8")
    catalog = Catalog.load(CARDS)
    assert html.startswith("<!doctype html>")
    # Self-contained: inline CSS, no scripts, no external stylesheet or images.
    assert "<style>" in html and "<script" not in html and "<link" not in html and "<img" not in html
    for card_id, card in catalog.cards.items():
        assert f'id="card-{card_id}"' in html
        assert f'href="#card-{card_id}"' in html
        for key in card.meta["citations"]:
            assert f"[{key}]" in html
            title = catalog.references[key]["title"]
            assert str(escape(title)) in html
        for reason in card.meta.get("override_reasons") or []:
            assert reason["code"] in html
        for vs_id in card.meta["valuesets"]:
            for concept in catalog.terminology[vs_id].concepts[:3]:
                assert concept.code in html


def test_export_json_contains_every_card_and_citation(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "review.json"
    assert main(["cards", "export", "--out", str(out), "--format", "json", "--cards-dir", str(CARDS),
                 "--fixtures-dir", str(FIXTURES)]) == 0
    packet = json.loads(out.read_text(encoding="utf-8"))
    catalog = Catalog.load(CARDS)
    by_id = {card["id"]: card for card in packet["cards"]}
    assert set(by_id) == set(catalog.cards)
    assert [row["id"] for row in packet["summary"]] == sorted(catalog.cards)
    for card_id, card in catalog.cards.items():
        entry = by_id[card_id]
        assert [c["key"] for c in entry["hti1"]["citations"]] == card.meta["citations"]
        assert all(c["text"] for c in entry["hti1"]["citations"])
        assert entry["content_hash"] == catalog.hashes[card_id]
        assert entry["body_source"] == card.body
        assert entry["servable"] is False and entry["withheld_reason"].startswith("status-")
        assert [v["id"] for v in entry["valuesets"]] == card.meta["valuesets"]
        assert entry["example"] is not None and "error" not in entry["example"], entry["example"]
        assert entry["example"]["summary"]
    assert "written" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

def _database_urls() -> list[Any]:
    urls: list[Any] = ["sqlite"]
    if os.environ.get("CDS_TEST_DATABASE_URL"):
        urls.append("postgresql")
    else:
        urls.append(pytest.param("postgresql", marks=pytest.mark.skip(
            reason="set CDS_TEST_DATABASE_URL to a PostgreSQL URL to run the report on PostgreSQL")))
    return urls


@pytest.fixture(params=_database_urls())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/report.sqlite3"
        return
    yield request.getfixturevalue("pg_url")


def _shown(store: Store, card_id: str, version: str, uuid_: str, at: datetime) -> None:
    store.audit(AuditRecord(service_id="ivig-order-sign", hook="order-sign", outcome="cards", status_code=200,
                            latency_ms=3.0, at=at,
                            cards=[{"uuid": uuid_, "cardId": card_id, "version": version, "contentHash": "h" * 64}]))


def _feedback(uuid_: str, outcome: str, code: str | None = None, display: str | None = None,
              when: str = "2026-11-22T10:00:00Z") -> dict[str, Any]:
    item: dict[str, Any] = {"card": uuid_, "outcome": outcome, "outcomeTimestamp": when}
    if code:
        item["overrideReason"] = {"reason": {"system": "https://ivig-cds.example.org/override-reason",
                                             "code": code, "display": display}}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": "s-1"}]
    return item


def test_report_counts(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = Store(database_url)
    store.create_schema()
    now = datetime.now(UTC)
    old = now - timedelta(days=60)
    for n in range(4):
        _shown(store, "ivig-safety", "1.0.0", f"safety-{n}", now)
    _shown(store, "ivig-safety", "1.1.0", "safety-new", now)
    _shown(store, "ild-monitoring", "1.0.0", "ild-0", now)
    _shown(store, "ild-monitoring", "1.0.0", "ild-old", old)  # before --since: not counted
    assert store.flush()
    items = [
        _feedback("safety-0", "accepted"),
        _feedback("safety-1", "overridden", "risk-reviewed-benefit-outweighs", "Risk reviewed"),
        _feedback("safety-2", "overridden", "risk-reviewed-benefit-outweighs", "Risk reviewed"),
        _feedback("safety-3", "overridden", "renal-function-checked-elsewhere", "Renal checked"),
        _feedback("safety-new", "overridden"),
        _feedback("ild-old", "accepted"),
    ]
    store.add_feedback("ivig-order-sign", items, None)
    store.add_feedback("ivig-order-sign", items[:2], None)  # posted twice: stored once
    # The same card overridden again later (a second feedback item): counted once.
    store.add_feedback("ivig-order-sign", [_feedback("safety-1", "overridden", "risk-reviewed-benefit-outweighs",
                                                     "Risk reviewed", when="2026-11-22T11:00:00Z")], None)
    store.close()

    since = (now - timedelta(days=7)).date()
    rows = {(r["cardId"], r["version"]): r for r in report_rows(database_url, since, CARDS)}
    assert set(rows) == {("ivig-safety", "1.0.0"), ("ivig-safety", "1.1.0"), ("ild-monitoring", "1.0.0")}
    safety = rows[("ivig-safety", "1.0.0")]
    assert (safety["shown"], safety["accepted"], safety["overridden"], safety["overrideRate"]) == (4, 1, 3, 0.75)
    assert safety["overrideReasons"] == [
        {"code": "risk-reviewed-benefit-outweighs", "display": "Risk reviewed", "count": 2},
        {"code": "renal-function-checked-elsewhere", "display": "Renal checked", "count": 1}]
    newer = rows[("ivig-safety", "1.1.0")]
    assert (newer["shown"], newer["accepted"], newer["overridden"], newer["overrideReasons"]) == (1, 0, 1, [])
    ild = rows[("ild-monitoring", "1.0.0")]
    assert (ild["shown"], ild["accepted"], ild["overridden"]) == (1, 0, 0)

    assert main(["report", "--since", since.isoformat(), "--database-url", database_url, "--format", "json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert [(r["cardId"], r["version"], r["shown"]) for r in reported] == [
        ("ild-monitoring", "1.0.0", 1), ("ivig-safety", "1.0.0", 4), ("ivig-safety", "1.1.0", 1)]
    assert set(reported[0]) == {"cardId", "version", "contentHash", "shown", "shadow", "suppressed", "withheld",
                                "accepted", "overridden", "overrideReasons", "overrideRate"}

    assert main(["report", "--since", since.isoformat(), "--database-url", database_url, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0] == ("cardId,version,contentHash,shown,shadow,suppressed,withheld,accepted,overridden,"
                        "overrideRate,overrideReasons")
    assert lines[2] == (f"ivig-safety,1.0.0,{'h' * 64},4,0,0,0,1,3,0.75,"
                        "Risk reviewed [risk-reviewed-benefit-outweighs]: 2; "
                        "Renal checked [renal-function-checked-elsewhere]: 1")

    assert main(["report", "--since", since.isoformat(), "--database-url", database_url]) == 0
    text_lines = capsys.readouterr().out.split("\n")
    assert text_lines[0].split() == ["card", "version", "hash", "shown", "shadow", "suppressed", "withheld",
                                     "accepted", "overridden", "rate"]
    assert "overridden: Risk reviewed [risk-reviewed-benefit-outweighs] x2" in "\n".join(text_lines)


def test_report_after_real_hook_calls_and_feedback(make_app: Callable[..., Flask]) -> None:
    app = make_app(CONTENT_POLICY="all")
    client = app.test_client()
    request = build_request(load_fixture(DEMO_FIXTURE, FIXTURES), "order-sign")
    cards = client.post("/cds-services/ivig-order-sign", json=request).get_json()["cards"]
    warning = next(c for c in cards if c["source"]["topic"]["code"] == "ivig-not-first-line")
    reason = warning["overrideReasons"][0]
    response = client.post("/cds-services/ivig-order-sign/feedback", json={"feedback": [{
        "card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:00:00Z",
        "overrideReason": {"reason": reason, "userComment": "seen"}}]})
    assert response.status_code == 200
    runtime = app.extensions["cds_runtime"]
    assert runtime.store.flush()
    rows = {r["cardId"]: r for r in report_rows(runtime.settings.DATABASE_URL, TODAY - timedelta(days=1))}
    assert set(rows) == {c["source"]["topic"]["code"] for c in cards}
    assert rows["ivig-not-first-line"]["overridden"] == 1
    assert rows["ivig-not-first-line"]["overrideReasons"] == [
        {"code": reason["code"], "display": reason["display"], "count": 1}]
    assert format_rows([], "csv") == ("cardId,version,contentHash,shown,shadow,suppressed,withheld,accepted,"
                                      "overridden,overrideRate,overrideReasons\n")


def test_report_rejects_a_bad_date(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", "--since", "last tuesday", "--database-url", "sqlite://"])
    assert "YYYY-MM-DD" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# fixtures build
# --------------------------------------------------------------------------------------------------

def test_committed_fixture_requests_match_a_fresh_build() -> None:
    fresh = fixture_requests(FIXTURES)
    folder = FIXTURES / "requests"
    committed = {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.json")}
    assert set(committed) == set(fresh), "run `make fixtures` (cds-service fixtures build)"
    stale = sorted(name for name, text in fresh.items() if committed[name] != text)
    assert not stale, f"out of date (run `make fixtures`): {stale}"
    assert "pl7-ro52-rpild.order-select.json" in fresh


def test_fixture_requests_are_deterministic_full_requests(tmp_path: Path) -> None:
    first = fixture_requests(FIXTURES)
    assert first == fixture_requests(FIXTURES)
    request = json.loads(first[f"{DEMO_FIXTURE}.order-select.json"])
    parsed = parse_request(request, "order-select", Limits())
    assert parsed.prefetch and {"patient", "conditions", "medications", "myositisAntibodies"} <= set(parsed.prefetch)
    fixture = load_fixture(DEMO_FIXTURE, FIXTURES)
    assert request["context"]["draftOrders"] == fixture["draftOrders"]  # dates not shifted

    out = tmp_path / "requests"
    out.mkdir()
    (out / "stale.order-sign.json").write_text("{}", encoding="utf-8")
    assert main(["fixtures", "build", "--fixtures-dir", str(FIXTURES), "--out-dir", str(out)]) == 0
    assert not (out / "stale.order-sign.json").exists()
    assert {p.name for p in out.glob("*.json")} == set(first)
    assert main(["fixtures", "build", "--check", "--fixtures-dir", str(FIXTURES), "--out-dir", str(out)]) == 0


def test_scope_value_sets_are_in_every_cards_hash() -> None:
    """Every value set the order scope and clinical scope read is listed in _shared.yaml's
    scope_valuesets, so changing what counts as IVIG (or who is in scope) voids every approval."""
    shared = yaml.safe_load((Path(__file__).resolve().parent.parent / "cards" / "_shared.yaml").read_text())
    scope = set(shared["scope_valuesets"])
    used_by_scope = {"medication-ivig", "medication-ig-not-ivig", "route-subcutaneous", "route-intramuscular",
                     *facts.MATCHED_ANTIBODIES.values(), facts.CONDITIONS["ild"], facts.CONDITIONS["myositis"],
                     facts.CONDITIONS["asys"]}
    assert used_by_scope <= scope, used_by_scope - scope
