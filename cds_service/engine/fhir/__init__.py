"""The FHIR side: a small REST client and ``gather`` (prefetch first, the rest from fhirServer)."""

from __future__ import annotations

from cds_service.engine.fhir.client import FhirClient, FhirError, allowed
from cds_service.engine.fhir.gather import Gathered, KeyOutcome, gather, render_template

__all__ = ["FhirClient", "FhirError", "Gathered", "KeyOutcome", "allowed", "gather", "render_template"]
