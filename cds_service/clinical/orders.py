"""Order scope: which draft orders in this call are intravenous immunoglobulin (IVIG)?

Read leniently (clients send invalid R4: category as an object, missing intent, missing
medication); what cannot be read is "not IVIG".  Subcutaneous products and routes, and
hyperimmune globulins, are never IVIG.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.terminology import Terminology, as_list, codings, concept_matches, concept_texts

REQUEST_TYPES = ("MedicationRequest", "MedicationOrder")
_NOT_ORDERS = ("entered-in-error", "cancelled", "revoked")


@dataclass(frozen=True)
class DraftOrder:
    reference: str  # "MedicationRequest/123"
    display: str  # the order's own medication text
    resource: dict[str, Any]


def reference_of(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def draft_reference(resource: Mapping[str, Any]) -> str:
    """``Type/id`` of a draft order, or "" when it has no usable id (a suggestion cannot name it)."""
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and rid.strip() and "/" not in rid and " " not in rid:
        return f"{rtype}/{rid}"
    return ""


def medication_concepts(resource: Mapping[str, Any],
                        medications: Mapping[str, Mapping[str, Any]]) -> Iterator[Any]:
    """Every CodeableConcept naming the medication of a request (or statement).

    ``medicationCodeableConcept``; ``medicationReference`` resolved against contained
    resources (``#id``) and against ``medications`` (bundled Medications by ``Medication/id``
    and fullUrl); the reference's own ``display`` as a text-only concept.
    """
    concept = resource.get("medicationCodeableConcept")
    if concept is not None:
        yield concept
    ref = resource.get("medicationReference")
    if isinstance(ref, Mapping):
        target = ref.get("reference")
        if isinstance(target, str):
            medication: Any = None  # a Medication resource dict when resolved
            if target.startswith("#"):
                for contained in as_list(resource.get("contained")):
                    if isinstance(contained, Mapping) and contained.get("id") == target[1:]:
                        medication = contained
                        break
            else:
                medication = medications.get(target) or medications.get(target.split("/_history")[0])
            if isinstance(medication, Mapping):
                yield medication.get("code")
        display = ref.get("display")
        if isinstance(display, str):
            yield {"text": display}


def route_texts_and_codes(resource: Mapping[str, Any]) -> Iterator[Any]:
    for dosage in as_list(resource.get("dosageInstruction")):
        if isinstance(dosage, Mapping):
            yield dosage.get("route")
            text = dosage.get("text")
            if isinstance(text, str):
                yield {"text": text}


def _display(concepts: list[Any]) -> str:
    for concept in concepts:
        for text in concept_texts(concept):
            if text.strip():
                return text.strip()[:200]
    for concept in concepts:
        for _, code, _display_text in codings(concept):
            return code
    return ""


def is_ivig(resource: Mapping[str, Any], terminology: Terminology,
            medications: Mapping[str, Mapping[str, Any]]) -> bool:
    concepts = [c for c in medication_concepts(resource, medications) if c is not None]
    return ivig_by_concepts(concepts, terminology) and not outside_vein(resource, terminology)


def ivig_by_concepts(concepts: list[Any], terminology: Terminology) -> bool:
    """Do the medication concepts name an IVIG product (before its route is looked at)?"""
    if not concepts:
        return False
    not_ivig = terminology["medication-ig-not-ivig"]
    ivig = terminology["medication-ivig"]
    if any(concept_matches(not_ivig, c) for c in concepts):
        return False
    if any(ivig.excluded_by_text(t) for c in concepts for t in concept_texts(c)):
        return False
    return any(concept_matches(ivig, c) for c in concepts)


def outside_vein(resource: Mapping[str, Any], terminology: Terminology) -> bool:
    """Given under the skin or into a muscle (an immune globulin so given is not IVIG)."""
    not_intravenous = [terminology[vs] for vs in ("route-subcutaneous", "route-intramuscular") if vs in terminology]
    return any(concept_matches(vs, r) for vs in not_intravenous for r in route_texts_and_codes(resource))


def bundled_medications(draft_orders: list[dict[str, Any]],
                        entries: list[Any] | None = None) -> dict[str, dict[str, Any]]:
    """Medications carried in the draftOrders Bundle, by ``Medication/id`` and by fullUrl."""
    found: dict[str, dict[str, Any]] = {}
    for resource in draft_orders:
        if isinstance(resource, dict) and resource.get("resourceType") == "Medication":
            found[reference_of(resource)] = resource
    for entry in entries or []:
        if isinstance(entry, Mapping):
            bundled = entry.get("resource")
            url = entry.get("fullUrl")
            if isinstance(bundled, dict) and bundled.get("resourceType") == "Medication" \
                    and isinstance(url, str):
                found[url] = bundled
    return found


def orders_in_scope(hook: str, draft_orders: list[dict[str, Any]], selections: list[str]) -> list[dict[str, Any]]:
    """order-select: only the selected entries; order-sign: every entry."""
    requests = [r for r in draft_orders
                if isinstance(r, dict) and r.get("resourceType") in REQUEST_TYPES
                and r.get("status") not in _NOT_ORDERS]
    if hook == "order-select":
        chosen = set(selections)
        return [r for r in requests if reference_of(r) in chosen]
    return requests


def ivig_orders(hook: str, draft_orders: list[dict[str, Any]], selections: list[str],
                terminology: Terminology, entries: list[Any] | None = None) -> list[DraftOrder]:
    medications = bundled_medications(draft_orders, entries)
    found = []
    for resource in orders_in_scope(hook, draft_orders, selections):
        try:
            if is_ivig(resource, terminology, medications):
                concepts = [c for c in medication_concepts(resource, medications) if c is not None]
                found.append(DraftOrder(draft_reference(resource), _display(concepts), resource))
        except (TypeError, AttributeError, ValueError):
            continue  # unreadable order: not IVIG
    return found
