"""Measurements derived from results: body weight in kilograms, FVC decline.  Pure."""

from __future__ import annotations

from datetime import date

from cds_service.clinical.model import Fact
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.clinical.patient import LabValue
from cds_service.terminology import ValueSet

# Data sanity, not clinical advice: no human weighs a tonne; a larger value is a unit or entry error.
PLAUSIBLE_WEIGHT_KG = 1000.0


_KILOGRAMS_PER = {"kg": 1.0, "kgs": 1.0, "kilogram": 1.0, "kilograms": 1.0, "g": 0.001, "gram": 0.001,
                  "grams": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237,
                  "lbs.": 0.45359237, "lb.": 0.45359237, "pound": 0.45359237, "pounds": 0.45359237,
                  "[oz_av]": 0.028349523125, "oz": 0.028349523125}


def as_kilograms(lab: LabValue) -> LabValue | None:
    # The UCUM code decides when present; the display text is the fallback.
    factor = next((_KILOGRAMS_PER[u] for u in lab.units if u in _KILOGRAMS_PER), None)
    if factor is None or lab.value <= 0:
        return None
    kilograms = lab.value * factor
    if kilograms > PLAUSIBLE_WEIGHT_KG:
        return None  # a data error, not a weight: no dose is computed from it
    return LabValue(round(kilograms, 1), "kg", lab.date, lab.reference, None, None, None)


def fvc_decline(series: list[tuple[date, float, str]], vs: ValueSet | None,
                parameters: ClinicalParameters) -> Fact | None:
    """A fall of at least ``fvc_decline_points`` in FVC % predicted from an earlier value within
    ``fvc_decline_window_days`` of the newest."""
    if len(series) < 2:
        return None
    series = sorted(series)
    newest_date, newest_value, newest_ref = series[-1]
    earlier = [(d, v, r) for d, v, r in series[:-1] if newest_date - d <= parameters.days("fvc_decline_window_days")]
    if not earlier:
        return None
    peak_date, peak_value, _ = max(earlier, key=lambda item: item[1])
    if peak_value - newest_value < parameters.fvc_decline_points:
        return None
    return Fact(label=vs.title if vs else "FVC % predicted",
                value_text=f"{peak_value:g} → {newest_value:g} ({peak_date.isoformat()} → {newest_date.isoformat()})",
                date=newest_date.isoformat(), reference=newest_ref)
