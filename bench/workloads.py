"""The requests the benchmark sends, built from the project's fixtures.

Every workload starts from a fixture in ``fixtures/`` and is turned into a CDS Hooks request with
``cds_service.devtools.fixtures.build_request`` (the same builder the tests and the demo use).  Larger
patients are the fixture ``pl7-ro52-rpild`` padded with filler that looks like a real chart but
that no rule reads:

- laboratory results: common chemistry/haematology panels under their ordinary LOINC codes, plus a
  few results under a local lab code system (matched by text, the way local-coded labs are);
- problem-list Conditions under ordinary ICD-10-CM codes, some resolved;
- MedicationRequests under a local formulary code system, some completed or stopped;
- for the large and scaling patients, a handful of older repeats of the patient's own antibody and
  safety results (older than the ones the rules use, so they change no answer).

None of these codes is in a value set under ``cards/valuesets`` (the benchmark checks that the cards
returned for a padded patient are the fixture's expected cards, so a filler that did match would
show up at once).  Filler is deterministic: the same sizes give the same bytes.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from cds_service.devtools.fixtures import build_request, load_fixture, record_resources, search, shift_dates
from cds_service.engine.services import default_services

JsonDict = dict[str, Any]

HOOK = "order-sign"
SERVICE_ID = "ivig-order-sign"
TYPICAL_FIXTURE = "pl7-ro52-rpild"
FAST_PATH_FIXTURE = "not-ivig-amoxicillin"

# The five keys the fallback scenario leaves out of prefetch (three of them required to decide).
FALLBACK_MISSING_KEYS = ("myositisAntibodies", "conditions", "medications", "safetyLabs", "pulmonaryFunction")

# Share of each resource type in the large prefetch (2,000 : 200 : 300), reused for the scaling sizes.
LARGE_OBSERVATIONS = 2000
LARGE_CONDITIONS = 200
LARGE_MEDICATIONS = 300
TYPICAL_PREFETCH_RESOURCES = 60
EXTRA_RELEVANT_RESULTS = 6

_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"
_ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
_LOCAL_LAB = "https://lab.bench-hospital.example.org/codes"
_LOCAL_FORMULARY = "https://pharmacy.bench-hospital.example.org/formulary"
_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_MED_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"


@dataclass(frozen=True)
class LabKind:
    system: str
    code: str
    display: str
    unit: str  # UCUM code, also shown
    low: float | None
    high: float | None
    typical: float


# Routine panels: none of these is an antibody, a safety lab (creatinine, eGFR, IgA, weight) or a
# pulmonary function test.
LAB_KINDS: tuple[LabKind, ...] = (
    LabKind(_LOINC, "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 15.5, 12.8),
    LabKind(_LOINC, "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 11.0, 7.1),
    LabKind(_LOINC, "777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 245),
    LabKind(_LOINC, "789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 3.9, 5.2, 4.4),
    LabKind(_LOINC, "4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 36, 46, 39),
    LabKind(_LOINC, "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 145, 139),
    LabKind(_LOINC, "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 4.2),
    LabKind(_LOINC, "2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107, 102),
    LabKind(_LOINC, "2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L",
            22, 29, 25),
    LabKind(_LOINC, "3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 14),
    LabKind(_LOINC, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 94),
    LabKind(_LOINC, "17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 8.6, 10.3, 9.3),
    LabKind(_LOINC, "1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 7, 35, 41),
    LabKind(_LOINC, "1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 10, 35, 52),
    LabKind(_LOINC, "6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 40, 130, 81),
    LabKind(_LOINC, "1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 0.1, 1.2, 0.5),
    LabKind(_LOINC, "1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 3.5, 5.0, 3.6),
    LabKind(_LOINC, "2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", 6.0, 8.3, 6.9),
    LabKind(_LOINC, "1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", None, 10, 14),
    LabKind(_LOINC, "2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 140, 280, 310),
    LabKind(_LOINC, "2157-6", "Creatine kinase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 26, 192, 640),
    LabKind(_LOINC, "2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL", 11, 307, 380),
    LabKind(_LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 5.6, 5.5),
    LabKind(_LOINC, "3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 0.4, 4.0, 1.9),
    LabKind(_LOINC, "6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 0.8, 1.2, 1.0),
    LabKind(_LOINC, "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", None, 200, 188),
    LabKind(_LOINC, "2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", None, 150, 131),
    # Local codes: these reach the service through the `laboratory` key and are matched by text.
    LabKind(_LOCAL_LAB, "MG", "Magnesium", "mg/dL", 1.7, 2.2, 2.0),
    LabKind(_LOCAL_LAB, "PHOS", "Phosphate", "mg/dL", 2.5, 4.5, 3.4),
    LabKind(_LOCAL_LAB, "URIC", "Uric acid", "mg/dL", 2.4, 6.0, 4.6),
    LabKind(_LOCAL_LAB, "LIPASE", "Lipase", "U/L", 10, 60, 31),
    LabKind(_LOCAL_LAB, "ALDOLASE", "Aldolase", "U/L", None, 7.6, 9.8),
)

# Problem-list entries unrelated to myositis, ILD, IVIG safety (no kidney, heart failure, VTE or IgA).
CONDITION_KINDS: tuple[tuple[str, str], ...] = (
    ("I10", "Essential (primary) hypertension"),
    ("M81.0", "Age-related osteoporosis without current pathological fracture"),
    ("E78.5", "Hyperlipidemia, unspecified"),
    ("K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("J30.9", "Allergic rhinitis, unspecified"),
    ("F41.1", "Generalized anxiety disorder"),
    ("E03.9", "Hypothyroidism, unspecified"),
    ("G47.33", "Obstructive sleep apnea (adult) (pediatric)"),
    ("E66.9", "Obesity, unspecified"),
    ("M81.0", "Age-related osteoporosis without current pathological fracture"),
    ("K59.00", "Constipation, unspecified"),
    ("H52.4", "Presbyopia"),
    ("M19.90", "Unspecified osteoarthritis, unspecified site"),
    ("R51.9", "Headache, unspecified"),
)

# Formulary items that are neither immunoglobulins nor first-line immunosuppressants.
MEDICATION_KINDS: tuple[tuple[str, str, str], ...] = (
    ("LISIN10", "Lisinopril 10 mg oral tablet", "10 mg orally once daily"),
    ("ATORV40", "Atorvastatin 40 mg oral tablet", "40 mg orally at bedtime"),
    ("METF500", "Metformin 500 mg oral tablet", "500 mg orally twice daily"),
    ("AMLO5", "Amlodipine 5 mg oral tablet", "5 mg orally once daily"),
    ("LEVO50", "Levothyroxine 50 mcg oral tablet", "50 mcg orally once daily"),
    ("PANTO40", "Pantoprazole 40 mg oral tablet", "40 mg orally once daily"),
    ("SERT50", "Sertraline 50 mg oral tablet", "50 mg orally once daily"),
    ("APAP500", "Acetaminophen 500 mg oral tablet", "1000 mg orally every 8 hours as needed"),
    ("CETIR10", "Cetirizine 10 mg oral tablet", "10 mg orally once daily"),
    ("VITD1000", "Cholecalciferol 1000 unit oral tablet", "1000 units orally once daily"),
    ("CACO3-500", "Calcium carbonate 500 mg oral tablet", "500 mg orally twice daily"),
    ("ALEN70", "Alendronate 70 mg oral tablet", "70 mg orally once weekly"),
    ("DOCU100", "Docusate 100 mg oral capsule", "100 mg orally twice daily"),
    ("PEG17", "Polyethylene glycol 3350 oral powder", "17 g orally once daily"),
    ("ONDA4", "Ondansetron 4 mg oral tablet", "4 mg orally every 8 hours as needed"),
    ("FAMO20", "Famotidine 20 mg oral tablet", "20 mg orally twice daily"),
    ("LOSAR50", "Losartan 50 mg oral tablet", "50 mg orally once daily"),
    ("METO25", "Metoprolol succinate 25 mg oral tablet", "25 mg orally once daily"),
    ("GABA300", "Gabapentin 300 mg oral capsule", "300 mg orally at bedtime"),
    ("ALBU-HFA", "Albuterol 90 mcg/actuation inhaler", "2 puffs inhaled every 4 hours as needed"),
)


# --------------------------------------------------------------------------------------------------
# Filler resources
# --------------------------------------------------------------------------------------------------

def card_ids(payload: Any) -> list[str]:
    """The card ids of a hook response body (the service's extension, else the source topic)."""
    ids: list[str] = []
    if isinstance(payload, dict):
        for card in payload.get("cards") or []:
            extension = (card.get("extension") or {}).get("org.example.ivig-cds") or {}
            topic = (card.get("source") or {}).get("topic") or {}
            ids.append(str(extension.get("cardId") or topic.get("code")))
    return ids


def _moment(base: date, days_back: int, minute_of_day: int) -> str:
    day = base - timedelta(days=days_back)
    return f"{day.isoformat()}T{minute_of_day // 60:02d}:{minute_of_day % 60:02d}:00-05:00"


def _quantity(value: float, unit: str) -> JsonDict:
    return {"value": value, "unit": unit, "system": _UCUM, "code": unit}


def filler_observation(index: int, patient_id: str, base: date, rng: random.Random) -> JsonDict:
    kind = LAB_KINDS[index % len(LAB_KINDS)]
    days_back = 1 + (index * 3) % 730
    value = round(kind.typical * rng.uniform(0.85, 1.15), 2)
    status = "final"
    roll = rng.random()
    if roll < 0.02:
        status = "preliminary"
    elif roll < 0.03:
        status = "cancelled"
    elif roll < 0.06:
        status = "amended"
    resource: JsonDict = {
        "resourceType": "Observation",
        "id": f"bench-lab-{index}",
        "meta": {"lastUpdated": _moment(base, days_back, 900)},
        "status": status,
        "category": [{"coding": [{"system": _OBS_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": [{"system": kind.system, "code": kind.code, "display": kind.display}],
                 "text": kind.display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": _moment(base, days_back, 480 + index % 120),
        "issued": _moment(base, days_back, 720 + index % 120),
        "performer": [{"display": "Bench Hospital Core Laboratory"}],
        "valueQuantity": _quantity(value, kind.unit),
    }
    if kind.high is not None:
        reference: JsonDict = {"high": _quantity(kind.high, kind.unit)}
        if kind.low is not None:
            reference["low"] = _quantity(kind.low, kind.unit)
        resource["referenceRange"] = [reference]
        flag = "H" if value > kind.high else "L" if kind.low is not None and value < kind.low else "N"
        resource["interpretation"] = [{"coding": [{"system": _INTERPRETATION, "code": flag}]}]
    return resource


def filler_condition(index: int, patient_id: str, base: date, rng: random.Random) -> JsonDict:
    code, display = CONDITION_KINDS[index % len(CONDITION_KINDS)]
    clinical = "active" if rng.random() < 0.6 else rng.choice(("resolved", "inactive"))
    days_back = 30 + (index * 17) % 3650
    return {
        "resourceType": "Condition",
        "id": f"bench-cond-{index}",
        "clinicalStatus": {"coding": [{"system": _COND_CLINICAL, "code": clinical}]},
        "verificationStatus": {"coding": [{"system": _COND_VERIFICATION, "code": "confirmed"}]},
        "category": [{"coding": [{"system": _COND_CATEGORY, "code": "problem-list-item",
                                  "display": "Problem List Item"}]}],
        "code": {"coding": [{"system": _ICD10CM, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "onsetDateTime": (base - timedelta(days=days_back + 60)).isoformat(),
        "recordedDate": _moment(base, days_back, 600 + index % 300),
    }


def filler_medication(index: int, patient_id: str, base: date, rng: random.Random) -> JsonDict:
    code, display, sig = MEDICATION_KINDS[index % len(MEDICATION_KINDS)]
    status = "active" if rng.random() < 0.4 else rng.choice(("completed", "stopped"))
    days_back = 1 + (index * 11) % 1460
    return {
        "resourceType": "MedicationRequest",
        "id": f"bench-med-{index}",
        "status": status,
        "intent": "order",
        "category": [{"coding": [{"system": _MED_CATEGORY, "code": "outpatient", "display": "Outpatient"}]}],
        "medicationCodeableConcept": {
            "coding": [{"system": _LOCAL_FORMULARY, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": _moment(base, days_back, 540 + index % 240),
        "requester": {"reference": "Practitioner/bench-dr-7"},
        "dosageInstruction": [{"text": sig, "route": {"text": "Oral"}}],
    }


# --------------------------------------------------------------------------------------------------
# Padded patients
# --------------------------------------------------------------------------------------------------

def _counts(resources: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for resource in resources:
        rtype = str(resource.get("resourceType"))
        counts[rtype] = counts.get(rtype, 0) + 1
    return counts


def _older_repeats(fixture: Mapping[str, Any], count: int) -> list[JsonDict]:
    """Older copies of the patient's own antibody and safety results (never the newest, so no
    decision changes): they make the large patient carry more than one result per test."""
    if count <= 0:
        return []
    templates = default_services()[SERVICE_ID].prefetch
    patient_id = str(fixture["patientId"])
    resources = record_resources(fixture)
    originals: list[JsonDict] = []
    for key in ("myositisAntibodies", "safetyLabs"):
        url = templates[key].replace("{{context.patientId}}", patient_id)
        bundle = search(resources, url) or {}
        originals.extend(e["resource"] for e in bundle.get("entry", []))
    repeats: list[JsonDict] = []
    for index in range(count):
        if not originals:
            break
        original = originals[index % len(originals)]
        repeat: JsonDict = shift_dates(original, -(180 + 90 * (index // len(originals))))
        repeat["id"] = f"bench-repeat-{index}-{original.get('id')}"
        repeats.append(repeat)
    return repeats


def padded_fixture(fixture: Mapping[str, Any], *, observations: int, conditions: int, medications: int,
                   extra_relevant: int = 0, seed: int = 7) -> JsonDict:
    """The fixture with filler added until its record holds (at least) the given number of
    Observations, Conditions and MedicationRequests (the fixture's own resources count too)."""
    padded: JsonDict = copy.deepcopy(dict(fixture))
    entries: list[JsonDict] = padded["record"]["entry"]
    patient_id = str(fixture["patientId"])
    base = date.fromisoformat(str(fixture["today"]))
    rng = random.Random(seed)
    for repeat in _older_repeats(fixture, extra_relevant):
        entries.append({"resource": repeat})
    have = _counts(record_resources(padded))
    makers = (("Observation", observations, filler_observation),
              ("Condition", conditions, filler_condition),
              ("MedicationRequest", medications, filler_medication))
    for rtype, wanted, make in makers:
        for index in range(max(0, wanted - have.get(rtype, 0))):
            entries.append({"resource": make(index, patient_id, base, rng)})
    padded["description"] = (f"{fixture.get('description', '')} Padded by bench/workloads.py to "
                             f"{observations} Observations, {conditions} Conditions, "
                             f"{medications} MedicationRequests.")
    return padded


def mix_for(size: int) -> tuple[int, int, int]:
    """(Observations, Conditions, MedicationRequests) for a prefetch of ``size`` resources in the
    proportions of the large prefetch (plus one Patient)."""
    total = LARGE_OBSERVATIONS + LARGE_CONDITIONS + LARGE_MEDICATIONS
    observations = round((size - 1) * LARGE_OBSERVATIONS / total)
    conditions = round((size - 1) * LARGE_CONDITIONS / total)
    return observations, conditions, size - 1 - observations - conditions


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------

@dataclass
class Workload:
    """One request body and what the service should answer to it."""

    name: str
    description: str
    service_id: str
    body: bytes
    expected_cards: list[str]
    prefetch_resources: int  # distinct resources over all prefetch keys
    prefetch_entries: int  # entries over all keys (a resource in two keys counts twice)
    record_counts: dict[str, int] = field(default_factory=dict)
    missing_keys: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"/cds-services/{self.service_id}"

    @property
    def body_kib(self) -> float:
        return len(self.body) / 1024


def uncapped_templates() -> dict[str, str]:
    """The service's prefetch templates without the ``_count`` cap on ``laboratory``, so that a
    large record arrives in one prefetched Bundle (no next link to page through)."""
    templates = dict(default_services()[SERVICE_ID].prefetch)
    return {key: template.replace("&_count=1000", "") for key, template in templates.items()}


def _prefetch_sizes(request: Mapping[str, Any]) -> tuple[int, int]:
    seen: set[tuple[str, str]] = set()
    entries = 0
    for value in (request.get("prefetch") or {}).values():
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") == "Bundle":
            resources = [e.get("resource") for e in value.get("entry", []) if isinstance(e, dict)]
        else:
            resources = [value]
        for resource in resources:
            if isinstance(resource, dict):
                entries += 1
                seen.add((str(resource.get("resourceType")), str(resource.get("id"))))
    return len(seen), entries


def make_workload(name: str, description: str, fixture: Mapping[str, Any], *,
                  templates: Mapping[str, str] | None = None,
                  prefetch: bool | Sequence[str] = True,
                  fhir_server: str | None = None) -> Workload:
    request = build_request(fixture, HOOK, templates=templates, prefetch=prefetch, fhir_server=fhir_server)
    distinct, entries = _prefetch_sizes(request)
    expected = list((fixture.get("expected") or {}).get(HOOK) or [])
    missing: tuple[str, ...] = ()
    if not isinstance(prefetch, bool):
        missing = tuple(k for k in default_services()[SERVICE_ID].prefetch if k not in set(prefetch))
    return Workload(name=name, description=description, service_id=SERVICE_ID,
                    body=json.dumps(request).encode("utf-8"), expected_cards=expected,
                    prefetch_resources=distinct, prefetch_entries=entries,
                    record_counts=_counts(record_resources(fixture)), missing_keys=missing)


def fast_path() -> Workload:
    fixture = load_fixture(FAST_PATH_FIXTURE)
    return make_workload("fast-path", f"non-IVIG order (fixture {FAST_PATH_FIXTURE}), full prefetch", fixture)


def typical_fixture() -> JsonDict:
    fixture = load_fixture(TYPICAL_FIXTURE)
    have = _counts(r for r in record_resources(fixture) if r.get("resourceType") != "Encounter")
    labs_needed = TYPICAL_PREFETCH_RESOURCES - sum(have.values())
    return padded_fixture(fixture, observations=have.get("Observation", 0) + max(0, labs_needed),
                          conditions=have.get("Condition", 0), medications=have.get("MedicationRequest", 0))


def typical() -> Workload:
    return make_workload("typical", f"IVIG order, fixture {TYPICAL_FIXTURE} padded with routine labs",
                         typical_fixture())


def large(scale: float = 1.0) -> Workload:
    """The large prefetch; ``scale`` < 1 shrinks it (the smoke test's tiny mode only)."""
    observations = max(20, round(LARGE_OBSERVATIONS * scale))
    conditions = max(3, round(LARGE_CONDITIONS * scale))
    medications = max(3, round(LARGE_MEDICATIONS * scale))
    fixture = padded_fixture(load_fixture(TYPICAL_FIXTURE), observations=observations,
                             conditions=conditions, medications=medications,
                             extra_relevant=EXTRA_RELEVANT_RESULTS)
    return make_workload("large", f"IVIG order, fixture {TYPICAL_FIXTURE} padded to {observations} "
                         f"Observations / {conditions} Conditions / {medications} MedicationRequests",
                         fixture, templates=uncapped_templates())


def scaling(size: int) -> Workload:
    observations, conditions, medications = mix_for(size)
    fixture = padded_fixture(load_fixture(TYPICAL_FIXTURE), observations=observations, conditions=conditions,
                             medications=medications,
                             extra_relevant=min(EXTRA_RELEVANT_RESULTS, max(0, observations - 20)))
    return make_workload(f"scaling-{size}", f"IVIG order, {size} prefetched resources "
                         f"({observations} Obs / {conditions} Cond / {medications} MedReq + Patient)",
                         fixture, templates=uncapped_templates())


def body_size(kind: str, extra: int) -> Workload:
    """The body-size series (issue 16): the fast-path (``kind`` "fast") or the typical IVIG ("ivig")
    fixture with ``extra`` routine Observations added to its record, the whole record prefetched."""
    name = FAST_PATH_FIXTURE if kind == "fast" else TYPICAL_FIXTURE
    fixture = load_fixture(name)
    have = _counts(record_resources(fixture))
    padded = padded_fixture(fixture, observations=have.get("Observation", 0) + extra,
                            conditions=have.get("Condition", 0), medications=have.get("MedicationRequest", 0))
    what = "non-IVIG order" if kind == "fast" else "IVIG order"
    return make_workload(f"{kind}+{extra}", f"{what} (fixture {name}) + {extra:,} Observations", padded,
                         templates=uncapped_templates())


def fallback(fhir_server: str) -> Workload:
    """The typical patient with five keys left out of prefetch: the service fetches them."""
    keep = [k for k in default_services()[SERVICE_ID].prefetch if k not in FALLBACK_MISSING_KEYS]
    return make_workload("fallback", "typical IVIG call with five prefetch keys missing "
                         f"({', '.join(FALLBACK_MISSING_KEYS)})", typical_fixture(),
                         prefetch=keep, fhir_server=fhir_server)
