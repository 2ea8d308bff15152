"""The CDS services this server hosts, with prefetch templates generated from the value sets.

The code lists in the templates come from ``cards/valuesets/`` so that a reviewer who adds a
code to a value set changes both what is matched and what is prefetched, never one of the two.
Templates use only 2.0 context tokens and the query subset the spec recommends (type search,
token ``=``, ``_count``, ``_sort``), and no parameter is repeated (clients merge repeats).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from cds_service.clinical.safety import ALLERGIES_KEY, DEVICES_KEY
from cds_service.terminology import Terminology

ANTIBODY_SETS = ("antibody-jo1", "antibody-pl7", "antibody-pl12", "antibody-ej", "antibody-oj",
                 "antibody-ro52", "antibody-mda5", "antibody-other-myositis")
SAFETY_LAB_SETS = ("lab-creatinine", "lab-egfr", "lab-iga", "lab-weight")
PULMONARY_SETS = ("lab-fvc", "lab-fvc-pct", "lab-dlco", "lab-dlco-pct")

# Keys without which nothing can be decided: missing and unobtainable -> 412.
REQUIRED_KEYS = frozenset({"myositisAntibodies", "conditions"})


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    usage_requirements: str
    prefetch: dict[str, str] = field(default_factory=dict)
    required_keys: frozenset[str] = REQUIRED_KEYS

    def discovery_entry(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "usageRequirements": self.usage_requirements,
            "prefetch": dict(self.prefetch),
        }


def _codes(terminology: Terminology, set_ids: tuple[str, ...]) -> str:
    tokens: list[str] = []
    for set_id in set_ids:
        if set_id in terminology:
            for token in terminology[set_id].search_tokens():
                if token not in tokens:
                    tokens.append(token)
    return ",".join(tokens)


def prefetch_templates(terminology: Terminology) -> dict[str, str]:
    patient = "{{context.patientId}}"
    templates = {
        "patient": f"Patient/{patient}",
        "myositisAntibodies": f"Observation?patient={patient}&code={_codes(terminology, ANTIBODY_SETS)}",
        # Labs that carry only local codes are matched by text; they arrive through this key.
        "laboratory": f"Observation?patient={patient}&category=laboratory&_sort=-date&_count=1000",
        "conditions": f"Condition?patient={patient}",
        "medications": f"MedicationRequest?patient={patient}",
        "medicationStatements": f"MedicationStatement?patient={patient}",
        # Past IVIG courses given (administrations), counted over the last 12 months.
        "medicationAdministrations": f"MedicationAdministration?patient={patient}",
        "pregnancyStatus": f"Observation?patient={patient}"
                           f"&code={_codes(terminology, ('observation-pregnancy-status',))}&_sort=-date",
        "safetyLabs": f"Observation?patient={patient}&code={_codes(terminology, SAFETY_LAB_SETS)}"
                      "&_sort=-date",
        "pulmonaryFunction": f"Observation?patient={patient}&code={_codes(terminology, PULMONARY_SETS)}"
                             "&_sort=-date",
        "plasmaExchangeOrders": f"ServiceRequest?patient={patient}&status=active,draft,on-hold",
        "plasmaExchangeProcedures": f"Procedure?patient={patient}"
                                    f"&code={_codes(terminology, ('procedure-plasma-exchange',))}",
        # ivig-safety: hypersensitivity to immune globulin or blood products; indwelling catheters.
        ALLERGIES_KEY: f"AllergyIntolerance?patient={patient}",
        DEVICES_KEY: f"Device?patient={patient}",
    }
    return templates


# Titles and descriptions are integrator-facing protocol metadata, not clinical guidance.
_USAGE = ("Works best when the prefetch templates are honoured. Missing keys are fetched from "
          "fhirServer (with fhirAuthorization when given); without either, the service answers 412.")


def build_services(terminology: Terminology) -> dict[str, ServiceDefinition]:
    templates = prefetch_templates(terminology)
    services = [
        ServiceDefinition(
            id="ivig-order-select",
            hook="order-select",
            title="IVIG in antisynthetase-syndrome ILD (order-select)",
            description="When an intravenous immunoglobulin (IVIG) order is selected for a patient with "
                        "myositis-associated interstitial lung disease, returns guidance on its place as "
                        "an adjunct, monitoring and safety.",
            usage_requirements=_USAGE,
            prefetch=templates,
        ),
        ServiceDefinition(
            id="ivig-order-sign",
            hook="order-sign",
            title="IVIG in antisynthetase-syndrome ILD (order-sign)",
            description="When an intravenous immunoglobulin (IVIG) order is signed for a patient with "
                        "myositis-associated interstitial lung disease, returns guidance on its place as "
                        "an adjunct, monitoring and safety.",
            usage_requirements=_USAGE,
            prefetch=templates,
        ),
    ]
    return {s.id: s for s in services}


@functools.cache
def default_services() -> dict[str, ServiceDefinition]:
    """The services as built from the shipped value sets (fixtures, CLI, benchmarks)."""
    from cds_service.settings import DEFAULT_CARDS_DIR

    return build_services(Terminology.load(DEFAULT_CARDS_DIR / "valuesets"))


def __getattr__(name: str) -> Any:
    if name == "SERVICES":
        return default_services()
    raise AttributeError(name)
