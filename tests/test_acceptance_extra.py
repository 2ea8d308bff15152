"""Acceptance tests written from the issue texts and the CDS Hooks 2.0 spec, not from the code.

Every patient here is built from scratch in the test (ids ``acc-…``, names, codes and shapes that
the shipped fixtures do not use).  The expected card ids are derived from the rules table of issue 3
by ``table()`` below, from facts declared by hand for each patient; the service's own fact
extractor, fixture builder and search helper are deliberately not used.  Everything goes through
the public HTTP surface (Flask test client), plus a small loopback FHIR server for the fetch path.

Tests that once showed a defect (all fixed) sit under "Defects found" at the end.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import create_app

SELECT = "/cds-services/ivig-order-select"
SIGN = "/cds-services/ivig-order-sign"
PATHS = {"order-select": SELECT, "order-sign": SIGN}
HOOKS = ("order-select", "order-sign")

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
NDC = "http://hl7.org/fhir/sid/ndc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LOCAL_LAB = "https://lab.acceptance-hospital.example.net/local-codes"
SANDBOX = "https://sandbox.cds-hooks.org"
VALUESETS = Path(__file__).resolve().parent.parent / "cards" / "valuesets"

CARD_IDS = ("ivig-not-first-line", "ivig-adjunct-in-context", "asys-high-risk-phenotype",
            "mda5-ild-ivig-adjunct", "ivig-safety", "ild-monitoring", "myositis-antibodies-missing")
SEVERITY = {"critical": 0, "warning": 1, "info": 2}
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
TYPE_ID_RE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")

TODAY = datetime.now(UTC).date()


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def ago_dt(days: int) -> str:
    return f"{ago(days)}T09:30:00+02:00"


# ==================================================================================================
# The rules table of issue 3, item 4 (derived by hand, independent of cds_service.clinical)
# ==================================================================================================

def table(*, ild: bool = False, myositis: bool = False, asys_coded: bool = False,
          synthetase_positive: bool = False, pl7: bool = False, ro52: bool = False, mda5: bool = False,
          other_positive: bool = False, first_line: bool = False, antibody_on_record: bool = True,
          safety: str | None = None) -> list[tuple[str, str]]:
    """(card id, indicator) expected for an in-scope IVIG order, in critical > warning > info order.

    ``synthetase_positive``: Jo-1, PL-7, PL-12, EJ or OJ positive (any strength; equivocal is not).
    ``safety``: None (no safety finding), "warning" or "critical" (IgA deficiency).
    """
    synthetase_positive = synthetase_positive or pl7
    asys = asys_coded or (synthetase_positive and (ild or myositis))
    in_scope = ild or myositis or asys or synthetase_positive or ro52 or mda5 or other_positive
    if not in_scope:
        return []
    cards: list[tuple[str, str]] = []
    if asys and ild and not first_line:
        cards.append(("ivig-not-first-line", "warning"))
    if asys and ild and first_line:
        cards.append(("ivig-adjunct-in-context", "info"))
    if pl7 and ro52 and ild:
        cards.append(("asys-high-risk-phenotype", "warning"))
    if mda5 and ild:
        cards.append(("mda5-ild-ivig-adjunct", "info"))
    if safety:
        cards.append(("ivig-safety", safety))
    if ild and (asys or mda5):
        cards.append(("ild-monitoring", "info"))
    if (ild or myositis) and not antibody_on_record:
        cards.append(("myositis-antibodies-missing", "info"))
    return sorted(cards, key=lambda c: SEVERITY[c[1]])


# ==================================================================================================
# FHIR builders
# ==================================================================================================

def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(*codings_: dict[str, Any], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if codings_:
        out["coding"] = list(codings_)
    if text:
        out["text"] = text
    return out


LAB_CATEGORY = [concept(coding(OBS_CATEGORY, "laboratory", "Laboratory"))]


class Record:
    """One synthetic patient: a Patient resource plus everything the EHR holds for them."""

    def __init__(self, pid: str, given: str = "Testa", family: str = "Acceptance") -> None:
        self.pid = pid
        self.patient = {"resourceType": "Patient", "id": pid, "name": [{"given": [given], "family": family}],
                        "gender": "female", "birthDate": "1968-04-09"}
        self.resources: list[dict[str, Any]] = [self.patient]

    @property
    def subject(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.pid}"}

    def add(self, resource: dict[str, Any]) -> dict[str, Any]:
        self.resources.append(resource)
        return resource

    # -- observations ------------------------------------------------------------------------
    def obs(self, oid: str, code: Any, *, days: int = 10, status: str = "final", lab: bool = True,
            **extra: Any) -> dict[str, Any]:
        resource: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": status, "code": code,
                                    "subject": self.subject, "effectiveDateTime": ago_dt(days)}
        if lab:
            resource["category"] = copy.deepcopy(LAB_CATEGORY)
        resource.update(extra)
        return self.add(resource)

    def renal_ok(self, days: int = 6) -> None:
        """Normal creatinine and eGFR within 30 days: no renal safety finding."""
        self.obs(f"{self.pid}-egfr", concept(coding(LOINC, "98979-8", "eGFR CKD-EPI 2021")), days=days,
                 valueQuantity={"value": 94, "unit": "mL/min/1.73m2", "system": "http://unitsofmeasure.org",
                                "code": "mL/min/{1.73_m2}"},
                 referenceRange=[{"low": {"value": 60, "unit": "mL/min/1.73m2"}}])
        self.obs(f"{self.pid}-crea", concept(coding(LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma")),
                 days=days, valueQuantity={"value": 0.82, "unit": "mg/dL"},
                 referenceRange=[{"low": {"value": 0.5, "unit": "mg/dL"}, "high": {"value": 1.1, "unit": "mg/dL"}}])

    # -- conditions --------------------------------------------------------------------------
    def cond(self, cid: str, code: Any, *, clinical: Any = "active", verification: Any = "confirmed",
             days: int = 200, **extra: Any) -> dict[str, Any]:
        resource: dict[str, Any] = {"resourceType": "Condition", "id": cid, "subject": self.subject, "code": code,
                                    "onsetDateTime": ago(days)}
        if isinstance(clinical, str) and clinical:
            resource["clinicalStatus"] = concept(coding(CLINICAL, clinical))
        elif clinical is not None:
            resource["clinicalStatus"] = clinical
        if isinstance(verification, str) and verification:
            resource["verificationStatus"] = concept(coding(VERIFICATION, verification))
        elif verification is not None:
            resource["verificationStatus"] = verification
        resource.update(extra)
        return self.add(resource)

    # -- medications -------------------------------------------------------------------------
    def med_request(self, mid: str, medication: Any, *, status: str = "active", days: int = 20,
                    **extra: Any) -> dict[str, Any]:
        resource = {"resourceType": "MedicationRequest", "id": mid, "status": status, "intent": "order",
                    "medicationCodeableConcept": medication, "subject": self.subject, "authoredOn": ago(days)}
        resource.update(extra)
        return self.add(resource)

    def med_statement(self, mid: str, medication: Any, *, status: str = "completed", days: int = 20,
                      **extra: Any) -> dict[str, Any]:
        resource = {"resourceType": "MedicationStatement", "id": mid, "status": status,
                    "medicationCodeableConcept": medication, "subject": self.subject,
                    "effectiveDateTime": ago(days), "dateAsserted": ago(days)}
        resource.update(extra)
        return self.add(resource)


def draft(pid: str, mid: str, medication: Any = None, *, status: str = "draft", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "MedicationRequest", "id": mid, "status": status,
                                "intent": "order", "subject": {"reference": f"Patient/{pid}"},
                                "authoredOn": ago(0)}
    if medication is not None:
        resource["medicationCodeableConcept"] = medication
    resource.update(extra)
    return resource


# Medications (NDC product codes from the terminology note; forms derived from them)
PRIVIGEN_NDC11 = concept(coding(NDC, "44206043920"), text="Privigen 20 g/200 mL")  # 44206-439 -> 44206-0439-20
GAMUNEX_NDC11 = concept(coding(NDC, "13533080512"))  # Gamunex-C 13533-805 -> 5-4-2 13533-0805-12, no text
GAMUNEX_TEXT = concept(text="Gamunex-C 10% IV")
PREDNISONE = concept(coding(RXNORM, "8640", "Prednisone"), text="prednisone 40 mg oral tablet")
TACROLIMUS = concept(coding(RXNORM, "42316", "Tacrolimus"))
MYCOPHENOLATE = concept(coding(RXNORM, "68149", "mycophenolate mofetil"))
CYCLOPHOSPHAMIDE = concept(coding(RXNORM, "3002", "Cyclophosphamide"))
AMLODIPINE = concept(coding("https://pharmacy.acceptance-hospital.example.net/formulary", "AML5",
                            "amlodipine 5 mg tablet"))

# Conditions
ILD_J8410 = concept(coding(ICD10CM, "J84.10", "Pulmonary fibrosis, unspecified"))
ILD_J84170 = concept(coding(ICD10CM, "J84.170"))
ILD_CTD_SNOMED = concept(coding(SNOMED, "711379004", "Interstitial lung disease due to connective tissue disease"))
ILD_SNOMED = concept(coding(SNOMED, "233703007", "Interstitial lung disease"))
PM_RESP_M3321 = concept(coding(ICD10CM, "M33.21", "Polymyositis with respiratory involvement"))
DM_SNOMED = concept(coding(SNOMED, "396230008", "Dermatomyositis"))
PM_SNOMED = concept(coding(SNOMED, "31384009", "Polymyositis"))
POSITIVE_SNOMED = concept(coding(SNOMED, "10828004", "Positive"))
POSITIVE_LOINC = concept(coding(LOINC, "LA6576-8", "Positive"))
NEGATIVE_LOINC = concept(coding(LOINC, "LA6577-6", "Negative"))


def interp(code: str) -> list[dict[str, Any]]:
    return [concept(coding(V3_INTERP, code))]


# ==================================================================================================
# A FHIR search over a record (independent of cds_service.devtools.fixtures.search)
# ==================================================================================================

def _codings_of(value: Any) -> Iterator[dict[str, Any]]:
    for cc in value if isinstance(value, list) else [value]:
        if isinstance(cc, dict):
            for c in cc.get("coding") or []:
                if isinstance(c, dict):
                    yield c


def search(resources: list[dict[str, Any]], query: str, base: str = "https://ehr.acceptance.example.net/fhir"
           ) -> dict[str, Any] | None:
    """Answer a read (``Type/id``) or a search (``Type?patient=…&code=s|c,…&category=…&status=…``)."""
    path, _, qs = query.partition("?")
    if not qs and path.count("/") == 1:
        rtype, rid = path.split("/")
        return next((copy.deepcopy(r) for r in resources if r["resourceType"] == rtype and r.get("id") == rid),
                    None)
    params = {k: ",".join(v) for k, v in parse_qs(qs).items()}
    hits = []
    for r in resources:
        if r.get("resourceType") != path:
            continue
        pid = params.get("patient") or params.get("subject")
        if pid is not None:
            ref = (r.get("subject") or {}).get("reference") if isinstance(r.get("subject"), dict) else None
            if ref not in (pid, f"Patient/{pid}"):
                continue
        if "code" in params:
            tokens = set(params["code"].split(","))
            if not any(f"{c.get('system')}|{c.get('code')}" in tokens or c.get("code") in tokens
                       for c in _codings_of(r.get("code"))):
                continue
        if "category" in params and not any(c.get("code") == params["category"]
                                            for c in _codings_of(r.get("category"))):
            continue
        if "status" in params and r.get("status") not in params["status"].split(","):
            continue
        hits.append(copy.deepcopy(r))
    return {"resourceType": "Bundle", "type": "searchset", "total": len(hits),
            "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in hits]}


def render(template: str, pid: str, user: str = "Practitioner/acc-doc-1") -> str:
    return template.replace("{{context.patientId}}", pid).replace("{{context.userId}}", user)


def prefetch_for(record: Record, templates: dict[str, str], *, omit: tuple[str, ...] = (),
                 only: tuple[str, ...] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, template in templates.items():
        if key in omit or (only is not None and key not in only):
            continue
        out[key] = search(record.resources, render(template, record.pid))
    return out


def hook_request(hook: str, record: Record, drafts: list[dict[str, Any]], selections: list[str] | None = None, *,
                 templates: dict[str, str], prefetch: dict[str, Any] | None = None, omit: tuple[str, ...] = (),
                 with_prefetch: bool = True, bundle_entries: list[dict[str, Any]] | None = None,
                 **envelope: Any) -> dict[str, Any]:
    entries = bundle_entries if bundle_entries is not None else [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": d} for d in drafts]
    context: dict[str, Any] = {"userId": "Practitioner/acc-doc-1", "patientId": record.pid,
                               "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entries}}
    if hook == "order-select":
        context["selections"] = selections if selections is not None else [
            f"{drafts[0]['resourceType']}/{drafts[0]['id']}"]
    body: dict[str, Any] = {"hook": hook, "hookInstance": str(uuid.uuid4()), "context": context}
    if with_prefetch:
        body["prefetch"] = prefetch if prefetch is not None else prefetch_for(record, templates, omit=omit)
    body.update(envelope)
    return body


# ==================================================================================================
# Response conformance (CDS Hooks 2.0 §CDS Service Response, issue 2 item 4, issue 3 item 5)
# ==================================================================================================

def _no_empty(value: Any, path: str) -> None:
    assert value is not None, f"null at {path}"
    if isinstance(value, str):
        assert value != "", f"empty string at {path}"
    elif isinstance(value, list):
        assert value, f"empty array at {path}"
        for i, item in enumerate(value):
            _no_empty(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        assert value, f"empty object at {path}"
        for key, item in value.items():
            _no_empty(item, f"{path}.{key}")


def _absolute(url: Any) -> bool:
    return isinstance(url, str) and re.match(r"^https?://[^/\s]+", url) is not None


def check_response(body: Any, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    assert isinstance(body, dict) and isinstance(body.get("cards"), list), body
    assert set(body) <= {"cards", "systemActions"}, set(body)
    for i, card in enumerate(body["cards"]):
        _no_empty(card, f"$.cards[{i}]")
    if "systemActions" in body:
        _no_empty(body["systemActions"], "$.systemActions")
    draft_refs = set()
    if request is not None:
        for entry in request["context"]["draftOrders"].get("entry", []):
            res = entry.get("resource", {})
            if isinstance(res.get("id"), str) and re.match(r"^[A-Za-z0-9\-.]{1,64}$", res["id"]):
                draft_refs.add(f"{res.get('resourceType')}/{res['id']}")
    seen_ids: set[str] = set()
    seen_uuids: set[str] = set()
    last = -1
    for card in body["cards"]:
        assert UUID_RE.match(card.get("uuid", "")), card.get("uuid")
        assert card["uuid"] not in seen_uuids
        seen_uuids.add(card["uuid"])
        assert isinstance(card.get("summary"), str) and 0 < len(card["summary"]) <= 140, card.get("summary")
        assert card.get("indicator") in SEVERITY, card.get("indicator")
        assert SEVERITY[card["indicator"]] >= last, "cards must be ordered critical, warning, info"
        last = SEVERITY[card["indicator"]]
        if "detail" in card:
            assert isinstance(card["detail"], str)
        source = card.get("source")
        assert isinstance(source, dict) and isinstance(source.get("label"), str) and source["label"].strip()
        assert _absolute(source.get("url")), source.get("url")
        if "icon" in source:
            assert _absolute(source["icon"])
        topic = source.get("topic")
        assert isinstance(topic, dict) and topic.get("system") and topic.get("code") in CARD_IDS, topic
        assert topic["code"] not in seen_ids, f"two cards with id {topic['code']}"
        seen_ids.add(topic["code"])
        suggestions = card.get("suggestions")
        if suggestions is not None:
            assert card.get("selectionBehavior") in ("at-most-one", "any"), "suggestions need selectionBehavior"
            recommended = sum(1 for s in suggestions if s.get("isRecommended"))
            if card["selectionBehavior"] == "at-most-one":
                assert recommended <= 1
            for s in suggestions:
                assert isinstance(s.get("label"), str) and s["label"].strip()
                if "uuid" in s:
                    assert UUID_RE.match(s["uuid"])
                for action in s.get("actions", []):
                    assert action.get("type") in ("create", "update", "delete"), action
                    assert isinstance(action.get("description"), str) and action["description"].strip()
                    if action["type"] == "create":
                        resource = action.get("resource")
                        assert isinstance(resource, dict) and resource.get("resourceType"), action
                        if resource["resourceType"] == "ServiceRequest":
                            ServiceRequest.model_validate(resource)
                            if request is not None:
                                assert resource["subject"]["reference"] == f"Patient/{request['context']['patientId']}"
                    if action["type"] == "delete":
                        assert TYPE_ID_RE.match(action.get("resourceId", "")), action
                        if request is not None:
                            assert action["resourceId"] in draft_refs, (action["resourceId"], draft_refs)
        else:
            assert "selectionBehavior" not in card or card["selectionBehavior"] in ("at-most-one", "any")
        if card["indicator"] in ("warning", "critical"):
            assert card.get("overrideReasons"), f"{topic['code']}: warning/critical cards offer override reasons"
        assert card.get("links"), f"{topic['code']}: links to the cited sources"
        for reason in card.get("overrideReasons", []):
            assert reason.get("code") and reason.get("system") and reason.get("display"), reason
        for link in card.get("links", []):
            assert link.get("label") and _absolute(link.get("url")) and link.get("type") in ("absolute", "smart")
            if link["type"] == "absolute":
                assert "appContext" not in link
    return list(body["cards"])


def ids(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["source"]["topic"]["code"], c["indicator"]) for c in cards]


def card(cards: list[dict[str, Any]], card_id: str) -> dict[str, Any]:
    found = [c for c in cards if c["source"]["topic"]["code"] == card_id]
    assert found, f"no {card_id} card in {[c['source']['topic']['code'] for c in cards]}"
    return found[0]


def same_cards(got: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    """Same (id, indicator) multiset; the order between indicators is checked by check_response."""
    assert sorted(got) == sorted(expected), f"got {got}, expected {expected}"


# ==================================================================================================
# Apps and clients
# ==================================================================================================

@pytest.fixture(scope="module")
def clean_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CDS_"):
                mp.delenv(name)
        yield


_APPS: list[Flask] = []


def make_app(tmp: Path, **config: Any) -> Flask:
    settings = {"AUTH": "off", "CONTENT_POLICY": "all", "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3", **config}
    app = create_app(settings)
    app.testing = True
    _APPS.append(app)
    return app


@pytest.fixture(scope="module", autouse=True)
def _close_apps() -> Iterator[None]:
    yield
    for app in _APPS:
        runtime = app.extensions.get("cds_runtime")
        if runtime is not None:
            runtime.store.close()
    _APPS.clear()


@pytest.fixture(scope="module")
def app(clean_env: None, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(tmp_path_factory.mktemp("acc"), PUBLIC_BASE_URL="https://cds.acceptance.example.net")


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def templates(client: FlaskClient) -> dict[str, dict[str, str]]:
    services = client.get("/cds-services").get_json()["services"]
    return {s["hook"]: s["prefetch"] for s in services}


def call(client: FlaskClient, body: dict[str, Any], path: str | None = None,
         status: int = 200) -> list[dict[str, Any]]:
    path = path or PATHS[body["hook"]]
    response = client.post(path, json=body)
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "application/json"
    return check_response(response.get_json(), body)


# ==================================================================================================
# Patients
# ==================================================================================================

def pl7_quantity_ro52_lineblot() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """PL-7 by quantity (4x the high bound), Ro52 by line blot answer LA6576-8, ILD as J84.10, no therapy."""
    r = Record("acc-pl7-q", "Oriana", "Quintero-Blot")
    r.obs("acc-pl7-q-ab", concept(coding(LOINC, "105551-6", "PL-7 Ab [Units/volume] in Serum")), days=21,
          valueQuantity={"value": 84, "unit": "U/mL"},
          referenceRange=[{"high": {"value": 20, "unit": "U/mL"}}])
    r.obs("acc-pl7-q-ro52", concept(coding(LOINC, "82933-3", "Sjogrens syndrome-A extractable nuclear 52kD IgG Ab "
                                                         "[Presence] in Serum by Line blot")),
          days=21, valueCodeableConcept=POSITIVE_LOINC)
    r.cond("acc-pl7-q-ild", ILD_J8410, days=60)
    r.med_request("acc-pl7-q-amlo", AMLODIPINE, days=30)  # not a first-line agent
    r.renal_ok()
    ivig = draft(r.pid, "acc-pl7-q-ivig", PRIVIGEN_NDC11)
    return r, [ivig], table(ild=True, pl7=True, ro52=True)


def pl12_string_fvc_components_rituxan() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """PL-12 'Positive' (valueString), ILD due to CTD (SNOMED 711379004), FVC % predicted components falling
    81 -> 69 in 60 days (RP-ILD by trajectory), 'Rituxan' MedicationStatement 100 days ago."""
    r = Record("acc-pl12-fvc", "Benedikt", "Spirometrie")
    r.obs("acc-pl12-fvc-ab", concept(coding(LOINC, "33771-7", "PL-12 Ab [Presence] in Serum")), days=70,
          valueString="Positive")
    r.cond("acc-pl12-fvc-ild", ILD_CTD_SNOMED, days=120)
    fvc = concept(coding(LOINC, "19868-9", "FVC [Volume] Respiratory system by Spirometry"))
    for oid, days, litres, pct in (("acc-pl12-fvc-1", 62, 2.61, 81), ("acc-pl12-fvc-2", 2, 2.22, 69)):
        r.obs(oid, fvc, days=days, lab=False, valueQuantity={"value": litres, "unit": "L"},
              component=[{"code": concept(coding(LOINC, "19872-1", "FVC measured/predicted")),
                          "valueQuantity": {"value": pct, "unit": "%", "system": "http://unitsofmeasure.org",
                                            "code": "%"}}])
    r.med_statement("acc-pl12-fvc-rtx", concept(text="Rituxan"), status="completed", days=100)
    r.renal_ok()
    ivig = draft(r.pid, "acc-pl12-fvc-ivig", GAMUNEX_TEXT)
    return r, [ivig], table(ild=True, synthetase_positive=True, first_line=True)


def asys_text_only_no_antibodies() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """ASyS only as text 'Anti-synthetase syndrome', ILD J84.170, no antibody result at all, an old completed
    cyclophosphamide order (300 days: does not count)."""
    r = Record("acc-asys-txt", "Wilhelmina", "Textuell")
    r.cond("acc-asys-txt-asys", concept(text="Anti-synthetase syndrome"), days=400)
    r.cond("acc-asys-txt-ild", ILD_J84170, days=380)
    r.med_request("acc-asys-txt-cyc", CYCLOPHOSPHAMIDE, status="completed", days=300)
    r.obs("acc-asys-txt-hb", concept(coding(LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood")),
          valueQuantity={"value": 12.9, "unit": "g/dL"})
    r.renal_ok()
    ivig = draft(r.pid, "acc-asys-txt-ivig", concept(text="Octagam 10% intravenous solution"))
    return r, [ivig], table(ild=True, asys_coded=True, antibody_on_record=False)


def jo1_tacrolimus_coordered() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """Jo-1 positive (valueCodeableConcept SNOMED), M33.21 (PM with respiratory involvement = myositis and ILD),
    IVIG as text 'Gamunex-C 10% IV', tacrolimus co-ordered in draftOrders (not selected)."""
    r = Record("acc-jo1-tac", "Kalani", "Coorder")
    r.obs("acc-jo1-tac-ab", concept(coding(LOINC, "8076-2", "Jo-1 extractable nuclear Ab [Presence] in Serum")),
          days=45, valueCodeableConcept=POSITIVE_SNOMED)
    r.cond("acc-jo1-tac-pm", PM_RESP_M3321, days=90)
    r.renal_ok()
    ivig = draft(r.pid, "acc-jo1-tac-ivig", GAMUNEX_TEXT)
    tac = draft(r.pid, "acc-jo1-tac-tacro", TACROLIMUS)
    return r, [ivig, tac], table(ild=True, myositis=True, synthetase_positive=True, first_line=True)


def mda5_interpretation_bundled_medication() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """MDA5 by interpretation POS only, DM + ILD (SNOMED); the IVIG names a Medication bundled in draftOrders by
    fullUrl (NDC 11-digit Gamunex-C package code, no text)."""
    r = Record("acc-mda5-med", "Ines", "Referenz")
    r.obs("acc-mda5-med-ab", concept(coding(LOINC, "107563-9", "MDA5 Ab [Presence] in Serum or Plasma")), days=33,
          interpretation=interp("POS"))
    r.cond("acc-mda5-med-dm", DM_SNOMED, days=150)
    r.cond("acc-mda5-med-ild", ILD_SNOMED, days=140)
    r.renal_ok()
    ivig = draft(r.pid, "acc-mda5-med-ivig", None)
    return r, [ivig], table(ild=True, myositis=True, mda5=True)


def bundled_medication_entries(ivig: dict[str, Any], med_code: Any, reference_style: str) -> list[dict[str, Any]]:
    med_id = "acc-med-1"
    medication = {"resourceType": "Medication", "id": med_id, "code": med_code}
    if reference_style == "urn":
        full_url = f"urn:uuid:{uuid.uuid4()}"
        ivig["medicationReference"] = {"reference": full_url}
    else:
        full_url = f"https://ehr.acceptance.example.net/fhir/Medication/{med_id}"
        ivig["medicationReference"] = {"reference": f"Medication/{med_id}"}
    return [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": ivig}, {"fullUrl": full_url, "resource": medication}]


def asys_text_with_myositis_only() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """ASyS coded by text with dermatomyositis but no ILD, no antibody on record: only the missing-antibody card."""
    r = Record("acc-asys-myo", "Magnus", "Myositis")
    r.cond("acc-asys-myo-asys", concept(text="Antisynthetase syndrome (clinical diagnosis)"))
    r.cond("acc-asys-myo-dm", concept(coding(ICD10CM, "M33.12", "Other dermatomyositis with myopathy")))
    r.cond("acc-asys-myo-dys", concept(coding(SNOMED, "40739000", "Dysphagia")))
    r.renal_ok()
    ivig = draft(r.pid, "acc-asys-myo-ivig", concept(text="Panzyga 10% IV"))
    return r, [ivig], table(myositis=True, asys_coded=True, antibody_on_record=False)


def jo1_and_mda5_with_ild() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """Jo-1 strongly positive (text) and MDA5 positive (quantity) with ILD: both ASyS and MDA5 cards, one
    monitoring card."""
    r = Record("acc-jo1-mda5", "Dagny", "Doppel")
    r.obs("acc-jo1-mda5-jo1", concept(coding(LOINC, "8076-2")), valueString="Strongly positive")
    r.obs("acc-jo1-mda5-mda5", concept(coding(LOINC, "105529-2", "MDA5 Ab [Units/volume] in Serum")),
          valueQuantity={"value": 55, "unit": "U/mL"}, referenceRange=[{"high": {"value": 20, "unit": "U/mL"}}])
    r.cond("acc-jo1-mda5-ild", concept(coding(ICD10CM, "J84.9")))
    r.renal_ok()
    ivig = draft(r.pid, "acc-jo1-mda5-ivig", concept(coding(NDC, "64208-8234-02"), text="Gammaplex 5%"))
    return r, [ivig], table(ild=True, synthetase_positive=True, mda5=True)


def ild_with_other_myositis_antibody_result() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """ILD with only a negative Mi-2 result: an antibody result is on record, so nothing fires."""
    r = Record("acc-ild-mi2", "Otto", "Anderer")
    r.obs("acc-ild-mi2-mi2", concept(coding(LOINC, "82996-0")), valueString="Negative")
    r.cond("acc-ild-mi2-ild", ILD_SNOMED)
    r.renal_ok()
    ivig = draft(r.pid, "acc-ild-mi2-ivig", PRIVIGEN_NDC11)
    return r, [ivig], table(ild=True, antibody_on_record=True)


def ro52_only_positive_with_heart_failure() -> tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]:
    """Isolated Ro52 positive (in scope by a positive myositis-associated antibody) with heart failure."""
    r = Record("acc-ro52-hf", "Hella", "Herz")
    r.obs("acc-ro52-hf-ro", concept(coding(LOINC, "53017-0")), valueQuantity={"value": 77, "unit": "U/mL"},
          interpretation=interp("H"), referenceRange=[{"high": {"value": 20}}])
    r.cond("acc-ro52-hf-hf", concept(coding(SNOMED, "42343007", "Congestive heart failure")))
    r.renal_ok()
    ivig = draft(r.pid, "acc-ro52-hf-ivig", PRIVIGEN_NDC11)
    return r, [ivig], table(ro52=True, safety="warning")


PATIENTS: dict[str, Callable[[], tuple[Record, list[dict[str, Any]], list[tuple[str, str]]]]] = {
    "pl7-quantity-ro52-lineblot": pl7_quantity_ro52_lineblot,
    "pl12-string-fvc-components-rituxan": pl12_string_fvc_components_rituxan,
    "asys-text-only-no-antibodies": asys_text_only_no_antibodies,
    "jo1-tacrolimus-coordered": jo1_tacrolimus_coordered,
    "asys-text-with-myositis-only": asys_text_with_myositis_only,
    "jo1-and-mda5-with-ild": jo1_and_mda5_with_ild,
    "ild-with-other-myositis-antibody-result": ild_with_other_myositis_antibody_result,
    "ro52-only-positive-with-heart-failure": ro52_only_positive_with_heart_failure,
}


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("name", sorted(PATIENTS))
def test_patient_cards_follow_the_rules_table(client: FlaskClient, templates: dict[str, dict[str, str]],
                                              name: str, hook: str) -> None:
    record, drafts, expected = PATIENTS[name]()
    body = hook_request(hook, record, drafts, templates=templates[hook])
    cards = call(client, body)
    same_cards(ids(cards), expected)


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("style", ["urn", "relative"])
def test_ivig_by_medication_reference_to_a_bundled_medication(client: FlaskClient,
                                                              templates: dict[str, dict[str, str]],
                                                              hook: str, style: str) -> None:
    record, drafts, expected = mda5_interpretation_bundled_medication()
    entries = bundled_medication_entries(drafts[0], GAMUNEX_NDC11, style)
    body = hook_request(hook, record, drafts, templates=templates[hook], bundle_entries=entries)
    same_cards(ids(call(client, body)), expected)


# ==================================================================================================
# What the cards say about the facts they used (issue 3 item 5: "Why you are seeing this")
# ==================================================================================================

def _fact_line(detail: str, reference: str) -> str:
    lines = [line for line in detail.splitlines() if reference in line]
    assert lines, f"{reference} is not named in the detail:\n{detail[:1500]}"
    return lines[0]


def test_detail_starts_with_why_and_names_each_fact_with_value_date_and_resource(
        client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    cards = call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    for c in cards:
        assert c["detail"].lstrip("*# ").lower().startswith("why you are seeing this"), c["detail"][:80]
    phenotype = card(cards, "asys-high-risk-phenotype")["detail"]
    pl7 = _fact_line(phenotype, "Observation/acc-pl7-q-ab")
    assert ago(21) in pl7
    assert "strong" in pl7.lower(), f"84 U/mL against a high bound of 20 is >= 3x: strong-positive ({pl7})"
    ro52 = _fact_line(phenotype, "Observation/acc-pl7-q-ro52")
    assert "positive" in ro52.lower() and "strong" not in ro52.lower()
    assert "Condition/acc-pl7-q-ild" in phenotype


def test_ivig_not_first_line_offers_delete_of_the_draft_and_override_reasons(
        client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    for hook in HOOKS:
        body = hook_request(hook, record, drafts, templates=templates[hook])
        c = card(call(client, body), "ivig-not-first-line")
        deletes = [a for s in c.get("suggestions", []) for a in s.get("actions", []) if a["type"] == "delete"]
        assert [a["resourceId"] for a in deletes] == ["MedicationRequest/acc-pl7-q-ivig"]
        assert len(c.get("overrideReasons", [])) >= 4
        displays = " ".join(r["display"].lower() for r in c["overrideReasons"])
        for word in ("response", "dysphagia", "infection", "tolera"):
            assert word in displays, f"seeds' reason to add IVIG missing: {word}"


def test_monitoring_and_missing_antibody_suggestions_create_valid_service_requests(
        client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = asys_text_only_no_antibodies()
    cards = call(client, hook_request("order-select", record, drafts, templates=templates["order-select"]))
    for card_id in ("ild-monitoring", "myositis-antibodies-missing"):
        c = card(cards, card_id)
        creates = [a["resource"] for s in c["suggestions"] for a in s["actions"] if a["type"] == "create"]
        assert creates and all(r["resourceType"] == "ServiceRequest" for r in creates)
        for resource in creates:
            ServiceRequest.model_validate(resource)
            assert resource["subject"] == {"reference": "Patient/acc-asys-txt"}


def test_rp_ild_by_fvc_components_is_a_fact_used(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """A fall of 12 points in FVC % predicted (components) within 60 days makes RP-ILD; 8 points does not."""
    record, drafts, _ = pl12_string_fvc_components_rituxan()
    cards = call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    adjunct = card(cards, "ivig-adjunct-in-context")["detail"]
    line = _fact_line(adjunct, "Observation/acc-pl12-fvc-2")
    assert "81" in line and "69" in line, line
    assert "MedicationStatement/acc-pl12-fvc-rtx" in adjunct

    control, drafts, expected = pl12_string_fvc_components_rituxan()
    first = next(r for r in control.resources if r["id"] == "acc-pl12-fvc-1")
    first["component"][0]["valueQuantity"]["value"] = 77  # 77 -> 69: 8 points only
    cards = call(client, hook_request("order-sign", control, drafts, templates=templates["order-sign"]))
    same_cards(ids(cards), expected)
    assert "Observation/acc-pl12-fvc-2" not in card(cards, "ivig-adjunct-in-context")["detail"]


def test_weight_in_pounds_is_converted_for_the_dose(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = jo1_tacrolimus_coordered()
    record.obs("acc-jo1-tac-wt", concept(coding(LOINC, "29463-7", "Body weight")), days=3, lab=False,
               category=[concept(coding(OBS_CATEGORY, "vital-signs"))],
               valueQuantity={"value": 154, "unit": "lb", "system": "http://unitsofmeasure.org", "code": "[lb_av]"})
    cards = call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    same_cards(ids(cards), expected)
    detail = card(cards, "ivig-adjunct-in-context")["detail"]
    assert "69.9 kg" in detail, "154 lb = 69.85 kg"
    assert re.search(r"139\.[78] g", detail), "2 g/kg for 69.85 kg = 139.7 g"


# ==================================================================================================
# Safety (issue 3 item 4: ivig-safety)
# ==================================================================================================

def _in_scope_on_therapy(pid: str) -> Record:
    """Jo-1 positive (interpretation POS) with ILD, on prednisone: ASyS-ILD with first-line therapy."""
    r = Record(pid, "Sigrun", "Sicherheit")
    r.obs(f"{pid}-jo1", concept(coding(LOINC, "11565-9", "Jo-1 extractable nuclear Ab [Units/volume] in Serum")),
          days=80, valueQuantity={"value": 61, "unit": "AU/mL"}, interpretation=interp("POS"),
          referenceRange=[{"high": {"value": 29, "unit": "AU/mL"}}])
    r.cond(f"{pid}-ild", ILD_SNOMED, days=100)
    r.med_request(f"{pid}-pred", PREDNISONE, status="active", days=40)
    return r


ON_THERAPY = {"ild": True, "synthetase_positive": True, "first_line": True}


def safety_egfr_38() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-egfr")
    r.obs("acc-s-egfr-egfr", concept(coding(LOINC, "98979-8")), days=20,
          valueQuantity={"value": 38, "unit": "mL/min/1.73m2"})
    return r, "warning"


def safety_creatinine_flagged_high() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-crea")
    r.obs("acc-s-crea-crea", concept(coding(LOINC, "2160-0")), days=15,
          valueQuantity={"value": 1.9, "unit": "mg/dL"}, interpretation=interp("H"))
    return r, "warning"


def safety_renal_labs_stale() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-stale")
    r.renal_ok(days=45)  # normal, but older than 30 days
    return r, "warning"


def safety_iga_comparator_below_low() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-iga")
    r.renal_ok()
    r.obs("acc-s-iga-iga", concept(coding(LOINC, "2458-8", "IgA [Mass/volume] in Serum or Plasma")), days=12,
          valueQuantity={"value": 5, "comparator": "<", "unit": "mg/dL"},
          referenceRange=[{"low": {"value": 70, "unit": "mg/dL"}, "high": {"value": 400, "unit": "mg/dL"}}])
    return r, "critical"


def safety_iga_less_than_the_low_bound_itself() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-iga7")
    r.renal_ok()
    r.obs("acc-s-iga7-iga", concept(coding(LOINC, "2458-8")), days=12,
          valueQuantity={"value": 7, "comparator": "<", "unit": "mg/dL"},
          referenceRange=[{"low": {"value": 7, "unit": "mg/dL"}, "high": {"value": 400, "unit": "mg/dL"}}])
    return r, "critical"


def safety_heart_failure_i5022() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-hf")
    r.renal_ok()
    r.cond("acc-s-hf-hf", concept(coding(ICD10CM, "I50.22", "Chronic systolic (congestive) heart failure")))
    return r, "warning"


def safety_vte_history_inactive() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-vte")
    r.renal_ok()
    r.cond("acc-s-vte-pe", concept(coding(ICD10CM, "Z86.711", "Personal history of pulmonary embolism")),
           clinical="inactive", days=900)
    return r, "warning"


def safety_plasma_exchange_completed_3_days_ago() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-plex")
    r.renal_ok()
    r.add({"resourceType": "Procedure", "id": "acc-s-plex-proc", "status": "completed", "subject": r.subject,
           "code": concept(coding(CPT, "36514", "Therapeutic apheresis; for plasma pheresis")),
           "performedDateTime": ago_dt(3)})
    return r, "warning"


def safety_iga_deficiency_condition_snomed_with_heart_failure() -> tuple[Record, str]:
    r = _in_scope_on_therapy("acc-s-igad")
    r.renal_ok()
    r.cond("acc-s-igad-d802", concept(coding(ICD10CM, "D80.2")))
    r.cond("acc-s-igad-hf", concept(coding(SNOMED, "84114007", "Heart failure")))
    return r, "critical"


def safety_none_plasma_exchange_20_days_ago() -> tuple[Record, str | None]:
    r = _in_scope_on_therapy("acc-s-old-plex")
    r.renal_ok()
    r.add({"resourceType": "Procedure", "id": "acc-s-old-plex-proc", "status": "completed", "subject": r.subject,
           "code": concept(coding(CPT, "36514")), "performedDateTime": ago_dt(20)})
    r.obs("acc-s-old-plex-egfr-old", concept(coding(LOINC, "98979-8")), days=150,
          valueQuantity={"value": 41, "unit": "mL/min/1.73m2"})  # low, but older than 90 days
    return r, None


SAFETY = {f.__name__: f for f in (safety_egfr_38, safety_creatinine_flagged_high, safety_renal_labs_stale,
                                  safety_iga_comparator_below_low, safety_iga_less_than_the_low_bound_itself,
                                  safety_heart_failure_i5022, safety_vte_history_inactive,
                                  safety_plasma_exchange_completed_3_days_ago,
                                  safety_iga_deficiency_condition_snomed_with_heart_failure,
                                  safety_none_plasma_exchange_20_days_ago)}


@pytest.mark.parametrize("name", sorted(SAFETY))
def test_safety_findings(client: FlaskClient, templates: dict[str, dict[str, str]], name: str) -> None:
    record, indicator = SAFETY[name]()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    for hook in HOOKS:
        cards = call(client, hook_request(hook, record, [ivig], templates=templates[hook]))
        same_cards(ids(cards), table(**ON_THERAPY, safety=indicator))


def test_safety_card_names_the_finding_resource(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    for build, reference in ((safety_egfr_38, "Observation/acc-s-egfr-egfr"),
                             (safety_iga_comparator_below_low, "Observation/acc-s-iga-iga"),
                             (safety_vte_history_inactive, "Condition/acc-s-vte-pe"),
                             (safety_plasma_exchange_completed_3_days_ago, "Procedure/acc-s-plex-proc")):
        record, _ = build()
        ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
        cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
        assert reference in card(cards, "ivig-safety")["detail"]


def test_plasma_exchange_co_ordered_in_draft_orders_is_planned(client: FlaskClient,
                                                               templates: dict[str, dict[str, str]]) -> None:
    record = _in_scope_on_therapy("acc-s-plex-draft")
    record.renal_ok()
    ivig = draft(record.pid, "acc-s-plex-draft-ivig", PRIVIGEN_NDC11)
    plex = {"resourceType": "ServiceRequest", "id": "acc-s-plex-draft-sr", "status": "draft", "intent": "order",
            "subject": record.subject, "code": concept(coding(CPT, "36514"), text="Therapeutic plasma exchange")}
    for hook in HOOKS:
        body = hook_request(hook, record, [ivig, plex], templates=templates[hook])
        same_cards(ids(call(client, body)), table(**ON_THERAPY, safety="warning"))


# ==================================================================================================
# Outside the scope, and data that does not count
# ==================================================================================================

def scope_refuted_ild_only() -> Record:
    r = Record("acc-o-refuted", "Rafe", "Widerlegt")
    r.cond("acc-o-refuted-ild", ILD_J8410, verification="refuted")
    r.renal_ok()
    return r


def scope_entered_in_error_antibody_only() -> Record:
    r = Record("acc-o-eie", "Esme", "Irrtum")
    r.obs("acc-o-eie-pl7", concept(coding(LOINC, "33772-5", "PL-7 Ab [Presence] in Serum")),
          status="entered-in-error", valueString="Strongly positive")
    r.renal_ok()
    return r


def scope_negative_mda5_only() -> Record:
    r = Record("acc-o-mda5neg", "Nell", "Negativ")
    r.obs("acc-o-mda5neg-ab", concept(coding(LOINC, "82424-3", "MDA5 Ab [Presence] in Serum by Line blot")),
          valueCodeableConcept=NEGATIVE_LOINC)
    r.renal_ok()
    return r


def scope_resolved_ild_and_other_conditions() -> Record:
    r = Record("acc-o-resolved", "Ruth", "Vergangen")
    r.cond("acc-o-resolved-ild", ILD_SNOMED, clinical="resolved")
    r.cond("acc-o-resolved-dm", DM_SNOMED, clinical="inactive")
    r.cond("acc-o-resolved-eie", PM_SNOMED, verification="entered-in-error")
    r.renal_ok()
    return r


def scope_itp_with_equivocal_and_preliminary_results() -> Record:
    r = Record("acc-o-itp", "Ivo", "Thrombozyt")
    r.cond("acc-o-itp-itp", concept(text="Immune thrombocytopenia"))
    r.obs("acc-o-itp-jo1", concept(coding(LOINC, "33571-1")), valueQuantity={"value": 35, "unit": "AU/mL"},
          interpretation=interp("E"), referenceRange=[{"high": {"value": 29, "unit": "AU/mL"}}])
    r.obs("acc-o-itp-pl12", concept(coding(LOINC, "33771-7")), status="preliminary", valueString="Positive")
    r.renal_ok()
    return r


SCOPE_OUT = {f.__name__: f for f in (scope_refuted_ild_only, scope_entered_in_error_antibody_only,
                                     scope_negative_mda5_only, scope_resolved_ild_and_other_conditions,
                                     scope_itp_with_equivocal_and_preliminary_results)}


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("name", sorted(SCOPE_OUT))
def test_outside_the_clinical_scope_gets_no_cards(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                  name: str, hook: str) -> None:
    record = SCOPE_OUT[name]()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    assert table() == []
    response = client.post(PATHS[hook], json=hook_request(hook, record, [ivig], templates=templates[hook]))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_ild_with_a_negative_mda5_is_an_antibody_result_on_record(client: FlaskClient,
                                                                 templates: dict[str, dict[str, str]]) -> None:
    record = scope_negative_mda5_only()
    record.cond("acc-o-mda5neg-ild", ILD_J8410)
    ivig = draft(record.pid, "acc-o-mda5neg-ivig", PRIVIGEN_NDC11)
    expected = table(ild=True, antibody_on_record=True)
    assert expected == []
    for hook in HOOKS:
        assert call(client, hook_request(hook, record, [ivig], templates=templates[hook])) == []


# ==================================================================================================
# Order scope (issue 3 item 2; issue 2 item 4 "scope first")
# ==================================================================================================

def _ivig_variant(pid: str, variant: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """(the draft order, bundle entries or None) for one encoding of an IVIG (or not-IVIG) order."""
    mid = f"{pid}-order"
    iv_route = {"route": concept(coding(SNOMED, "47625008", "Intravenous route"))}
    sc_route = {"route": concept(coding(SNOMED, "34206005", "Subcutaneous route"))}
    simple = {
        "ndc11-gamunex": GAMUNEX_NDC11,
        "ndc-5-4-2-gamunex": concept(coding(NDC, "13533-0805-12")),
        "ndc-5-3-2-gamunex": concept(coding(NDC, "13533-805-12")),
        "ndc-4-4-2-octagam": concept(coding(NDC, "0069-6550-02")),
        "ndc11-octagam": concept(coding(NDC, "00069655002")),
        "ndc11-flebogamma": concept(coding(NDC, "61953000401")),
        "ndc-oid-system-bivigam": concept(coding("urn:oid:2.16.840.1.113883.6.69", "69800-6503-01")),
        "text-gamunex-c-10-iv": GAMUNEX_TEXT,
        "text-generic": concept(text="Immune globulin intravenous (human) 10% liquid"),
        "display-only-asceniv": concept(coding(RXNORM, "9999999", "Asceniv 5 g/50 mL injection")),
        "not-cuvitru-ndc": concept(coding(NDC, "0944-2850-03")),
        "not-hizentra-text": concept(text="Hizentra 20% subcutaneous immune globulin"),
        "not-hepatitis-b-ig": concept(text="HyperHEP B (hepatitis B immune globulin, human)"),
        "not-amlodipine": AMLODIPINE,
    }
    if variant in simple:
        return draft(pid, mid, simple[variant]), None
    if variant == "iv-route-gammagard":
        return draft(pid, mid, concept(coding(NDC, "0944-2700-02"), text="Gammagard Liquid"),
                     dosageInstruction=[iv_route]), None
    if variant == "not-sc-route-gammagard":
        return draft(pid, mid, concept(coding(NDC, "0944-2700-02"), text="Gammagard Liquid"),
                     dosageInstruction=[sc_route]), None
    if variant == "contained-medication":
        order = draft(pid, mid, None, medicationReference={"reference": "#m1"},
                      contained=[{"resourceType": "Medication", "id": "m1",
                                  "code": concept(coding(NDC, "68982-0822-02"), text="Panzyga")}])
        return order, None
    if variant == "reference-display-only":
        return draft(pid, mid, None, medicationReference={"display": "Privigen 10% IV infusion"}), None
    if variant == "bundled-urn":
        order = draft(pid, mid, None)
        return order, bundled_medication_entries(order, concept(coding(NDC, "76125-0900-20")), "urn")
    if variant == "medication-order-dstu2-like":
        order = draft(pid, mid, concept(coding(NDC, "0944-2705-03"), text="Gammagard Liquid ERC"))
        order["resourceType"] = "MedicationOrder"
        return order, None
    if variant == "not-no-medication-yet":
        order = draft(pid, mid, None)
        del order["intent"]
        return order, None
    raise AssertionError(variant)


IVIG_VARIANTS = ("ndc11-gamunex", "ndc-5-4-2-gamunex", "ndc-5-3-2-gamunex", "ndc-4-4-2-octagam", "ndc11-octagam",
                 "ndc11-flebogamma", "ndc-oid-system-bivigam", "text-gamunex-c-10-iv", "text-generic",
                 "display-only-asceniv", "iv-route-gammagard", "contained-medication", "reference-display-only",
                 "bundled-urn", "medication-order-dstu2-like")
NOT_IVIG_VARIANTS = ("not-cuvitru-ndc", "not-hizentra-text", "not-hepatitis-b-ig", "not-amlodipine",
                     "not-sc-route-gammagard", "not-no-medication-yet")


@pytest.mark.parametrize("variant", IVIG_VARIANTS + NOT_IVIG_VARIANTS)
def test_which_orders_are_ivig(client: FlaskClient, templates: dict[str, dict[str, str]], variant: str) -> None:
    record, _, expected = pl7_quantity_ro52_lineblot()
    order, entries = _ivig_variant(record.pid, variant)
    for hook in HOOKS:
        body = hook_request(hook, record, [order], templates=templates[hook], bundle_entries=entries)
        got = ids(call(client, body))
        same_cards(got, [] if variant.startswith("not-") else expected)


def test_order_select_only_the_selected_draft_counts(client: FlaskClient,
                                                    templates: dict[str, dict[str, str]]) -> None:
    """Several drafts; only the prednisone is selected: silent.  order-sign sees the IVIG, with the prednisone
    co-ordered (first-line therapy), so the adjunct card replaces the not-first-line card."""
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    ivig = drafts[0]
    pred = draft(record.pid, "acc-multi-pred", PREDNISONE)
    pft = {"resourceType": "ServiceRequest", "id": "acc-multi-pft", "status": "draft", "intent": "order",
           "subject": record.subject, "code": concept(text="Pulmonary function tests")}
    orders = [pred, ivig, pft]
    body = hook_request("order-select", record, orders, ["MedicationRequest/acc-multi-pred"],
                        templates=templates["order-select"])
    assert call(client, body) == []
    body = hook_request("order-select", record, orders, ["ServiceRequest/acc-multi-pft"],
                        templates=templates["order-select"])
    assert call(client, body) == []
    on_therapy = table(ild=True, pl7=True, ro52=True, first_line=True)
    body = hook_request("order-select", record, orders,
                        ["MedicationRequest/acc-multi-pred", "MedicationRequest/acc-pl7-q-ivig"],
                        templates=templates["order-select"])
    same_cards(ids(call(client, body)), on_therapy)
    body = hook_request("order-sign", record, orders, templates=templates["order-sign"])
    same_cards(ids(call(client, body)), on_therapy)


def test_selection_that_names_no_draft_is_silent(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    body = hook_request("order-select", record, drafts, ["MedicationRequest/not-in-the-bundle"],
                        templates=templates["order-select"])
    assert call(client, body) == []
    body["context"]["selections"] = []
    assert call(client, body) == []


def test_order_sign_re_signed_orders_with_status_active(client: FlaskClient,
                                                        templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    drafts[0]["status"] = "active"
    same_cards(ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"]))),
               expected)


def test_cancelled_ivig_draft_is_not_an_order(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    drafts[0]["status"] = "entered-in-error"
    assert call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])) == []


def test_first_line_on_record_windows_and_statuses(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """180-day window: completed 170 days ago counts, 300 days ago does not; stopped or entered-in-error do not."""
    cases = [
        ({"status": "completed", "days": 170}, True),
        ({"status": "completed", "days": 300}, False),
        ({"status": "on-hold", "days": 30}, True),
        ({"status": "entered-in-error", "days": 10}, False),
        ({"status": "stopped", "days": 10}, False),
    ]
    for kwargs, counts in cases:
        record, drafts, _ = pl7_quantity_ro52_lineblot()
        record.med_request("acc-pl7-q-mmf", MYCOPHENOLATE, **kwargs)
        got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
        same_cards(got, table(ild=True, pl7=True, ro52=True, first_line=counts))


# ==================================================================================================
# Other encodings of the same facts
# ==================================================================================================

def _asys_ild_record(pid: str, antibody: dict[str, Any] | None = None, ild: dict[str, Any] | None = None) -> Record:
    r = Record(pid, "Enzo", "Kodierung")
    if antibody is not None:
        r.add({"resourceType": "Observation", "id": f"{pid}-ab", "status": "final", "subject": r.subject,
               "category": copy.deepcopy(LAB_CATEGORY), "effectiveDateTime": ago_dt(30), **antibody})
    r.add({"resourceType": "Condition", "id": f"{pid}-ild", "subject": r.subject,
           **(ild or {"code": ILD_J8410, "clinicalStatus": concept(coding(CLINICAL, "active"))})})
    r.renal_ok()
    return r


ENCODINGS: dict[str, tuple[dict[str, Any], dict[str, Any] | None, bool]] = {
    # name: (antibody Observation fields, ILD Condition fields or None for the default, synthetase positive?)
    "jo1-valuestring-plus-plus-plus": ({"code": concept(coding(LOINC, "33571-1")), "valueString": "+++"}, None, True),
    "jo1-valuestring-neg": ({"code": concept(coding(LOINC, "33571-1")), "valueString": "Neg"}, None, False),
    "pl7-weak-positive": ({"code": concept(coding(LOINC, "33772-5")), "valueString": "Weak positive"}, None, True),
    "pl7-borderline": ({"code": concept(coding(LOINC, "33772-5")), "valueString": "Borderline"}, None, False),
    "ej-interpretation-ind": ({"code": concept(coding(LOINC, "45149-2")), "interpretation": interp("IND")},
                              None, False),
    "oj-interpretation-neg": ({"code": concept(coding(LOINC, "45152-6")), "interpretation": interp("NEG")},
                              None, False),
    "pl12-quantity-range-text": ({"code": concept(coding(LOINC, "105552-4")),
                                  "valueQuantity": {"value": 46, "unit": "U"},
                                  "referenceRange": [{"text": "<20"}]}, None, True),
    "pl12-quantity-below-high": ({"code": concept(coding(LOINC, "105552-4")),
                                  "valueQuantity": {"value": 12, "unit": "U"},
                                  "referenceRange": [{"high": {"value": 20, "unit": "U"}}]}, None, False),
    "ej-valueboolean-free-text-local": ({"code": concept(coding(LOCAL_LAB, "EJAB"), text="Anti-EJ antibody"),
                                        "valueString": "Detected"}, None, True),
    "pl7-loinc-oid-system": ({"code": concept(coding("urn:oid:2.16.840.1.113883.6.1", "33772-5")),
                              "valueCodeableConcept": POSITIVE_SNOMED}, None, True),
    "jo1-positive-ild-dstu2-clinical-status-string": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": ILD_SNOMED, "clinicalStatus": "active", "verificationStatus": "confirmed"}, True),
    "jo1-positive-ild-clinical-status-absent": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": concept(coding(ICD10CM, "J84.89"))}, True),
    "jo1-positive-ild-recurrence": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": ILD_CTD_SNOMED, "clinicalStatus": concept(coding(CLINICAL, "recurrence"))}, True),
    "jo1-positive-ild-text-only": (
        {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": POSITIVE_LOINC},
        {"code": concept(text="Nonspecific interstitial pneumonia (NSIP) on HRCT")}, True),
    "jo1-positive-ild-snomed-ipaf": (
        {"code": concept(coding(LOINC, "5234-0")), "valueCodeableConcept": POSITIVE_SNOMED},
        {"code": concept(coding(SNOMED, "870573008"))}, True),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_other_encodings_of_the_same_facts(client: FlaskClient, templates: dict[str, dict[str, str]],
                                           name: str) -> None:
    antibody, ild, positive = ENCODINGS[name]
    record = _asys_ild_record(f"acc-enc-{sorted(ENCODINGS).index(name)}", antibody, ild)
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    expected = table(ild=True, synthetase_positive=positive)
    for hook in HOOKS:
        same_cards(ids(call(client, hook_request(hook, record, [ivig], templates=templates[hook]))), expected)


def test_newest_final_result_wins(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """An older negative superseded by a newer amended positive; a newer preliminary negative is ignored."""
    record = _asys_ild_record("acc-newest")
    code = concept(coding(LOINC, "33772-5", "PL-7 Ab [Presence] in Serum"))
    record.obs("acc-newest-1", code, days=400, valueString="Negative")
    record.obs("acc-newest-2", code, days=90, status="amended", valueString="Positive")
    record.obs("acc-newest-3", code, days=5, status="preliminary", valueString="Negative")
    record.obs("acc-newest-4", code, days=2, status="cancelled", valueString="Negative")
    ivig = draft(record.pid, "acc-newest-ivig", PRIVIGEN_NDC11)
    same_cards(ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))),
               table(ild=True, pl7=True))
    record.obs("acc-newest-5", code, days=1, status="corrected", valueCodeableConcept=NEGATIVE_LOINC)
    same_cards(ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))),
               table(ild=True))


def test_malformed_resources_next_to_good_ones_are_skipped_and_noted(
        client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    bad = [
        {"resourceType": "Observation", "id": "acc-bad-codelist", "status": "final", "subject": record.subject,
         "category": copy.deepcopy(LAB_CATEGORY), "code": [concept(coding(LOINC, "33771-7"))],
         "valueString": "Positive", "effectiveDateTime": ago(3)},
        {"resourceType": "Observation", "id": "acc-bad-value", "status": "final", "subject": record.subject,
         "category": copy.deepcopy(LAB_CATEGORY), "code": concept(coding(LOINC, "105552-4")),
         "valueQuantity": {"value": {"nested": True}}, "referenceRange": "high", "effectiveDateTime": "yesterday"},
        {"resourceType": "Condition", "id": "acc-bad-status", "subject": record.subject, "code": ILD_SNOMED,
         "clinicalStatus": 42, "verificationStatus": ["confirmed"]},
        {"resourceType": "MedicationRequest", "id": "acc-bad-med", "subject": record.subject, "status": None,
         "medicationCodeableConcept": "rituximab"},
        {"resourceType": "Observation", "id": "acc-bad-nostatus", "subject": record.subject,
         "category": copy.deepcopy(LAB_CATEGORY), "code": concept(coding(LOINC, "45152-6")), "valueString": "+"},
        {"id": "acc-bad-no-type"},
    ]
    for resource in bad:
        record.add(resource)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"])
    body["prefetch"]["laboratory"]["entry"].append({"resource": "not even an object"})
    cards = call(client, body)
    same_cards(ids(cards), expected)
    details = "\n".join(c["detail"] for c in cards)
    assert "Observation/acc-bad-codelist" in details, "a skipped resource must be listed as a data note"


def test_unicode_names_and_texts(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-unicode", "Zoë Ñúñez", "Łukasiewicz-王秀英 👩‍⚕️")
    record.obs("acc-unicode-pl7", concept(coding(LOCAL_LAB, "PL7-ÄK"), text="Anti-PL-7 Antikörper (Línea-blot) 抗体"),
               valueString="Positive ✓")
    record.cond("acc-unicode-ild", concept(text="Pneumopathie interstitielle diffuse (ILD) — 間質性肺疾患"))
    record.renal_ok()
    ivig = draft(record.pid, "acc-unicode-ivig", concept(text="Privigen® 10 % — Immunglobulin i.v."))
    body = hook_request("order-sign", record, [ivig], templates=templates["order-sign"])
    raw = client.post(SIGN, data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                      content_type="application/json; charset=utf-8")
    assert raw.status_code == 200, raw.get_data(as_text=True)
    cards = check_response(json.loads(raw.get_data().decode("utf-8")))
    same_cards(ids(cards), table(ild=True, pl7=True))


def test_untrusted_text_never_reaches_the_detail_as_html_or_a_link(client: FlaskClient,
                                                                  templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-xss", "Mallory", "<b>Injector</b>")
    record.obs("acc-xss-pl7", concept(coding(LOINC, "33772-5"), text="PL-7 <img src=x onerror=alert(1)>"),
               valueString="Positive <script>alert('pl7')</script> [click](javascript:alert(2))")
    record.cond("acc-xss-ild", concept(coding(SNOMED, "233703007"),
                                       text="ILD](javascript:alert(3)) <iframe src=//evil.example>"))
    record.renal_ok()
    ivig = draft(record.pid, "acc-xss-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, pl7=True))
    for c in cards:
        detail = c["detail"]
        for raw in ("<script", "<img", "<iframe", "<b>"):
            assert raw not in detail.lower(), (raw, detail)
        assert not re.search(r"(?<!\\)\]\(javascript:", detail), detail


def test_huge_but_legal_request(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """4,000 unrelated labs and 150 non-IVIG draft orders around one selected IVIG: 200, the same cards."""
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    for i in range(4000):
        record.obs(f"acc-big-{i}", concept(coding(LOCAL_LAB, f"GLU{i % 7}"), text="Glucose, fasting"),
                   days=i % 700, valueQuantity={"value": 90 + i % 30, "unit": "mg/dL"})
    others = [draft(record.pid, f"acc-big-d{i}", AMLODIPINE) for i in range(150)]
    orders = others + drafts
    body = hook_request("order-select", record, orders, ["MedicationRequest/acc-pl7-q-ivig"],
                        templates=templates["order-select"])
    size = len(json.dumps(body))
    assert 1_000_000 < size < 5_242_880, size
    started = time.perf_counter()
    same_cards(ids(call(client, body)), expected)
    assert time.perf_counter() - started < 5


# ==================================================================================================
# Prefetch as 2.0 clients send it, and the fetch path (issue 4)
# ==================================================================================================

class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the service queries every key at once; the default backlog of 5 drops SYNs
    daemon_threads = True


class FhirServer:
    """A loopback FHIR server answering reads and searches over ``resources``; it pages with ``page_size``."""

    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self.page_size: int | None = None
        self.requests: list[tuple[str, str | None]] = []
        self.faults: dict[str, str] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.requests.append((self.path, self.headers.get("Authorization")))
                for fragment, mode in outer.faults.items():
                    if fragment in self.path:
                        if mode.startswith("sleep:"):
                            time.sleep(float(mode.removeprefix("sleep:")))
                        elif mode == "html":
                            self._send_raw(200, b"<html><body>Login</body></html>", "text/html")
                            return
                        elif mode.startswith("redirect:"):
                            self.send_response(302)
                            self.send_header("Location", mode.removeprefix("redirect:") + self.path)
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                        else:
                            self._send(int(mode), {"resourceType": "OperationOutcome",
                                                   "issue": [{"severity": "error", "code": "exception"}]})
                            return
                relative = self.path.removeprefix("/fhir/")
                page = 0
                match = re.search(r"[&?]_acc_page=(\d+)", relative)
                if match:
                    page = int(match.group(1))
                    relative = relative.replace(match.group(0), "")
                result = search(outer.resources, relative, outer.base)
                if result is None:
                    self._send(404, {"resourceType": "OperationOutcome",
                                     "issue": [{"severity": "error", "code": "not-found"}]})
                    return
                if result.get("resourceType") == "Bundle" and outer.page_size:
                    entries = result["entry"]
                    size = outer.page_size
                    result["entry"] = entries[page * size:(page + 1) * size]
                    if (page + 1) * size < len(entries):
                        sep = "&" if "?" in relative else "?"
                        result["link"] = [{"relation": "next",
                                           "url": f"{outer.base}/{relative}{sep}_acc_page={page + 1}"}]
                self._send(200, result)

            def _send(self, status: int, body: Any) -> None:
                self._send_raw(status, json.dumps(body).encode(), "application/fhir+json")

            def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self, resources: list[dict[str, Any]], page_size: int | None = None,
              faults: dict[str, str] | None = None) -> None:
        self.resources = resources
        self.page_size = page_size
        self.requests = []
        self.faults = faults or {}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def fetch_client(clean_env: None, tmp_path_factory: pytest.TempPathFactory, fhir_server: FhirServer) -> FlaskClient:
    """An app that may query the loopback server (an explicit http:// prefix on the allow-list)."""
    app = make_app(tmp_path_factory.mktemp("fetch"), FHIR_SERVERS=f"{fhir_server.base}/", FHIR_DEADLINE_S=3.0)
    return app.test_client()


REQUIRED = ("myositisAntibodies", "conditions", "medications")


def oo_body(response: Any, *keys: str) -> dict[str, Any]:
    assert response.status_code == 412, response.get_data(as_text=True)[:500]
    assert response.mimetype in ("application/json", "application/fhir+json")
    body = response.get_json()
    OperationOutcome.model_validate(body)
    assert body["resourceType"] == "OperationOutcome"
    text = json.dumps(body)
    for key in keys:
        assert key in text, f"the 412 must name the missing key {key}: {text}"
    return body


def test_optional_keys_missing_without_fhir_server_still_decides(client: FlaskClient,
                                                                 templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    optional = tuple(k for k in templates["order-sign"] if k not in REQUIRED and k != "safetyLabs")
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=optional)
    same_cards(ids(call(client, body)), expected)


def test_safety_labs_missing_is_never_silent(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"],
                        omit=("safetyLabs", "laboratory"))
    cards = call(client, body)
    assert {c for c, _ in expected} <= {c for c, _ in ids(cards)}
    safety = card(cards, "ivig-safety")
    assert "renal function" in safety["detail"].lower() and "could not be" in safety["detail"].lower()


@pytest.mark.parametrize("missing", [("conditions",), ("myositisAntibodies", "medications"), REQUIRED])
def test_required_keys_missing_without_fhir_server_is_412(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                          missing: tuple[str, ...]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    for hook in HOOKS:
        body = hook_request(hook, record, drafts, templates=templates[hook], omit=missing)
        oo_body(client.post(PATHS[hook], json=body), *missing)


def test_no_prefetch_at_all_without_fhir_server_is_412(client: FlaskClient,
                                                       templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    body = hook_request("order-select", record, drafts, templates=templates["order-select"], with_prefetch=False)
    oo_body(client.post(SELECT, json=body), *REQUIRED)


@pytest.mark.parametrize("shape", ["operation-outcome", "bundle-of-operation-outcomes"])
def test_operation_outcome_prefetch_without_fhir_server_is_412(
        client: FlaskClient, templates: dict[str, dict[str, str]], shape: str) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "exception", "diagnostics": "search failed"}]}
    value = outcome if shape == "operation-outcome" else {
        "resourceType": "Bundle", "type": "searchset", "entry": [{"resource": outcome}]}
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"])
    body["prefetch"]["conditions"] = value
    oo_body(client.post(SIGN, json=body), "conditions")


def test_non_ivig_order_never_412_and_never_queries(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                    templates: dict[str, dict[str, str]]) -> None:
    record, _, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    order = draft(record.pid, "acc-fast-amlo", AMLODIPINE)
    for hook in HOOKS:
        body = hook_request(hook, record, [order], templates=templates[hook], with_prefetch=False)
        assert call(fetch_client, body) == []
        body["fhirServer"] = fhir_server.base
        assert call(fetch_client, body) == []
    assert fhir_server.requests == []


def test_null_prefetch_means_no_data_and_no_query(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                 templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"],
                        prefetch={key: None for key in templates["order-sign"]}, fhirServer=fhir_server.base)
    assert call(fetch_client, body) == []  # no data: nobody in the clinical scope
    assert fhir_server.requests == [], "a null prefetch key must not be queried"


def test_empty_bundles_are_data_not_missing_keys(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0}
    prefetch = {key: copy.deepcopy(empty) for key in templates["order-sign"] if key != "patient"}
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch)
    assert call(client, body) == []


@pytest.mark.parametrize("missing", [("conditions",), REQUIRED, tuple()])
def test_missing_keys_are_fetched_with_the_token(
        fetch_client: FlaskClient, fhir_server: FhirServer, templates: dict[str, dict[str, str]],
        missing: tuple[str, ...]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    omit = missing or tuple(templates["order-sign"])  # () = no prefetch at all
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=omit,
                        fhirServer=fhir_server.base,
                        fhirAuthorization={"access_token": "acc-secret-token", "token_type": "Bearer",
                                           "expires_in": 300, "scope": "patient/*.read",
                                           "subject": "ivig-cds", "patient": record.pid})
    same_cards(ids(call(fetch_client, body)), expected)
    assert fhir_server.requests, "missing keys must be queried"
    assert all(auth == "Bearer acc-secret-token" for _, auth in fhir_server.requests)
    queried = {path.split("?")[0].removeprefix("/fhir/").split("/")[0] for path, _ in fhir_server.requests}
    for key in omit:
        resource_type = templates["order-sign"][key].split("?")[0].split("/")[0]
        assert resource_type in queried, (key, queried)
    assert all(f"patient={record.pid}" in path or path.endswith(f"/Patient/{record.pid}")
               for path, _ in fhir_server.requests)


def test_sandbox_style_client_http_fhir_server_without_token(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                            templates: dict[str, dict[str, str]]) -> None:
    """The sandbox leaves unresolvable keys out, sends no fhirAuthorization, and its fhirServer may be http."""
    record, drafts, expected = jo1_tacrolimus_coordered()
    fhir_server.reset(record.resources)
    body = hook_request("order-select", record, drafts, templates=templates["order-select"],
                        omit=("medications", "pulmonaryFunction", "plasmaExchangeProcedures"),
                        fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), expected)
    assert all(auth is None for _, auth in fhir_server.requests)


def test_operation_outcome_prefetch_is_queried_again(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                     templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], fhirServer=fhir_server.base)
    body["prefetch"]["myositisAntibodies"] = {"resourceType": "OperationOutcome",
                                              "issue": [{"severity": "error", "code": "timeout"}]}
    same_cards(ids(call(fetch_client, body)), expected)
    assert any("/fhir/Observation?" in path for path, _ in fhir_server.requests)


def test_fhir_server_not_on_the_allow_list_is_never_contacted(client: FlaskClient, fhir_server: FhirServer,
                                                              templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=("conditions",),
                        fhirServer=fhir_server.base)
    oo_body(client.post(SIGN, json=body), "conditions")
    assert fhir_server.requests == []


def _split_antibodies(record: Record, templates: dict[str, str]) -> dict[str, Any]:
    """The antibody key as a first page holding only the PL-7 result, with a next link."""
    prefetch = prefetch_for(record, templates)
    bundle = prefetch["myositisAntibodies"]
    pl7 = [e for e in bundle["entry"] if e["resource"]["id"] == "acc-pl7-q-ab"]
    assert len(bundle["entry"]) == 2 and pl7
    bundle["entry"] = pl7
    bundle["link"] = [{"relation": "self", "url": "https://ehr.acceptance.example.net/fhir/Observation?page=1"}]
    prefetch["laboratory"]["entry"] = [e for e in prefetch["laboratory"]["entry"]
                                       if e["resource"]["id"] != "acc-pl7-q-ro52"]
    return prefetch


def test_prefetch_page_with_next_link_and_no_fhir_server_uses_the_data(client: FlaskClient,
                                                                       templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    prefetch = _split_antibodies(record, templates["order-sign"])
    prefetch["myositisAntibodies"]["link"].append(
        {"relation": "next", "url": "https://ehr.acceptance.example.net/fhir/Observation?page=2"})
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch)
    cards = call(client, body)
    same_cards(ids(cards), table(ild=True, pl7=True))  # Ro52 was on the page that could not be read
    assert all("could not be" in c["detail"] for c in cards), "an incomplete antibody key must be noted"


def test_prefetch_next_link_is_followed_on_the_fhir_server(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                           templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    prefetch = _split_antibodies(record, templates["order-sign"])
    ro52_query = render(templates["order-sign"]["myositisAntibodies"], record.pid).replace(
        "Observation?", "Observation?_id=acc-pl7-q-ro52&")
    prefetch["myositisAntibodies"]["link"].append({"relation": "next", "url": f"{fhir_server.base}/{ro52_query}"})
    fhir_server.resources = [r for r in record.resources if r["id"] == "acc-pl7-q-ro52"]
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch,
                        fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), expected)
    assert len(fhir_server.requests) == 1


def test_fetched_searchset_is_paged_through(fetch_client: FlaskClient, fhir_server: FhirServer,
                                            templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources, page_size=1)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"],
                        omit=("myositisAntibodies", "laboratory"), fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), expected)
    assert any("_acc_page=1" in path for path, _ in fhir_server.requests)


# ==================================================================================================
# Discovery (issue 2 item 3; spec §Discovery, §Prefetch tokens, §Prefetch query restrictions)
# ==================================================================================================

TOKEN_RE = re.compile(r"\{\{(.*?)\}\}")
ALLOWED_TOKENS = {"context.patientId", "context.userId", "context.encounterId",
                  "userPractitionerId", "userPractitionerRoleId", "userPatientId", "userRelatedPersonId"}


def _value_set_codes(vs_id: str) -> list[tuple[str, str]]:
    resource = json.loads((VALUESETS / f"{vs_id}.json").read_text(encoding="utf-8"))
    return [(inc["system"], c["code"]) for inc in resource.get("compose", {}).get("include", [])
            for c in inc.get("concept", [])]


def test_discovery_lists_both_hooks_with_2_0_templates(client: FlaskClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"services"}
    services = body["services"]
    assert sorted(s["hook"] for s in services) == ["order-select", "order-sign"]
    for service in services:
        _no_empty(service, f"$.services[{service['id']}]")
        assert isinstance(service["id"], str) and re.match(r"^[A-Za-z0-9._~-]+$", service["id"])
        assert service["title"].strip() and service["description"].strip()
        assert isinstance(service["usageRequirements"], str)
        for key, template in service["prefetch"].items():
            tokens = TOKEN_RE.findall(template)
            assert tokens, f"{key}: a template without a context token cannot be patient-specific"
            assert set(tokens) <= ALLOWED_TOKENS, f"{key}: 2.0 tokens only, not {set(tokens) - ALLOWED_TOKENS}"
            assert template.count("{{") == template.count("}}") == len(tokens)
            path, _, query = template.partition("?")
            assert re.match(r"^[A-Z][A-Za-z]+(/\{\{context\.patientId\}\})?$", path), (key, path)
            if not query:
                assert "/" in path, f"{key}: a type search needs parameters"
                continue
            names = [pair.split("=", 1)[0] for pair in query.split("&")]
            assert len(names) == len(set(names)), f"{key}: a repeated parameter is merged by clients"
            for pair in query.split("&"):
                name, _, value = pair.partition("=")
                base, _, modifier = name.partition(":")
                assert modifier in ("", "in"), f"{key}: modifier {modifier} is outside the 2.0 query subset"
                assert "." not in base and not base.startswith(("_include", "_revinclude", "_has", "_elements")), name
                assert value, f"{key}: empty value for {name}"
                if base in ("date", "authoredon", "onset-date"):
                    assert re.match(r"^(eq|lt|gt|ge|le)", value), (key, pair)
        # the prefetch covers what issue 2 lists, generated from the value sets
        templates = list(service["prefetch"].values())
        assert any(t == "Patient/{{context.patientId}}" for t in templates)
        for resource_type in ("Condition", "MedicationRequest", "ServiceRequest", "Procedure"):
            assert any(t.startswith(f"{resource_type}?") for t in templates), resource_type
        observation_templates = " ".join(t for t in templates if t.startswith("Observation?"))
        for vs_id in ("antibody-jo1", "antibody-pl7", "antibody-pl12", "antibody-ej", "antibody-oj", "antibody-ro52",
                      "antibody-mda5", "lab-creatinine", "lab-egfr", "lab-iga", "lab-weight", "lab-fvc-pct",
                      "lab-dlco-pct"):
            for system, code in _value_set_codes(vs_id):
                assert f"{system}|{code}" in observation_templates, f"{vs_id} {code} is not prefetched"
        procedure = " ".join(t for t in templates if t.startswith("Procedure?"))
        for system, code in _value_set_codes("procedure-plasma-exchange"):
            assert f"{system}|{code}" in procedure or "code=" not in procedure


def test_discovery_templates_render_to_plain_queries(client: FlaskClient) -> None:
    for service in client.get("/cds-services").get_json()["services"]:
        for template in service["prefetch"].values():
            rendered = render(template, "acc-render-1")
            assert "{{" not in rendered and "}}" not in rendered and "acc-render-1" in rendered


# ==================================================================================================
# Card metadata: review page link, pending-review marking, governance extension (issue 6)
# ==================================================================================================

def test_cards_link_their_review_page_and_carry_review_status(client: FlaskClient,
                                                             templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    response = client.post(SIGN, json=hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    assert response.headers.get("Cache-Control", "").find("no-store") >= 0
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    for c in check_response(response.get_json()):
        card_id = c["source"]["topic"]["code"]
        assert c["source"]["url"] == f"https://cds.acceptance.example.net/review/{card_id}"
        assert "Pending clinical review" in c["source"]["label"]
        assert "Pending clinical review" in c["detail"]
        extension = c.get("extension")
        assert isinstance(extension, dict) and len(extension) == 1
        (key, meta), = extension.items()
        assert "." in key, "extension names use reverse-domain notation"
        assert meta["cardId"] == card_id and meta["status"] == "submitted"
        assert re.match(r"^\d+\.\d+\.\d+$", meta["version"]) and re.match(r"^[0-9a-f]{64}$", meta["contentHash"])
        page = client.get(f"/review/{card_id}")
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert page.headers.get("X-Frame-Options") == "DENY"


def test_review_packet_lists_every_card(client: FlaskClient) -> None:
    page = client.get("/review")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers.get("X-Frame-Options") == "DENY"
    html = page.get_data(as_text=True)
    for card_id in CARD_IDS:
        assert card_id in html


def test_approved_only_withholds_unapproved_cards(clean_env: None, tmp_path: Path,
                                                  templates: dict[str, dict[str, str]]) -> None:
    strict = make_app(tmp_path, CONTENT_POLICY="approved-only").test_client()
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    assert call(strict, hook_request("order-sign", record, drafts, templates=templates["order-sign"])) == []


def test_two_ivig_drafts_get_one_card_each_and_the_removal_covers_both(
        client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """IVIG is often entered as one order per infusion day; "Remove the IVIG order" must remove every one."""
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    day2 = draft(record.pid, "acc-pl7-q-ivig-day2", concept(text="Privigen 10% IV, day 2 of 2"))
    for hook in HOOKS:
        body = hook_request(hook, record, [drafts[0], day2],
                            ["MedicationRequest/acc-pl7-q-ivig", "MedicationRequest/acc-pl7-q-ivig-day2"],
                            templates=templates[hook])
        cards = call(client, body)
        same_cards(ids(cards), expected)
        c = card(cards, "ivig-not-first-line")
        deleted = {a["resourceId"] for s in c["suggestions"] for a in s["actions"] if a["type"] == "delete"}
        assert deleted == {"MedicationRequest/acc-pl7-q-ivig", "MedicationRequest/acc-pl7-q-ivig-day2"}, deleted


# ==================================================================================================
# Feedback (issue 2 item 5; spec §Feedback)
# ==================================================================================================

def _cards_for_feedback(client: FlaskClient, templates: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    record, drafts, _ = asys_text_only_no_antibodies()
    return call(client, hook_request("order-select", record, drafts, templates=templates["order-select"]))


def test_feedback_variants_are_accepted_and_stored_once(app: Flask, client: FlaskClient,
                                                        templates: dict[str, dict[str, str]]) -> None:
    cards = _cards_for_feedback(client, templates)
    monitoring = card(cards, "ild-monitoring")
    warning = card(cards, "ivig-not-first-line")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    accepted = {"card": monitoring["uuid"], "outcome": "accepted",
                "acceptedSuggestions": [{"id": monitoring["suggestions"][0]["uuid"]}], "outcomeTimestamp": now}
    overridden_sandbox = {"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": now,
                          "overrideReason": {"reason": {"code": warning["overrideReasons"][0]["code"],
                                                        "system": warning["overrideReasons"][0]["system"]}}}
    overridden_full = {"card": warning["uuid"], "outcome": "overridden", "outcomeTimestamp": now,
                       "overrideReason": {"reason": warning["overrideReasons"][1],
                                          "userComment": "Rheumatology advised — ünïcode ✓"},
                       "extension": {"org.example.acceptance": {"x": 1}}}
    overridden_bare = {"card": warning["uuid"], "outcome": "overridden",
                       "outcomeTimestamp": "2026-01-01T10:00:00.123+00:00"}
    for items in ([accepted], [overridden_sandbox], [overridden_full, overridden_bare]):
        for _ in range(2):  # every call twice: feedback is idempotent
            response = client.post("/cds-services/ivig-order-select/feedback", json={"feedback": items})
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json() == {}
    store = app.extensions["cds_runtime"].store
    assert len(store.feedback_rows(monitoring["uuid"])) == 1, "the same feedback posted twice is stored once"
    assert len(store.feedback_rows(warning["uuid"])) == 3


@pytest.mark.parametrize("item, why", [
    ({"outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z"}, "accepted without acceptedSuggestions"),
    ({"outcome": "dismissed", "outcomeTimestamp": "2026-01-01T00:00:00Z"}, "unknown outcome"),
    ({"outcome": "overridden"}, "no outcomeTimestamp"),
    ({"outcome": "overridden", "outcomeTimestamp": "yesterday"}, "not RFC 3339"),
    ({"outcome": "overridden", "outcomeTimestamp": "2026-01-01T00:00:00Z", "overrideReason": {"reason": "x"}},
     "reason is not a Coding"),
    ({"outcome": "accepted", "outcomeTimestamp": "2026-01-01T00:00:00Z", "acceptedSuggestions": []},
     "empty acceptedSuggestions"),
])
def test_feedback_refused_with_a_json_error(client: FlaskClient, item: dict[str, Any], why: str) -> None:
    body = {"feedback": [{"card": str(uuid.uuid4()), **item}]}
    response = client.post("/cds-services/ivig-order-sign/feedback", json=body)
    assert_error(response, 400)


def test_feedback_shape_errors(client: FlaskClient) -> None:
    path = "/cds-services/ivig-order-sign/feedback"
    assert_error(client.post(path, json={"feedback": {"card": "x"}}), 400)
    assert_error(client.post(path, json=[]), 400)
    assert_error(client.post(path, json={"feedback": []}), 400)
    assert_error(client.post(path, data="feedback", content_type="text/plain"), 415)
    assert_error(client.post("/cds-services/no-such-service/feedback", json={"feedback": []}), 404)
    assert_error(client.get(path), 405)


# ==================================================================================================
# Errors (issue 2 item 4) and hostile input (issue 5 item 3)
# ==================================================================================================

def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("detail"), str) and body["detail"]
    assert "Traceback" not in body["detail"]
    return body


def _valid(hook: str = "order-sign") -> dict[str, Any]:
    record = Record("acc-err")
    return hook_request(hook, record, [draft(record.pid, "acc-err-d", AMLODIPINE)], templates={},
                        with_prefetch=False)


def test_error_classes_have_json_bodies(client: FlaskClient) -> None:
    assert_error(client.post(SIGN, data=b"{not json", content_type="application/json"), 400)
    assert_error(client.post(SIGN, data=json.dumps(_valid()), content_type="text/plain"), 415)
    assert_error(client.post(SIGN, data=json.dumps(_valid())), 415)
    assert_error(client.post("/cds-services/ivig-order-typo", json=_valid()), 404)
    assert_error(client.get(SIGN), 405)
    assert_error(client.put(SIGN, json=_valid()), 405)
    assert_error(client.post(SIGN, data=b"{" + b" " * 5_300_000 + b"}", content_type="application/json"), 413)
    assert_error(client.post(SIGN, json=_valid("order-select")), 400)  # order-select body at order-sign
    assert_error(client.post(SIGN, data=b"\xff\xfe{}", content_type="application/json"), 400)
    assert_error(client.post(SIGN, data=b'{"hook": NaN}', content_type="application/json"), 400)


@pytest.mark.parametrize("mutate, why", [
    (lambda b: b.update(hookInstance="not-a-uuid"), "hookInstance is not a UUID"),
    (lambda b: b.pop("hookInstance"), "no hookInstance"),
    (lambda b: b["context"].pop("patientId"), "no patientId"),
    (lambda b: b["context"].pop("draftOrders"), "no draftOrders"),
    (lambda b: b.update(fhirAuthorization={"access_token": "t", "token_type": "Bearer", "expires_in": 60,
                                           "scope": "patient/*.read", "subject": "c"}), "token without fhirServer"),
    (lambda b: b.update(fhirServer="ftp://ehr.example.net/fhir"), "fhirServer not http(s)"),
    (lambda b: b.update(prefetch=["not", "an", "object"]), "prefetch is an array"),
    (lambda b: b.update(prefetch={"conditions": "Condition?patient=1"}), "prefetch value is a string"),
    (lambda b: b["context"].update(draftOrders={"resourceType": "Patient"}), "draftOrders is not a Bundle"),
    (lambda b: b.update(extension=["x"]), "extension is not an object"),
    (lambda b: b["context"].update(draftOrders={"resourceType": "Bundle", "entry": [
        {"resource": {"resourceType": "MedicationRequest", "id": f"d{i}"}} for i in range(201)]}),
     "too many draft orders"),
])
def test_invalid_requests_are_400_with_json(client: FlaskClient, mutate: Callable[[dict[str, Any]], Any],
                                            why: str) -> None:
    body = _valid()
    mutate(body)
    assert_error(client.post(SIGN, json=body), 400)


def test_lenient_where_real_clients_differ(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    """Unknown fields and extension objects, Bundle without type, fhir+json media type, upper-case UUID,
    a draftOrders Bundle without entries, an eager draft with no medication."""
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    body = hook_request("order-select", record, drafts, templates=templates["order-select"],
                        extension={"org.example.ehr": {"tenant": "t1"}}, somethingNew=True)
    body["hookInstance"] = body["hookInstance"].upper()
    del body["context"]["draftOrders"]["type"]
    body["context"]["encounterId"] = "acc-enc-1"
    body["context"]["extension"] = {"org.example.ehr": {"screen": "orders"}}
    body["prefetch"]["notATemplateOfOurs"] = {"resourceType": "Bundle", "type": "searchset"}
    response = client.post(SELECT, data=json.dumps(body), content_type="application/fhir+json; charset=utf-8")
    assert response.status_code == 200, response.get_data(as_text=True)
    same_cards(ids(check_response(response.get_json(), body)), expected)
    empty = hook_request("order-sign", record, [], templates={}, with_prefetch=False)
    del empty["context"]["draftOrders"]["entry"]
    assert call(client, empty) == []
    eager = hook_request("order-select", record, [{"resourceType": "MedicationRequest", "id": "acc-eager",
                                                   "status": "draft", "subject": record.subject,
                                                   "category": {"text": "Inpatient"},
                                                   "reasonCode": {"text": "ILD"}}],
                         templates={}, with_prefetch=False)
    assert call(client, eager) == []


def test_too_many_prefetch_resources_is_400(client: FlaskClient) -> None:
    body = _valid()
    body["prefetch"] = {"laboratory": {"resourceType": "Bundle", "type": "searchset",
                                       "entry": [{"resource": {"resourceType": "Basic"}}] * 50_001}}
    assert_error(client.post(SIGN, json=body), 400)


def test_deep_nesting_is_400(client: FlaskClient) -> None:
    body = _valid()
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(200):
        node["x"] = {}
        node = node["x"]
    body["prefetch"] = {"laboratory": {"resourceType": "Bundle", "extension": deep}}
    assert_error(client.post(SIGN, json=body), 400)


# ==================================================================================================
# Other clients: JWT (issue 5) and CORS from the sandbox (issue 2 item 6)
# ==================================================================================================

BASE = "https://cds.acceptance.example.net"
ISS = "https://ehr.acceptance.example.net"


@pytest.fixture(scope="module")
def signing_key() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def jwt_client(clean_env: None, tmp_path_factory: pytest.TempPathFactory, signing_key: Any) -> FlaskClient:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="acc-key-1", use="sig", alg="ES384")
    issuers = {ISS: {"jwks": {"keys": [jwk]}}}
    app = make_app(tmp_path_factory.mktemp("jwt"), AUTH="jwt", PUBLIC_BASE_URL=BASE,
                   TRUSTED_ISSUERS=json.dumps(issuers), CORS_ORIGINS=SANDBOX)
    return app.test_client()


def token(key: Any, aud: Any, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
    return jwt.encode(payload, key, algorithm="ES384", headers={"kid": "acc-key-1", "typ": "JWT"})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_jwt_each_endpoint_with_its_own_audience(jwt_client: FlaskClient, signing_key: Any) -> None:
    assert jwt_client.get("/cds-services", headers=bearer(token(signing_key, f"{BASE}/cds-services"))
                          ).status_code == 200
    body = _valid()
    response = jwt_client.post(SIGN, json=body, headers=bearer(token(signing_key, f"{BASE}{SIGN}")))
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    feedback = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden",
                              "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    response = jwt_client.post(f"{SIGN}/feedback", json=feedback,
                               headers=bearer(token(signing_key, f"{BASE}{SIGN}/feedback")))
    assert response.status_code == 200
    # aud as an array (the spec allows it); Epic-style extra claims nbf and sub
    response = jwt_client.post(SIGN, json=_valid(), headers=bearer(token(
        signing_key, ["https://other.example.net/cds-services/x", f"{BASE}{SIGN}"],
        nbf=int(time.time()) - 300, sub="epic-client-id")))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_jwt_refusals_are_bare_401(jwt_client: FlaskClient, signing_key: Any) -> None:
    def refused(response: Any) -> None:
        assert response.status_code == 401
        assert response.get_json() == {"error": "unauthorized"}

    refused(jwt_client.get("/cds-services"))
    refused(jwt_client.post(SIGN, json=_valid()))
    refused(jwt_client.post(SIGN, json=_valid(), headers=bearer(token(signing_key, f"{BASE}{SELECT}"))))
    refused(jwt_client.post(SIGN, json=_valid(), headers=bearer(token(signing_key, f"{BASE}{SIGN}/feedback"))))
    refused(jwt_client.post(SIGN, json=_valid(), headers=bearer(token(
        signing_key, f"{BASE}{SIGN}", iat=int(time.time()) - 900, exp=int(time.time()) - 600))))
    refused(jwt_client.post(SIGN, json=_valid(), headers=bearer(token(signing_key, f"{BASE}{SIGN}", iss=SANDBOX))))
    replay = token(signing_key, f"{BASE}{SIGN}")
    assert jwt_client.post(SIGN, json=_valid(), headers=bearer(replay)).status_code == 200
    refused(jwt_client.post(SIGN, json=_valid(), headers=bearer(replay)))
    unsigned = jwt.encode({"iss": ISS, "aud": f"{BASE}{SIGN}", "iat": int(time.time()),
                           "exp": int(time.time()) + 60, "jti": "x"}, None, algorithm="none",
                          headers={"kid": "acc-key-1", "typ": "JWT"})
    refused(jwt_client.post(SIGN, json=_valid(), headers=bearer(unsigned)))


@pytest.mark.parametrize("path, method, headers", [
    (SELECT, "POST", "authorization,content-type"),
    (SIGN, "POST", "authorization,content-type"),
    (f"{SELECT}/feedback", "POST", "authorization,content-type"),
    ("/cds-services", "GET", "authorization"),
])
def test_cors_preflight_from_the_sandbox_without_a_token(jwt_client: FlaskClient, path: str, method: str,
                                                         headers: str) -> None:
    response = jwt_client.options(path, headers={"Origin": SANDBOX, "Access-Control-Request-Method": method,
                                                 "Access-Control-Request-Headers": headers})
    assert response.status_code in (200, 204), response.status_code
    assert response.headers.get("Access-Control-Allow-Origin") == SANDBOX
    allowed_headers = response.headers.get("Access-Control-Allow-Headers", "").lower()
    for header in headers.split(","):
        assert header in allowed_headers, allowed_headers
    assert method in response.headers.get("Access-Control-Allow-Methods", "")


def test_cors_on_actual_responses_and_not_for_other_origins(jwt_client: FlaskClient, signing_key: Any) -> None:
    response = jwt_client.post(SIGN, json=_valid(), headers={
        "Origin": SANDBOX, **bearer(token(signing_key, f"{BASE}{SIGN}"))})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") == SANDBOX
    refused = jwt_client.post(SIGN, json=_valid(), headers={"Origin": SANDBOX})
    assert refused.status_code == 401 and refused.headers.get("Access-Control-Allow-Origin") == SANDBOX
    other = jwt_client.options(SIGN, headers={"Origin": "https://evil.example.net",
                                              "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization,content-type"})
    assert other.headers.get("Access-Control-Allow-Origin") not in ("https://evil.example.net", "*")


# ==================================================================================================
# The fetch path when the server misbehaves (issue 4 items 3 and 4)
# ==================================================================================================

@pytest.fixture(scope="module")
def other_server() -> Iterator[FhirServer]:
    server = FhirServer()
    yield server
    server.close()


def _failing(fetch_client: FlaskClient, fhir_server: FhirServer, templates: dict[str, dict[str, str]],
             faults: dict[str, str], omit: tuple[str, ...]) -> Any:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources, faults=faults)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], omit=omit,
                        fhirServer=fhir_server.base)
    return fetch_client.post(SIGN, json=body), body


@pytest.mark.parametrize("fault", ["500", "401", "html"])
def test_medications_query_failing_is_a_data_note_not_silence(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                              templates: dict[str, dict[str, str]],
                                                              fault: str) -> None:
    response, body = _failing(fetch_client, fhir_server, templates, {"/MedicationRequest?": fault},
                              ("medications",))
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = check_response(response.get_json(), body)
    same_cards(ids(cards), table(ild=True, pl7=True, ro52=True))  # therapy unknown: none found
    detail = card(cards, "ivig-not-first-line")["detail"].lower()
    assert "could not be" in detail and "medication" in detail


def test_safety_labs_query_failing_is_a_data_note(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                  templates: dict[str, dict[str, str]]) -> None:
    response, body = _failing(fetch_client, fhir_server, templates, {"2160-0": "500"}, ("safetyLabs",))
    assert response.status_code == 200
    safety = card(check_response(response.get_json(), body), "ivig-safety")["detail"].lower()
    assert "renal function" in safety and "could not be" in safety


def test_every_required_query_failing_is_412(fetch_client: FlaskClient, fhir_server: FhirServer,
                                            templates: dict[str, dict[str, str]]) -> None:
    faults = {"/Condition?": "500", "/MedicationRequest?": "html", "loinc.org%7C11565-9": "500",
              "loinc.org|11565-9": "500"}
    response, _ = _failing(fetch_client, fhir_server, templates, faults, REQUIRED)
    oo_body(response, *REQUIRED)


def test_slow_server_is_abandoned_at_the_deadline(clean_env: None, tmp_path: Path, fhir_server: FhirServer,
                                                 templates: dict[str, dict[str, str]]) -> None:
    quick = make_app(tmp_path, FHIR_SERVERS=f"{fhir_server.base}/", FHIR_DEADLINE_S=0.5).test_client()
    started = time.perf_counter()
    response, body = _failing(quick, fhir_server, templates, {"2160-0": "sleep:4"}, ("safetyLabs",))
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert elapsed < 1.5, f"deadline 0.5 s, answered after {elapsed:.2f} s"
    safety = card(check_response(response.get_json(), body), "ivig-safety")["detail"].lower()
    assert "could not be" in safety


def test_redirect_off_the_allowed_server_is_not_followed(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                          other_server: FhirServer,
                                                          templates: dict[str, dict[str, str]]) -> None:
    other_server.reset([])
    response, _ = _failing(fetch_client, fhir_server, templates,
                           {"/Condition?": f"redirect:http://127.0.0.1:{other_server.httpd.server_address[1]}"},
                           ("conditions",))
    assert response.status_code in (200, 412)
    assert other_server.requests == []


def test_next_link_off_the_allowed_server_is_not_followed(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                          other_server: FhirServer,
                                                          templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    fhir_server.reset(record.resources)
    other_server.reset(record.resources)
    prefetch = _split_antibodies(record, templates["order-sign"])
    prefetch["myositisAntibodies"]["link"].append(
        {"relation": "next", "url": f"{other_server.base}/Observation?patient={record.pid}"})
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], prefetch=prefetch,
                        fhirServer=fhir_server.base)
    same_cards(ids(call(fetch_client, body)), table(ild=True, pl7=True))
    assert other_server.requests == []


def test_patient_id_with_dots_and_dashes_is_fetched_correctly(fetch_client: FlaskClient, fhir_server: FhirServer,
                                                              templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = jo1_tacrolimus_coordered()
    old = record.pid
    record.pid = "Acc.Pat-0042.x"
    record.patient["id"] = record.pid
    for resource in record.resources:
        if isinstance(resource.get("subject"), dict):
            resource["subject"] = {"reference": f"Patient/{record.pid}"}
    for d in drafts:
        d["subject"] = {"reference": f"Patient/{record.pid}"}
    assert old != record.pid
    fhir_server.reset(record.resources)
    body = hook_request("order-sign", record, drafts, templates=templates["order-sign"], with_prefetch=False,
                        fhirServer=fhir_server.base + "/")
    same_cards(ids(call(fetch_client, body)), expected)


# ==================================================================================================
# More facts from issue 3 item 3
# ==================================================================================================

def test_antibodies_as_components_of_a_panel(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-panel", "Petra", "Panel")
    record.obs("acc-panel-obs", concept(coding(LOCAL_LAB, "MYOPNL"), text="Myositis antibody panel (line blot)"),
               component=[
                   {"code": concept(coding(LOINC, "33772-5", "PL-7 Ab [Presence] in Serum")),
                    "valueCodeableConcept": POSITIVE_SNOMED},
                   {"code": concept(coding(LOINC, "53016-2")), "valueString": "Positive"},
                   {"code": concept(coding(LOINC, "8076-2")), "valueCodeableConcept": NEGATIVE_LOINC},
                   {"code": concept(coding(LOINC, "82424-3")), "valueString": "Negative"}])
    record.cond("acc-panel-ild", ILD_J8410)
    record.renal_ok()
    ivig = draft(record.pid, "acc-panel-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, pl7=True, ro52=True))


def test_local_codes_matched_by_alias_text(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-alias", "Aliya", "Lokal")
    record.obs("acc-alias-pl7", concept(coding(LOCAL_LAB, "X-77"), text="Anti-threonyl-tRNA synthetase Ab"),
               valueString="POSITIVE")
    record.obs("acc-alias-ro", concept(coding(LOCAL_LAB, "X-52"), text="TRIM21 antibody (SSA-52)"),
               valueString="Strongly positive")
    record.obs("acc-alias-mda", concept(coding(LOCAL_LAB, "X-140"), text="CADM-140 antibody, ELISA"),
               valueQuantity={"value": 92, "unit": "units"}, referenceRange=[{"high": {"value": 20}}])
    record.cond("acc-alias-ild", concept(coding("https://ehr.acceptance.example.net/problems", "P-9"),
                                         text="Rapidly progressive interstitial lung disease"))
    record.renal_ok()
    ivig = draft(record.pid, "acc-alias-ivig", concept(text="IVIG 0.4 g/kg/day x 5 days"))
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, pl7=True, ro52=True, mda5=True))


@pytest.mark.parametrize("clinical, verification, counts", [
    ("active", "provisional", True),
    ("active", "differential", True),
    ("relapse", "confirmed", True),
    ("remission", "confirmed", False),
    ("inactive", "confirmed", False),
    (None, None, True),
])
def test_condition_statuses(client: FlaskClient, templates: dict[str, dict[str, str]], clinical: str | None,
                            verification: str | None, counts: bool) -> None:
    record = Record(f"acc-st-{clinical}-{verification}")
    record.obs(f"{record.pid}-jo1", concept(coding(LOINC, "8076-2")), valueCodeableConcept=POSITIVE_SNOMED)
    record.cond(f"{record.pid}-ild", ILD_SNOMED, clinical=clinical, verification=verification)
    record.renal_ok()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(ild=counts, synthetase_positive=True))


@pytest.mark.parametrize("name, add, finding", [
    ("dvt-history-resolved", lambda r: r.cond("acc-x-c", concept(coding(SNOMED, "161508001")), clinical="resolved"),
     True),
    ("vte-refuted", lambda r: r.cond("acc-x-c", concept(coding(ICD10CM, "Z86.718")), verification="refuted"), False),
    ("heart-failure-resolved", lambda r: r.cond("acc-x-c", concept(coding(ICD10CM, "I50.9")), clinical="resolved"),
     False),
    ("iga-50-no-comparator", lambda r: r.obs("acc-x-o", concept(coding(LOINC, "2458-8")),
                                             valueQuantity={"value": 50, "unit": "mg/dL"},
                                             referenceRange=[{"low": {"value": 70}, "high": {"value": 400}}]),
     "critical"),
    ("iga-normal", lambda r: r.obs("acc-x-o", concept(coding(LOINC, "2458-8")),
                                   valueQuantity={"value": 180, "unit": "mg/dL"},
                                   referenceRange=[{"low": {"value": 70}, "high": {"value": 400}}]), False),
    ("egfr-exactly-60", lambda r: r.obs("acc-x-o", concept(coding(LOINC, "98979-8")), days=1,
                                        valueQuantity={"value": 60, "unit": "mL/min/1.73m2"}), False),
    ("egfr-greater-than-60", lambda r: r.obs("acc-x-o", concept(coding(LOINC, "98979-8")), days=1,
                                             valueQuantity={"value": 60, "comparator": ">",
                                                            "unit": "mL/min/1.73m2"}), False),
    ("plasma-exchange-order-active", lambda r: r.add(
        {"resourceType": "ServiceRequest", "id": "acc-x-sr", "status": "active", "intent": "order",
         "subject": r.subject, "code": concept(coding(CPT, "36514"))}), True),
    ("plasma-exchange-order-completed", lambda r: r.add(
        {"resourceType": "ServiceRequest", "id": "acc-x-sr", "status": "completed", "intent": "order",
         "subject": r.subject, "code": concept(coding(CPT, "36514"))}), False),
    ("plasma-exchange-in-progress", lambda r: r.add(
        {"resourceType": "Procedure", "id": "acc-x-pr", "status": "in-progress", "subject": r.subject,
         "code": concept(coding(CPT, "36514")), "performedPeriod": {"start": ago_dt(1)}}), True),
])
def test_more_safety_findings(client: FlaskClient, templates: dict[str, dict[str, str]], name: str,
                              add: Callable[[Record], Any], finding: Any) -> None:
    record = _in_scope_on_therapy(f"acc-x-{name}")
    record.renal_ok(days=3)
    add(record)
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    safety = ("warning" if finding is True else finding) or None
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(**ON_THERAPY, safety=safety))


@pytest.mark.parametrize("name, add, counts", [
    ("rituximab-contained", lambda r: r.med_request(
        "acc-f-m", None, status="active", medicationCodeableConcept=None,
        medicationReference={"reference": "#rtx"},
        contained=[{"resourceType": "Medication", "id": "rtx", "code": concept(coding(RXNORM, "121191"))}]), True),
    ("statement-not-taken", lambda r: r.med_statement("acc-f-m", concept(text="CellCept 500 mg"),
                                                      status="not-taken", days=20), False),
    ("statement-entered-in-error", lambda r: r.med_statement("acc-f-m", PREDNISONE, status="entered-in-error"),
     False),
    ("topical-tacrolimus", lambda r: r.med_request("acc-f-m", concept(text="Tacrolimus 0.1% ointment"),
                                                   status="active"), False),
    ("azathioprine-brand", lambda r: r.med_request("acc-f-m", concept(text="Imuran 50 mg tablet"),
                                                   status="active"), True),
])
def test_more_first_line_readings(client: FlaskClient, templates: dict[str, dict[str, str]], name: str,
                                  add: Callable[[Record], Any], counts: bool) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    resource = add(record)
    if resource.get("medicationCodeableConcept") is None:
        resource.pop("medicationCodeableConcept", None)
    got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True, ro52=True, first_line=counts))


@pytest.mark.parametrize("first, last, days, decline", [(80, 70, 89, True), (80, 71, 30, False),
                                                        (80, 65, 95, False), (80, 70, 90, True),
                                                        (80, 60, 91, False)])
def test_fvc_decline_threshold_and_window(client: FlaskClient, templates: dict[str, dict[str, str]], first: int,
                                          last: int, days: int, decline: bool) -> None:
    record = Record(f"acc-fvc-{first}-{last}-{days}")
    record.obs(f"{record.pid}-pl12", concept(coding(LOINC, "33771-7")), valueString="Positive")
    record.cond(f"{record.pid}-ild", ILD_SNOMED)
    fvc_pct = concept(coding(LOINC, "19872-1", "FVC measured/predicted"))
    record.obs(f"{record.pid}-a", fvc_pct, days=days + 1, lab=False, valueQuantity={"value": first, "unit": "%"})
    record.obs(f"{record.pid}-b", fvc_pct, days=1, lab=False, valueQuantity={"value": last, "unit": "%"})
    record.renal_ok()
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, synthetase_positive=True))
    assert (f"Observation/{record.pid}-b" in card(cards, "ivig-not-first-line")["detail"]) is decline


def test_order_sign_ignores_selections_and_considers_every_draft(client: FlaskClient,
                                                                 templates: dict[str, dict[str, str]]) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    other = draft(record.pid, "acc-sign-amlo", AMLODIPINE)
    body = hook_request("order-sign", record, [other, drafts[0]], templates=templates["order-sign"])
    body["context"]["selections"] = ["MedicationRequest/acc-sign-amlo"]
    same_cards(ids(call(client, body)), expected)


def test_fast_path_does_not_read_prefetch(client: FlaskClient) -> None:
    body = _valid("order-select")
    body["prefetch"] = {"conditions": {"resourceType": 7, "entry": "x"}, "medications": {"entry": {"a": 1}},
                        "myositisAntibodies": {"resourceType": "OperationOutcome"}}
    assert call(client, body) == []


def test_health_endpoints(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.mimetype == "application/json"


def test_cors_on_other_routes(jwt_client: FlaskClient) -> None:
    for path in ("/healthz", "/openapi.json"):
        response = jwt_client.get(path, headers={"Origin": SANDBOX})
        assert response.status_code == 200
        assert response.headers.get("Access-Control-Allow-Origin") == SANDBOX


def test_no_patient_data_or_token_in_logs(fetch_client: FlaskClient, fhir_server: FhirServer,
                                          templates: dict[str, dict[str, str]],
                                          caplog: pytest.LogCaptureFixture) -> None:
    record = Record("acc-phi-Q7Z", "Philippa", "Geheimnisvoll")
    record.obs("acc-phi-Q7Z-pl7", concept(coding(LOINC, "33772-5"), text="PL-7 for Philippa Geheimnisvoll"),
               valueString="Positive")
    record.cond("acc-phi-Q7Z-ild", concept(coding(SNOMED, "233703007"), text="ILD (Geheimnisvoll family)"))
    record.renal_ok()
    ivig = draft(record.pid, "acc-phi-Q7Z-ivig", PRIVIGEN_NDC11)
    fhir_server.reset(record.resources, faults={"/Procedure?": "500"})
    caplog.set_level("DEBUG")
    for hook in HOOKS:
        body = hook_request(hook, record, [ivig], templates=templates[hook], with_prefetch=False,
                            fhirServer=fhir_server.base,
                            fhirAuthorization={"access_token": "acc-phi-token-8c1e", "token_type": "Bearer",
                                               "expires_in": 60, "scope": "patient/*.read", "subject": "c"})
        same_cards(ids(call(fetch_client, body)), table(ild=True, pl7=True))
        bad = dict(body, hookInstance="acc-phi-Q7Z Geheimnisvoll")
        assert fetch_client.post(PATHS[hook], json=bad).status_code == 400
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert caplog.records
    for secret in ("acc-phi-Q7Z", "Geheimnisvoll", "Philippa", "acc-phi-token-8c1e", "1968-04-09"):
        assert secret not in text, f"{secret} was logged"


# ==================================================================================================
# Time windows of issue 3 ("within the last N days" includes day N)
# ==================================================================================================

def _plain_date_obs(record: Record, oid: str, code: str, days: int, value: float) -> None:
    record.add({"resourceType": "Observation", "id": oid, "status": "final", "subject": record.subject,
                "category": copy.deepcopy(LAB_CATEGORY), "code": concept(coding(LOINC, code)),
                "effectiveDateTime": ago(days), "valueQuantity": {"value": value, "unit": "x"}})


@pytest.mark.parametrize("days, finding", [(30, False), (31, True)])
def test_renal_labs_recent_window(client: FlaskClient, templates: dict[str, dict[str, str]], days: int,
                                  finding: bool) -> None:
    record = _in_scope_on_therapy(f"acc-w30-{days}")
    _plain_date_obs(record, f"{record.pid}-egfr", "98979-8", days, 88)
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(**ON_THERAPY, safety="warning" if finding else None))


@pytest.mark.parametrize("days, finding", [(90, True), (91, False)])
def test_low_egfr_window(client: FlaskClient, templates: dict[str, dict[str, str]], days: int,
                         finding: bool) -> None:
    record = _in_scope_on_therapy(f"acc-w90-{days}")
    _plain_date_obs(record, f"{record.pid}-egfr", "98979-8", days, 41)
    _plain_date_obs(record, f"{record.pid}-crea", "2160-0", 2, 0.9)  # recent and unflagged
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(**ON_THERAPY, safety="warning" if finding else None))


@pytest.mark.parametrize("days, counts", [(180, True), (181, False)])
def test_first_line_window(client: FlaskClient, templates: dict[str, dict[str, str]], days: int,
                           counts: bool) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    record.med_request("acc-pl7-q-aza", concept(coding(RXNORM, "1256")), status="completed", days=days)
    got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True, ro52=True, first_line=counts))


@pytest.mark.parametrize("days, finding", [(7, True), (8, False)])
def test_plasma_exchange_recent_window(client: FlaskClient, templates: dict[str, dict[str, str]], days: int,
                                       finding: bool) -> None:
    record = _in_scope_on_therapy(f"acc-w7-{days}")
    record.renal_ok()
    record.add({"resourceType": "Procedure", "id": f"{record.pid}-plex", "status": "completed",
                "subject": record.subject, "code": concept(coding(CPT, "36514")), "performedDateTime": ago(days)})
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(**ON_THERAPY, safety="warning" if finding else None))


def test_openapi_describes_the_endpoints(client: FlaskClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert str(doc.get("openapi", "")).startswith("3.1")
    paths = " ".join(doc["paths"])
    assert "/cds-services" in doc["paths"] and "feedback" in paths


# ==================================================================================================
# Defects found by this file, now fixed (kept as regression tests)
# ==================================================================================================

@pytest.mark.parametrize("unit, code, kg", [("pound (US and British)", "[lb_av]", "69.9"), ("lbs.", "[lb_av]", "69.9"),
                                            ("kgs", "kg", "70.2")])
def test_weight_unit_from_the_ucum_code(client: FlaskClient, templates: dict[str, dict[str, str]], unit: str,
                                        code: str, kg: str) -> None:
    record, drafts, expected = jo1_tacrolimus_coordered()
    value = 154 if code == "[lb_av]" else 70.2
    record.obs("acc-jo1-tac-wt2", concept(coding(LOINC, "29463-7", "Body weight")), days=2, lab=False,
               valueQuantity={"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": code})
    cards = call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    same_cards(ids(cards), expected)
    assert f"{kg} kg" in card(cards, "ivig-adjunct-in-context")["detail"]


@pytest.mark.parametrize("system, code", [(SNOMED, "260373001"), (LOINC, "LA11882-0")])
def test_detected_answer_codes_are_positive(client: FlaskClient, templates: dict[str, dict[str, str]], system: str,
                                            code: str) -> None:
    record = _asys_ild_record(f"acc-det-{code}", {"code": concept(coding(LOINC, "33772-5")),
                                                  "valueCodeableConcept": concept(coding(system, code))})
    ivig = draft(record.pid, f"{record.pid}-ivig", PRIVIGEN_NDC11)
    got = ids(call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True))


@pytest.mark.parametrize("bad_id", ["absent", []])
def test_delete_suggestion_only_names_real_draft_orders(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                        bad_id: Any) -> None:
    record, drafts, expected = pl7_quantity_ro52_lineblot()
    if bad_id == "absent":
        del drafts[0]["id"]
    else:
        drafts[0]["id"] = bad_id
    cards = call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"]))
    same_cards(ids(cards), expected)  # still an IVIG order: the cards stay, only the delete cannot be offered


def test_fvc_percent_unit_from_the_ucum_code(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record = Record("acc-fvc-ucum")
    record.obs("acc-fvc-ucum-pl12", concept(coding(LOINC, "33771-7")), valueString="Positive")
    record.cond("acc-fvc-ucum-ild", ILD_SNOMED)
    for oid, days, value in (("acc-fvc-ucum-a", 50, 82), ("acc-fvc-ucum-b", 2, 67)):
        record.obs(oid, concept(coding(LOINC, "19872-1")), days=days, lab=False,
                   valueQuantity={"value": value, "unit": "percent predicted", "system": "http://unitsofmeasure.org",
                                  "code": "%"})
    record.renal_ok()
    ivig = draft(record.pid, "acc-fvc-ucum-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, synthetase_positive=True))
    assert "Observation/acc-fvc-ucum-b" in card(cards, "ivig-not-first-line")["detail"]


def test_no_renal_labs_at_all_is_a_safety_finding(client: FlaskClient, templates: dict[str, dict[str, str]]) -> None:
    record, drafts, _ = pl7_quantity_ro52_lineblot()
    record.resources = [r for r in record.resources if r["id"] not in ("acc-pl7-q-egfr", "acc-pl7-q-crea")]
    got = ids(call(client, hook_request("order-sign", record, drafts, templates=templates["order-sign"])))
    same_cards(got, table(ild=True, pl7=True, ro52=True, safety="warning"))


@pytest.mark.parametrize("therapy, pulse", [
    ({"medicationCodeableConcept": concept(coding(RXNORM, "6902", "Methylprednisolone")),
      "dosageInstruction": [{"route": concept(coding(SNOMED, "47625008", "Intravenous route")),
                             "text": "1 g IV daily x 3 days"}]}, True),
    ({"medicationCodeableConcept": concept(text="Solu-Medrol 1,000 mg IVPB")}, True),
    ({"medicationCodeableConcept": PREDNISONE}, False),
])
def test_pulse_iv_methylprednisolone_is_flagged(client: FlaskClient, templates: dict[str, dict[str, str]],
                                                therapy: dict[str, Any], pulse: bool) -> None:
    """RP-ILD with first-line therapy: the adjunct card names pulse IV methylprednisolone as missing only when it
    is (issue 3 item 3: flag pulse IV methylprednisolone separately)."""
    record = Record("acc-pulse")
    record.obs("acc-pulse-jo1", concept(coding(LOINC, "8076-2")), valueCodeableConcept=POSITIVE_SNOMED)
    record.cond("acc-pulse-ild", concept(coding(SNOMED, "233703007"), text="Rapidly progressive ILD"))
    record.renal_ok()
    record.add({"resourceType": "MedicationRequest", "id": "acc-pulse-mp", "status": "completed", "intent": "order",
                "subject": record.subject, "authoredOn": ago(12), **therapy})
    ivig = draft(record.pid, "acc-pulse-ivig", PRIVIGEN_NDC11)
    cards = call(client, hook_request("order-sign", record, [ivig], templates=templates["order-sign"]))
    same_cards(ids(cards), table(ild=True, synthetase_positive=True, first_line=True))
    detail = card(cards, "ivig-adjunct-in-context")["detail"].lower()
    assert ("no pulse iv methylprednisolone" in detail) is not pulse
