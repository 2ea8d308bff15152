"""The facts a card shows under *Why you are seeing this*: one ``Fact`` per resource used."""

from __future__ import annotations

from datetime import date

from cds_service.clinical.matching import ANTIBODIES
from cds_service.clinical.model import Fact
from cds_service.clinical.patient import LabValue, PatientFacts
from cds_service.terminology import Terminology


def iso(value: date | None) -> str | None:
    return value.isoformat() if value else None


def antibody_fact(facts: PatientFacts, name: str, terminology: Terminology) -> Fact | None:
    result = facts.antibodies.get(name)
    if result is None:
        return None
    vs_id = ANTIBODIES.get(name, "")
    label = terminology[vs_id].title if vs_id in terminology else name
    return Fact(label=label, value_key=result.status, value_text=result.value_text or None,
                date=iso(result.date), reference=result.reference)


def condition_facts(facts: PatientFacts, *names: str, limit: int = 2) -> list[Fact]:
    found: list[Fact] = []
    for name in names:
        for fact in facts.conditions.get(name, [])[:limit]:
            if fact not in found:
                found.append(fact)
    return found


def possible_facts(facts: PatientFacts, *names: str) -> list[Fact]:
    """Diagnoses on record only as possible: shown beside the facts that fired a card."""
    found: list[Fact] = []
    for name in names:
        for fact in facts.possible_conditions.get(name, [])[:1]:
            if fact not in found:
                found.append(fact)
    return found


def lab_fact(t: Terminology, vs_id: str, lab: LabValue) -> Fact:
    return Fact(label=t[vs_id].title if vs_id in t else vs_id, value_text=lab.text,
                value_key=f"flag-{lab.flag}" if lab.flag else None, date=iso(lab.date), reference=lab.reference)
