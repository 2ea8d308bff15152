"""Clinical parameters as plain data: windows, thresholds, cue words and product facts.

The values live in ``cards/clinical-parameters.yaml`` with their sources; the engine loads that
file and builds ``ClinicalParameters.from_mapping(data)``.  No value is a Python literal.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from cds_service.terminology import concept_texts


class ParameterError(ValueError):
    """The parameter file is incomplete or malformed."""


@dataclass(frozen=True)
class Product:
    """What one product's prescribing information says (shown only for an order of that product)."""

    key: str
    name: str
    match: tuple[str, ...]
    iga_content: str | None
    stabiliser: str | None
    reference: str | None
    pattern: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(r"(?!x)x"))
    sucrose_free: bool = False
    infusion_rate: str | None = None
    #: Words that name a different product of the same family (e.g. "S/D", "ERC"): no match.
    exclude: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(r"(?!x)x"))

    def matches(self, text: str) -> bool:
        lower = text.lower()
        return bool(self.pattern.search(lower)) and not self.exclude.search(lower)


_NON_NUMERIC = ("premedication_cues", "non_systemic_route_cues", "products", "sources", "premedication_pattern",
                "non_systemic_pattern")


def _cue_pattern(cues: tuple[str, ...]) -> re.Pattern[str]:
    if not cues:
        return re.compile(r"(?!x)x")
    parts = [r"[\s\-_]*".join(re.escape(word) for word in re.split(r"[\s\-_]+", cue.lower()) if word)
             for cue in sorted(cues, key=len, reverse=True)]
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(parts) + r")(?![a-z0-9])")


@dataclass(frozen=True)
class ClinicalParameters:
    adult_age_years: int
    steroid_sparing_window_days: int
    glucocorticoid_current_window_days: int
    pulse_methylprednisolone_min_mg: float
    pregnancy_window_days: int
    iga_selective_deficiency_mg_dl: float
    iga_deficiency_min_age_years: int
    dosing_weight_max_age_days: int
    pft_recent_days: int
    boxed_warning_age_years: int
    acute_vte_days: int
    prior_ivig_window_days: int
    renal_abnormal_window_days: int
    renal_recent_window_days: int
    egfr_low: float
    fvc_decline_window_days: int
    fvc_decline_points: float
    plasma_exchange_recent_days: int
    premedication_cues: tuple[str, ...] = ()
    non_systemic_route_cues: tuple[str, ...] = ()
    products: tuple[Product, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)
    premedication_pattern: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(r"(?!x)x"))
    non_systemic_pattern: re.Pattern[str] = field(compare=False, repr=False, default=re.compile(r"(?!x)x"))

    def days(self, name: str) -> timedelta:
        return timedelta(days=int(getattr(self, name)))

    def is_premedication_text(self, text: str) -> bool:
        return bool(text) and bool(self.premedication_pattern.search(text.lower()))

    def is_systemic_route(self, route: Any) -> bool:
        """A route is systemic unless its text or display names a local route (topical, inhaled …)."""
        texts = list(concept_texts(route))
        return bool(texts) and not any(self.non_systemic_pattern.search(t.lower()) for t in texts)

    def product_for(self, texts: list[str]) -> Product | None:
        for product in self.products:
            if any(product.matches(text) for text in texts if text):
                return product
        return None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ClinicalParameters:
        raw = data.get("parameters")
        if not isinstance(raw, Mapping):
            raise ParameterError("clinical-parameters: `parameters` must be a mapping")
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        numeric = [f for f in fields(cls) if f.name not in _NON_NUMERIC]
        for spec in numeric:
            entry = raw.get(spec.name)
            if not isinstance(entry, Mapping) or "value" not in entry:
                raise ParameterError(f"clinical-parameters: `{spec.name}` needs a value and a source")
            if not str(entry.get("source", "")).strip():
                raise ParameterError(f"clinical-parameters: `{spec.name}` has no source")
            value = entry["value"]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ParameterError(f"clinical-parameters: `{spec.name}` must be a non-negative number")
            values[spec.name] = int(value) if spec.type in ("int", int) else float(value)
            sources[spec.name] = " ".join(str(entry["source"]).split())
        cues_entry = data.get("premedication_cues") or {}
        cues = tuple(str(c) for c in (cues_entry.get("cues") or []) if str(c).strip()) \
            if isinstance(cues_entry, Mapping) else ()
        sources["premedication_cues"] = " ".join(str(cues_entry.get("source", "")).split()) \
            if isinstance(cues_entry, Mapping) else ""
        routes_entry = data.get("non_systemic_routes") or {}
        routes = tuple(str(c) for c in (routes_entry.get("cues") or []) if str(c).strip()) \
            if isinstance(routes_entry, Mapping) else ()
        products: list[Product] = []
        for key, entry in (data.get("products") or {}).items():
            if not isinstance(entry, Mapping) or not entry.get("name") or not entry.get("match"):
                raise ParameterError(f"clinical-parameters: product `{key}` needs a name and match words")
            match = tuple(str(m) for m in entry["match"])
            products.append(Product(str(key), str(entry["name"]), match,
                                    str(entry["iga_content"]) if entry.get("iga_content") else None,
                                    str(entry["stabiliser"]) if entry.get("stabiliser") else None,
                                    str(entry["reference"]) if entry.get("reference") else None,
                                    _cue_pattern(match), entry.get("sucrose_free") is True,
                                    str(entry["infusion_rate"]) if entry.get("infusion_rate") else None,
                                    _cue_pattern(tuple(str(x) for x in entry.get("exclude") or ()))))
        return cls(**values, premedication_cues=cues, non_systemic_route_cues=routes, products=tuple(products),
                   sources=sources, premedication_pattern=_cue_pattern(cues),
                   non_systemic_pattern=_cue_pattern(routes))
