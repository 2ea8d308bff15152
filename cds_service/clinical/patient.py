"""The patient as the rules see it: plain facts read from the record.  Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from cds_service.clinical.contract import ConditionKey
from cds_service.clinical.model import DataNote, Fact
from cds_service.clinical.therapy import NotCounted, Therapy

POSITIVE_GRADES = {"positive", "strong-positive", "weak-positive"}
CONFIRMED_GRADES = {"positive", "strong-positive"}


@dataclass(frozen=True)
class AntibodyResult:
    antibody: str
    status: str
    date: date | None
    reference: str
    value_text: str


@dataclass(frozen=True)
class LabValue:
    value: float
    unit: str
    date: date | None
    reference: str
    flag: str | None  # "high" | "low" | None
    low: float | None
    high: float | None
    comparator: str = ""
    ucum: str = ""  # valueQuantity.code (UCUM) when given: the unit to compute with

    @property
    def units(self) -> tuple[str, ...]:
        """The machine code first, then the display text: either may name the unit."""
        return tuple(u.strip().lower() for u in (self.ucum, self.unit) if u and u.strip())

    @property
    def text(self) -> str:
        return f"{self.comparator}{self.value:g} {self.unit}".strip()


@dataclass
class PatientFacts:
    today: date
    antibodies: dict[str, AntibodyResult] = field(default_factory=dict)
    conditions: dict[str, list[Fact]] = field(default_factory=dict)
    asys_antibody_defined: bool = False
    fvc_decline: Fact | None = None
    therapies: list[Therapy] = field(default_factory=list)
    #: Glucocorticoids on record or co-ordered that are not first-line therapy, with the reason.
    not_counted: list[NotCounted] = field(default_factory=list)
    plasma_exchange: list[Fact] = field(default_factory=list)
    labs: dict[str, LabValue] = field(default_factory=dict)
    pft: dict[str, LabValue] = field(default_factory=dict)
    notes: list[DataNote] = field(default_factory=list)
    #: Diagnoses recorded as provisional, differential or unconfirmed, or written as possible:
    #: shown where relevant, never enough to fire a card.
    possible_conditions: dict[str, list[Fact]] = field(default_factory=dict)
    #: Age in whole years on the day of the call; None when the birth date is unknown.
    age_years: int | None = None
    #: The adult rules apply: at or over the adult age of the parameters, or age unknown (data note).
    adult: bool = True
    pregnancy: Fact | None = None
    #: Dates of pulmonary function results (FVC or DLCO, any unit) and PFTs already ordered.
    pft_dates: list[date] = field(default_factory=list)
    pft_ordered: list[Fact] = field(default_factory=list)
    #: IVIG courses other than the order in scope: (date, reference).
    ivig_courses: list[tuple[date, str]] = field(default_factory=list)
    #: The IVIG order's named indications, and whether any of them is in the clinical scope:
    #: "unspecified" (none named), "in-scope", or "other".
    indication: str = "unspecified"
    indication_facts: list[Fact] = field(default_factory=list)
    # -- ivig-safety only (clinical/safety_facts.py) --
    #: Hypersensitivity to immune globulin or blood products (AllergyIntolerance, Condition).
    ig_hypersensitivity: list[Fact] = field(default_factory=list)
    #: Anti-IgA antibodies: a positive result or a Condition that records them.
    anti_iga: list[Fact] = field(default_factory=list)
    #: Active venous thromboembolism with onset within the acute window (not a personal history).
    acute_vte: list[Fact] = field(default_factory=list)
    #: Current estrogen medication.
    estrogen: list[Fact] = field(default_factory=list)
    #: An indwelling central venous catheter (Device, Procedure in progress); Conditions are in ``conditions``.
    catheters: list[Fact] = field(default_factory=list)

    # -- derived ------------------------------------------------------------------------
    def has(self, condition: str) -> bool:
        return bool(self.conditions.get(condition))

    def antibody_positive(self, antibody: str) -> bool:
        result = self.antibodies.get(antibody)
        return result is not None and result.status in POSITIVE_GRADES

    def antibody_confirmed(self, antibody: str) -> bool:
        """Positive and not only weakly: what defines ASyS or the PL-7 + Ro52 phenotype."""
        result = self.antibodies.get(antibody)
        return result is not None and result.status in CONFIRMED_GRADES

    @property
    def ild(self) -> bool:
        return self.has(ConditionKey.ILD)

    @property
    def rp_ild(self) -> bool:
        return self.has(ConditionKey.RP_ILD) or (self.ild and self.fvc_decline is not None)

    @property
    def myositis(self) -> bool:
        return self.has(ConditionKey.MYOSITIS)

    @property
    def asys(self) -> bool:
        return self.has(ConditionKey.ASYS) or self.asys_antibody_defined

    @property
    def any_antibody_positive(self) -> bool:
        return any(result.status in POSITIVE_GRADES for result in self.antibodies.values())

    @property
    def has_antibody_results(self) -> bool:
        return bool(self.antibodies)

    @property
    def first_line_on_record(self) -> list[Therapy]:
        return [t for t in self.therapies if not t.co_ordered]

    @property
    def first_line_co_ordered(self) -> list[Therapy]:
        return [t for t in self.therapies if t.co_ordered]
