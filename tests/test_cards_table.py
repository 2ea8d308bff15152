"""The card table (issue 3): every fixture, both hooks, through the HTTP endpoint with CONTENT_POLICY=all.

Card ids (``source.topic.code``) must equal the fixture's expected list, and every card must be a
well-formed CDS Hooks card: schema-valid, summary within 140 characters, uuid and source, suggestions
that are valid FHIR, absolute https links, no raw HTML from patient data, no null or empty values.
Also here: no clinical sentence lives in Python code.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient

from cds_service.clinical.orders import ivig_orders
from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.protocol.schema import first_error
from cds_service.settings import DEFAULT_CARDS_DIR
from cds_service.terminology import Terminology, normalise_text

HOOKS = ("order-select", "order-sign")
SERVICE = {"order-select": "ivig-order-select", "order-sign": "ivig-order-sign"}
CARD_SYSTEM = "https://ivig-cds.example.org/card"
OVERRIDE_SYSTEM = "https://ivig-cds.example.org/override-reason"
RANK = {"critical": 0, "warning": 1, "info": 2}
# Issue 3 item 4: the indicator of each card id (ivig-safety: critical with IgA deficiency, else warning).
# Issue 12: the MDA5 card is a warning when no first-line immunosuppression is on record or co-ordered;
# ivig-safety is info when only predisposing factors are found.
INDICATOR = {
    "ivig-not-first-line": {"warning"},
    "ivig-adjunct-in-context": {"info"},
    "asys-high-risk-phenotype": {"warning"},
    "mda5-ild-ivig-adjunct": {"info", "warning"},
    "ivig-safety": {"info", "warning", "critical"},
    "ild-monitoring": {"info"},
    "myositis-antibodies-missing": {"info"},
}
# IgA deficiency without anti-IgA antibodies or hypersensitivity on record is a warning, not a
# contraindication (issue 12 item 8): no fixture has a critical ivig-safety card.
SAFETY_INFO_FIXTURES = {"i12-pl7-ro52-stable-ild", "i12-prior-ivig-stale-weight"}
HTML_TAG = re.compile(r"<[A-Za-z/!?]")
PACKAGE = Path(__file__).resolve().parent.parent / "cds_service"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    from cds_service import create_app

    saved = {k: os.environ.pop(k) for k in list(os.environ)
             if k.startswith("CDS_") and k != "CDS_TEST_DATABASE_URL"}
    try:
        database = tmp_path_factory.mktemp("cards-table") / "ivig-cds.sqlite3"
        application = create_app({"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all", "DATABASE_URL": f"sqlite:///{database}"})
    finally:
        os.environ.update(saved)
    application.testing = True
    yield application
    application.extensions["cds_runtime"].store.close()


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    return Terminology.load(DEFAULT_CARDS_DIR / "valuesets")


def cases() -> list[Any]:
    return [pytest.param(name, hook, id=f"{name}-{hook}") for name in list_fixtures() for hook in HOOKS]


def call(client: FlaskClient, request: dict[str, Any], hook: str) -> dict[str, Any]:
    response = client.post(f"/cds-services/{SERVICE[hook]}", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    problem = first_error("response.json", body)
    assert problem is None, problem
    return body


def card_ids(body: dict[str, Any]) -> list[str]:
    return [card["source"]["topic"]["code"] for card in body["cards"]]


def empty_values(value: Any, path: str = "$") -> Iterator[str]:
    """JSON paths of null, "", [] and {} values (the top-level ``cards`` may be empty)."""
    if value is None or (isinstance(value, str | list | dict) and not value and path != "$.cards"):
        yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from empty_values(child, f"{path}.{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from empty_values(child, f"{path}[{index}]")


def assert_well_formed(body: dict[str, Any], request: dict[str, Any], terminology: Terminology,
                       hook: str) -> None:
    empties = list(empty_values(body))
    assert not empties, f"null or empty values at {empties}"
    entries = request["context"]["draftOrders"].get("entry") or []
    drafts = [e["resource"] for e in entries]
    ivig_refs = {o.reference for o in ivig_orders(hook, drafts, request["context"].get("selections", []),
                                                  terminology, entries)}
    seen_uuids: set[str] = set()
    for card in body["cards"]:
        card_id = card["source"]["topic"]["code"]
        where = f"card {card_id}"
        summary = card["summary"]
        assert 0 < len(summary) <= 140, f"{where}: summary has {len(summary)} characters"
        assert not summary.endswith("…"), f"{where}: summary was cut to 140 characters: {summary!r}"
        assert not HTML_TAG.search(summary), f"{where}: raw HTML in summary"
        assert str(uuid.UUID(card["uuid"])) == card["uuid"].lower(), where
        assert card["uuid"] not in seen_uuids
        seen_uuids.add(card["uuid"])
        source = card["source"]
        assert source["label"].strip(), where
        assert source["url"].startswith(("http://", "https://")), where
        assert source["topic"]["system"] == CARD_SYSTEM, where
        assert source["topic"].get("display"), where
        assert card["indicator"] in INDICATOR[card_id], f"{where}: indicator {card['indicator']}"
        detail = card.get("detail", "")
        assert detail.strip(), f"{where}: no detail"
        assert not HTML_TAG.search(detail), f"{where}: raw HTML in detail: {HTML_TAG.findall(detail)}"

        suggestions = card.get("suggestions", [])
        if suggestions:
            assert card.get("selectionBehavior") in ("at-most-one", "any"), f"{where}: no selectionBehavior"
        for suggestion in suggestions:
            uuid.UUID(suggestion["uuid"])
            assert suggestion["label"].strip()
            assert suggestion.get("actions"), f"{where}: suggestion without actions"
            for action in suggestion["actions"]:
                assert action["description"].strip()
                if action["type"] == "create":
                    resource = action["resource"]
                    assert resource["resourceType"] == "ServiceRequest", where
                    model = get_fhir_model_class(resource["resourceType"])
                    model.model_validate(resource)  # raises when not valid R4
                    subject = resource.get("subject", {}).get("reference")
                    assert subject == f"Patient/{request['context']['patientId']}", where
                elif action["type"] == "delete":
                    assert action["resourceId"] in ivig_refs, \
                        f"{where}: delete names {action['resourceId']}, not the IVIG draft {ivig_refs}"
                else:
                    pytest.fail(f"{where}: unexpected action type {action['type']}")

        reasons = card.get("overrideReasons", [])
        if card["indicator"] in ("warning", "critical"):
            assert reasons, f"{where}: warning/critical card without overrideReasons"
        for reason in reasons:
            assert reason["display"].strip() and reason["code"].strip(), where
            assert reason["system"] == OVERRIDE_SYSTEM, where

        for link in card.get("links", []):
            # https, or the service's own rationale page on its base URL (http://localhost under the test client)
            assert link["url"].startswith(("https://", f"http://localhost/cards/{card_id}")), \
                f"{where}: link {link['url']} is not absolute https"
            assert link["label"].strip() and link["type"] == "absolute", where


@pytest.mark.parametrize("name,hook", cases())
def test_fixture_cards(client: FlaskClient, terminology: Terminology, name: str, hook: str) -> None:
    fixture = load_fixture(name)
    request = build_request(fixture, hook)
    body = call(client, request, hook)
    ids = card_ids(body)
    expected = fixture["expected"][hook]
    assert len(ids) == len(set(ids)), f"a card id twice: {ids}"
    # Between indicators the order is fixed (critical > warning > info); within one it is not specified.
    assert sorted(ids) == sorted(expected), f"{name} {hook}: got {ids}, expected {expected}"
    ranks = [RANK[card["indicator"]] for card in body["cards"]]
    assert ranks == sorted(ranks), f"cards not ordered critical > warning > info: {ids}"
    if "ivig-safety" in ids:
        safety = body["cards"][ids.index("ivig-safety")]
        # info when the only findings are boxed-warning predisposing factors (issue 12 item 8)
        wanted = "info" if name in SAFETY_INFO_FIXTURES else "warning"
        assert safety["indicator"] == wanted
    assert_well_formed(body, request, terminology, hook)


def test_suggestions_links_and_override_reasons_the_issue_asks_for(client: FlaskClient) -> None:
    """ivig-not-first-line: delete the IVIG draft + override reasons; ild-monitoring and
    myositis-antibodies-missing: create a ServiceRequest; every card links to its sources."""
    actions: dict[str, set[str]] = {}
    for name in list_fixtures():
        fixture = load_fixture(name)
        if not fixture["expected"]["order-sign"]:
            continue
        body = call(client, build_request(fixture, "order-sign"), "order-sign")
        for card in body["cards"]:
            card_id = card["source"]["topic"]["code"]
            assert card.get("links"), f"{card_id} ({name}) has no links to its sources"
            found = actions.setdefault(card_id, set())
            for suggestion in card.get("suggestions", []):
                found |= {action["type"] for action in suggestion["actions"]}
            if card_id == "ivig-not-first-line":
                assert card.get("overrideReasons"), name
    assert "delete" in actions["ivig-not-first-line"]
    assert "create" in actions["ild-monitoring"]
    assert "create" in actions["myositis-antibodies-missing"]


def test_every_card_id_is_exercised_by_some_fixture() -> None:
    exercised = {card for name in list_fixtures() for ids in load_fixture(name)["expected"].values()
                 for card in ids}
    assert exercised == set(INDICATOR)


def test_there_are_at_least_15_fixtures_and_silent_cases() -> None:
    names = list_fixtures()
    assert len(names) >= 15
    assert any(not load_fixture(n)["expected"]["order-select"] for n in names)


# --- patient text is escaped ---------------------------------------------------------------------


SCRIPT = "<script>alert(1)</script>"


def _hostile_fixture() -> dict[str, Any]:
    """pl7-ro52-rpild with HTML in a condition text, a lab's free text and the medication text."""
    fixture = copy.deepcopy(load_fixture("pl7-ro52-rpild"))
    changed = 0
    for entry in fixture["record"]["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Condition" and resource["id"].endswith("-ild-1"):
            resource["code"]["text"] = (f"Rapidly progressive interstitial lung disease {SCRIPT} "
                                        "<img src=x onerror=alert(2)>")
            changed += 1
        if resource["resourceType"] == "Observation" and "valueString" in resource:
            resource["valueString"] = f"Positive <b onmouseover=alert(3)>{SCRIPT}</b>"
            changed += 1
    for entry in fixture["draftOrders"]["entry"]:
        entry["resource"]["medicationCodeableConcept"]["text"] = f"Privigen {SCRIPT} IV"
    assert changed, "the fixture changed shape: no condition to poison"
    return fixture


@pytest.mark.parametrize("hook", HOOKS)
def test_patient_text_with_html_is_escaped(client: FlaskClient, terminology: Terminology, hook: str) -> None:
    fixture = _hostile_fixture()
    request = build_request(fixture, hook)
    body = call(client, request, hook)
    assert sorted(card_ids(body)) == sorted(fixture["expected"][hook])
    text = "\n".join(card.get("detail", "") + "\n" + card["summary"] for card in body["cards"])
    assert "<script" not in text and "<img" not in text and "<b " not in text
    assert "&lt;script" in text, "the condition text is expected to be shown, escaped"
    assert_well_formed(body, request, terminology, hook)


# --- no clinical sentence in Python -----------------------------------------------------------------
#
# A "clinical sentence" here: a string literal of more than 12 words that names a clinical concept the
# content knows (a value set title or text alias, or a word of clinical advice below).  Docstrings, log
# messages and exception messages are for developers and operators and are not scanned; neither is the
# discovery metadata of ServiceDefinition (title/description/usageRequirements: integrator-facing
# protocol metadata, see services.py).  Everything a clinician reads belongs under cards/.

MAX_WORDS = 12
ADVICE_WORDS = ("dose", "dosing", "infusion", "infuse", "monitor", "monitoring", "first line", "adjunct",
                "thrombosis", "renal", "mortality", "transplant", "contraindicated", "guideline", "clinician",
                "immunosuppression", "immunosuppressant", "glucocorticoid", "glucocorticoids", "referral")
PROJECT_NAMES = ("ivig-cds", "ivig_cds")
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}
_METADATA_KEYWORDS = {"title", "description", "usage_requirements"}


def clinical_vocabulary() -> re.Pattern[str]:
    terms = set(ADVICE_WORDS)
    for vs in Terminology.load(DEFAULT_CARDS_DIR / "valuesets").value_sets.values():
        terms |= {alias.strip() for alias in vs.aliases}
        terms.add(normalise_text(vs.title).strip())
    ordered = sorted((term for term in terms if term), key=len, reverse=True)
    return re.compile(" (?:" + "|".join(re.escape(term) for term in ordered) + ") ")


def _docstring_nodes(tree: ast.AST) -> set[int]:
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                found.add(id(body[0].value))
    return found


def _strings_under(roots: list[ast.AST]) -> set[int]:
    return {id(child) for root in roots for child in ast.walk(root)
            if isinstance(child, ast.Constant) and isinstance(child.value, str)}


def _not_for_clinicians(tree: ast.AST) -> set[int]:
    """String constants in log calls, raised exceptions and service discovery metadata."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _LOG_METHODS:
            found |= _strings_under(list(node.args))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            found |= _strings_under([node.exc])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id.endswith(("Error", "Exception", "BadRequest", "NotFound", "Unauthorized")):
                found |= _strings_under(list(node.args))
            elif node.func.id == "ServiceDefinition":
                found |= _strings_under([k.value for k in node.keywords if k.arg in _METADATA_KEYWORDS])
    return found


def clinical_sentences(path: Path, vocabulary: re.Pattern[str]) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = _docstring_nodes(tree) | _not_for_clinicians(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
            continue
        text = node.value
        for name in PROJECT_NAMES:
            text = text.replace(name, " ")
        words = re.findall(r"[A-Za-z][A-Za-z'-]*", text)
        if len(words) > MAX_WORDS and vocabulary.search(normalise_text(text)):
            found.append((node.lineno, " ".join(node.value.split())[:120]))
    return found


def test_no_clinical_sentence_lives_in_python_code() -> None:
    vocabulary = clinical_vocabulary()
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}"
                 for path in sorted(PACKAGE.rglob("*.py")) for line, text in clinical_sentences(path, vocabulary)]
    assert not offenders, "clinical sentences in Python strings (move them under cards/):\n" + "\n".join(offenders)


def test_the_sentence_scan_finds_a_planted_sentence(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        '"""A docstring may say that IVIG is an adjunct to first-line therapy in antisynthetase ILD."""\n'
        'log.info("IVIG is an adjunct to first-line therapy in antisynthetase syndrome with ILD, said the log")\n'
        'TEXT = "IVIG is an adjunct, not first-line: give pulse IV methylprednisolone and rituximab before it"\n'
        'NAME = "a sentence about the ivig-cds project that is long but names no clinical concept at all"\n',
        encoding="utf-8")
    assert [line for line, _ in clinical_sentences(planted, clinical_vocabulary())] == [3]
