"""The one contract between the rules and the card content: card ids, finding keys, fact keys and
template variables.

Rules (``clinical/rules.py``) produce these names; card files (``cards/*.md``) test and print them;
the content check and the review packet (``authoring/``) list them.  Every one of these names is
written here and nowhere else in Python — ``tests/test_contract.py`` fails on a string literal
equal to a finding key, a card id or a template variable anywhere else in ``cds_service/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class CardId(StrEnum):
    """Every card the rules can decide; each has ``cards/<id>.md``."""

    IVIG_NOT_FIRST_LINE = "ivig-not-first-line"
    IVIG_ADJUNCT_IN_CONTEXT = "ivig-adjunct-in-context"
    ASYS_HIGH_RISK_PHENOTYPE = "asys-high-risk-phenotype"
    MDA5_ILD_IVIG_ADJUNCT = "mda5-ild-ivig-adjunct"
    IVIG_SAFETY = "ivig-safety"
    ILD_MONITORING = "ild-monitoring"
    MYOSITIS_ANTIBODIES_MISSING = "myositis-antibodies-missing"


class Finding(StrEnum):
    """What a rule found; a card tests ``'<finding>' in findings`` to choose its wording."""

    # clinical context, shared by the treatment cards
    RP_ILD = "rp-ild"
    FVC_DECLINE = "fvc-decline"
    PULSE_METHYLPREDNISOLONE = "pulse-methylprednisolone"
    DYSPHAGIA = "dysphagia"
    MYOSITIS = "myositis"
    FIRST_LINE_ON_RECORD = "first-line-on-record"
    FIRST_LINE_CO_ORDERED = "first-line-co-ordered"
    NO_FIRST_LINE = "no-first-line"
    GLUCOCORTICOID_ONLY = "glucocorticoid-only"
    PREGNANCY = "pregnancy"
    PRIOR_IVIG = "prior-ivig"
    REPEATED_IVIG = "repeated-ivig"
    PFT_RECENT = "pft-recent"
    POSSIBLE_DIAGNOSIS = "possible-diagnosis"
    # ivig-safety
    EGFR_LOW = "egfr-low"
    CREATININE_HIGH = "creatinine-high"
    RENAL_NOT_RECENT = "renal-not-recent"
    RENAL_UNKNOWN = "renal-unknown"
    KIDNEY_DISEASE = "kidney-disease"
    VTE_HISTORY = "vte-history"
    IGA_DEFICIENCY = "iga-deficiency"
    HEART_FAILURE = "heart-failure"
    PLASMA_EXCHANGE = "plasma-exchange"
    ACUTE_VTE = "acute-vte"
    ANTI_IGA_ANTIBODIES = "anti-iga-antibodies"
    IG_HYPERSENSITIVITY = "ig-hypersensitivity"
    #: IgA below the lab's range but at or above the selective-deficiency level: a fact, fires nothing alone.
    IGA_BELOW_RANGE = "iga-below-range"
    # predisposing factors the boxed warning names (info unless a warning finding is present)
    ADVANCED_AGE = "advanced-age"
    DIABETES = "diabetes"
    ESTROGEN = "estrogen"
    CENTRAL_VENOUS_CATHETER = "central-venous-catheter"
    HYPERVISCOSITY = "hyperviscosity"
    #: Data only ivig-safety reads (allergies, devices, plasma exchange) could not be retrieved.
    SAFETY_DATA_UNAVAILABLE = "safety-data-unavailable"


class Antibody(StrEnum):
    """Myositis antibodies the rules read (value set ``antibody-<name>``)."""

    JO1 = "jo1"
    PL7 = "pl7"
    PL12 = "pl12"
    EJ = "ej"
    OJ = "oj"
    RO52 = "ro52"
    MDA5 = "mda5"

    @property
    def value_set(self) -> str:
        return f"antibody-{self.value}"


#: Anti-aminoacyl-tRNA-synthetase antibodies: one positive defines antisynthetase syndrome in a
#: patient with ILD or myositis.
SYNTHETASE_ANTIBODIES = (Antibody.JO1, Antibody.PL7, Antibody.PL12, Antibody.EJ, Antibody.OJ)


class ConditionKey(StrEnum):
    """Condition groups read from the record (value set ``condition-<name with - for _>``)."""

    ASYS = "asys"
    ILD = "ild"
    RP_ILD = "rp_ild"
    MYOSITIS = "myositis"
    DYSPHAGIA = "dysphagia"
    VTE_HISTORY = "vte_history"
    IGA_DEFICIENCY = "iga_deficiency"
    KIDNEY_DISEASE = "kidney_disease"
    HEART_FAILURE = "heart_failure"
    PREGNANCY = "pregnancy"
    IPF = "ipf"
    DIABETES = "diabetes"
    HYPERVISCOSITY = "hyperviscosity"
    CENTRAL_VENOUS_CATHETER = "central_venous_catheter"

    @property
    def value_set(self) -> str:
        return "condition-" + self.value.replace("_", "-")


#: What an indication (of the IVIG order, of a glucocorticoid) must name to be in the clinical scope,
#: and the diagnoses whose "possible" entries the treatment cards list.
SCOPE_CONDITIONS = (ConditionKey.ASYS, ConditionKey.ILD, ConditionKey.RP_ILD, ConditionKey.MYOSITIS)


class LabKey(StrEnum):
    """Safety labs and body weight (value set ``lab-<name>``)."""

    EGFR = "egfr"
    CREATININE = "creatinine"
    IGA = "iga"
    WEIGHT = "weight"

    @property
    def value_set(self) -> str:
        return f"lab-{self.value}"


class PftKey(StrEnum):
    """Pulmonary function results in % predicted (value set ``lab-<name with - for _>``)."""

    FVC_PCT = "fvc_pct"
    DLCO_PCT = "dlco_pct"

    @property
    def value_set(self) -> str:
        return "lab-" + self.value.replace("_", "-")


@dataclass(frozen=True)
class LabView:
    """A lab value as a template sees it."""

    value: float
    unit: str
    text: str
    date: str | None
    flag: str | None
    reference: str


@dataclass(frozen=True)
class AntibodyView:
    """An antibody as a template sees it: ``antibodies.pl7.status`` (``unknown`` when no result)."""

    label: str
    status: str
    date: str | None
    reference: str | None


@dataclass(frozen=True)
class ProductView:
    """What the ordered product's prescribing information says (``cards/clinical-parameters.yaml``
    ``products``); None in a template when the product is not one of them."""

    key: str
    name: str
    reference: str
    iga_content: str | None = None
    stabiliser: str | None = None
    sucrose_free: bool = False
    infusion_rate: str | None = None


@dataclass(frozen=True)
class TemplateVariables:
    """The patient values a card's summary, body and suggestions may use (set by the rules)."""

    weight_kg: float | None = None
    weight_date: str | None = None
    order_display: str = ""
    order_reference: str = ""
    order_references: list[str] = field(default_factory=list)
    antibodies: dict[str, AntibodyView] = field(default_factory=dict)
    egfr: LabView | None = None
    creatinine: LabView | None = None
    iga: LabView | None = None
    therapy: list[str] = field(default_factory=list)
    #: A weight found but older than the dosing window: shown, never used for a dose.
    weight_found_kg: float | None = None
    weight_found_date: str | None = None
    #: IVIG courses (requests or administrations other than this order) in the last 12 months.
    prior_ivig_courses: int = 0
    prior_ivig_last_date: str | None = None
    #: Age in whole years on the day of the call (None when the birth date is unknown).
    age_years: int | None = None
    #: The IVIG product ordered, when the content knows its prescribing information.
    product: ProductView | None = None


@dataclass(frozen=True)
class RenderVariables:
    """What the renderer adds per card and call: the facts list, findings, data notes."""

    facts_used: str
    findings: frozenset[str]
    data_notes: str
    patient_id: str | None


#: The name an action's ``for_each`` binds to the current list element.
LOOP_ITEM = "item"
#: The template name of the set of findings (``'rp-ild' in findings``).
FINDINGS_NAME = "findings"

#: Every name a card template may use.
TEMPLATE_NAMES = frozenset({f.name for f in fields(TemplateVariables)} | {f.name for f in fields(RenderVariables)}
                           | {LOOP_ITEM})

#: Every finding key a card may test.
FINDINGS = frozenset(Finding)

def template_context(variables: TemplateVariables, extras: RenderVariables) -> dict[str, Any]:
    """The Jinja context of one card: names from this module only."""
    context: dict[str, Any] = {f.name: getattr(variables, f.name) for f in fields(variables)}
    context.update({f.name: getattr(extras, f.name) for f in fields(extras)})
    return context
