"""Builders and checks shared by the acceptance tests, written from the issue texts and the CDS
Hooks 2.0 spec, not from the code.

Every patient is built from scratch (ids ``acc-…``, names, codes and shapes that the shipped
fixtures do not use). The expected card ids come from the rules table of issue 3 by ``table()``,
from facts declared by hand for each patient; the service's own fact extractor, fixture builder
and search helper are deliberately not used (``search`` here is independent). Everything goes
through the public HTTP surface: the Flask test client, plus a loopback FHIR server
(``acceptance.ehr``) for the fetch path.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

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
VALUESETS = Path(__file__).resolve().parents[2] / "cards" / "valuesets"

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
          safety: str | None = None, rp_ild: bool = False) -> list[tuple[str, str]]:
    """(card id, indicator) expected for an in-scope IVIG order, in critical > warning > info order.

    ``synthetase_positive``: Jo-1, PL-7, PL-12, EJ or OJ positive (any strength; equivocal is not).
    ``safety``: None (no safety finding), "warning" or "critical" (IgA deficiency).
    ``rp_ild``: rapidly progressive ILD (coded, or the FVC decline rule): the PL-7 + Ro52 phenotype
    needs it (issue 12); ``pl7``/``ro52`` mean positive, not only weakly.
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
    if pl7 and ro52 and ild and rp_ild:
        cards.append(("asys-high-risk-phenotype", "warning"))
    if mda5 and ild:
        # a warning when no first-line immunosuppression is on record or co-ordered (issue 12)
        cards.append(("mda5-ild-ivig-adjunct", "info" if first_line else "warning"))
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
            owner = r.get("subject") or r.get("patient")  # AllergyIntolerance and Device name `patient`
            ref = owner.get("reference") if isinstance(owner, dict) else None
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

def no_empty(value: Any, path: str) -> None:
    assert value is not None, f"null at {path}"
    if isinstance(value, str):
        assert value != "", f"empty string at {path}"
    elif isinstance(value, list):
        assert value, f"empty array at {path}"
        for i, item in enumerate(value):
            no_empty(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        assert value, f"empty object at {path}"
        for key, item in value.items():
            no_empty(item, f"{path}.{key}")


def _absolute(url: Any) -> bool:
    return isinstance(url, str) and re.match(r"^https?://[^/\s]+", url) is not None


def check_response(body: Any, request: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    assert isinstance(body, dict) and isinstance(body.get("cards"), list), body
    assert set(body) <= {"cards", "systemActions"}, set(body)
    for i, card in enumerate(body["cards"]):
        no_empty(card, f"$.cards[{i}]")
    if "systemActions" in body:
        no_empty(body["systemActions"], "$.systemActions")
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
# Apps, calls and the error answers
# ==================================================================================================

OPEN_APPS: list[Flask] = []  # closed when each test module ends (conftest._close_apps)


def new_app(tmp: Path, **config: Any) -> Flask:
    """An app with AUTH off, every card servable and SQLite under ``tmp``; ``config`` overrides."""
    settings = {"AUTH": "off", "PROFILE": "development",
                "CONTENT_POLICY": "all", "DATABASE_URL": f"sqlite:///{tmp}/db.sqlite3", **config}
    app = create_app(settings)
    app.testing = True
    OPEN_APPS.append(app)
    return app


def call(client: FlaskClient, body: dict[str, Any], path: str | None = None,
         status: int = 200) -> list[dict[str, Any]]:
    path = path or PATHS[body["hook"]]
    response = client.post(path, json=body)
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    assert response.mimetype == "application/json"
    return check_response(response.get_json(), body)


# Prefetch keys without which: 412 (issue 12 item 11: only conditions and antibodies decide a 412).
REQUIRED = ("myositisAntibodies", "conditions")


def oo_body(response: Any, *keys: str) -> dict[str, Any]:
    """A 412 whose OperationOutcome names each of ``keys``."""
    assert response.status_code == 412, response.get_data(as_text=True)[:500]
    assert response.mimetype in ("application/json", "application/fhir+json")
    body = response.get_json()
    OperationOutcome.model_validate(body)
    assert body["resourceType"] == "OperationOutcome"
    text = json.dumps(body)
    for key in keys:
        assert key in text, f"the 412 must name the missing key {key}: {text}"
    return body


def assert_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("detail"), str) and body["detail"]
    assert "Traceback" not in body["detail"]
    return body


def valid_request(hook: str = "order-sign") -> dict[str, Any]:
    """A valid request whose one draft is not IVIG, without prefetch: answered ``{"cards": []}``."""
    record = Record("acc-err")
    return hook_request(hook, record, [draft(record.pid, "acc-err-d", AMLODIPINE)], templates={},
                        with_prefetch=False)
