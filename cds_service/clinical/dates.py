"""Dates as records and content write them: one reader for FHIR dates and YAML front-matter dates."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any


def parse_date(value: Any) -> date | None:
    """A date from a FHIR ``date``/``dateTime``/``instant`` string ("2024", "2024-05",
    "2024-05-01", "2024-05-01T10:00:00Z"), or from a YAML ``date``/``datetime``; None otherwise."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1)
        if len(value) == 10:
            return date.fromisoformat(value)
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        return None
