"""Everything a hook call needs that is built once at start-up: value sets, fact reader, content and
its renderer, services, store, FHIR client, audit key.  The call itself is ``engine/pipeline.py``."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from cds_service.clinical.facts import FactReader
from cds_service.clinical.parameters import ClinicalParameters
from cds_service.engine.assertion import assertion_reader
from cds_service.engine.content import Catalog, Renderer
from cds_service.engine.content.parameters import ASSERTION_CUES_FILE, load_parameters
from cds_service.engine.fhir import FhirClient
from cds_service.engine.gate import CallGate
from cds_service.engine.services import ServiceDefinition, build_services
from cds_service.engine.store import Store
from cds_service.protocol import Limits
from cds_service.settings import Settings
from cds_service.terminology import Terminology

log = logging.getLogger("cds_service.engine.runtime")


@dataclass
class Runtime:
    settings: Settings
    terminology: Terminology
    catalog: Catalog
    services: dict[str, ServiceDefinition]
    store: Store
    fhir: FhirClient
    audit_key: bytes
    limits: Limits
    facts: FactReader
    renderer: Renderer
    parameters: ClinicalParameters
    started_at: float = field(default_factory=time.time)
    gate: CallGate = field(default_factory=lambda: CallGate(1))  # one call computing at a time (gate.py)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        cards_dir = Path(settings.CARDS_DIR)
        terminology = Terminology.load(cards_dir / "valuesets")
        catalog = Catalog.load(cards_dir, terminology)
        store = Store(settings.DATABASE_URL, queue_size=settings.AUDIT_QUEUE_SIZE)
        try:
            store.create_schema()
        except Exception as exc:  # a down store must not stop the service; /readyz says so
            log.warning("store not reachable at start-up (%s); hook calls still served", type(exc).__name__)
        if settings.AUDIT_KEY:
            audit_key = settings.AUDIT_KEY.encode("utf-8")
        else:
            audit_key = secrets.token_bytes(32)
            log.warning("CDS_AUDIT_KEY is not set: patient ids in audit rows are keyed per process "
                        "and cannot be linked across restarts or replicas")
        limits = Limits.from_settings(settings)
        parameters = load_parameters(cards_dir)
        assertions = assertion_reader(cards_dir / ASSERTION_CUES_FILE)
        return cls(settings, terminology, catalog, build_services(terminology), store,
                   FhirClient.from_settings(settings), audit_key, limits,
                   FactReader(terminology, parameters, assertions), Renderer(catalog), parameters,
                   gate=CallGate(settings.CALL_SLOTS))
