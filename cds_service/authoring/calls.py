"""Fixture patients through the real service, for the content check and the review packet.

Both need "the service as it would start on this content" and "this fixture's request on this hook
through ``engine.pipeline.run``"; this module is the one place that builds them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.engine import pipeline
from cds_service.engine.content import Catalog, Renderer
from cds_service.engine.runtime import Runtime
from cds_service.protocol import Limits, parse_request
from cds_service.settings import load_settings

# The hooks the service answers, in the order fixtures list their expected cards.


class FixtureError(Exception):
    """A fixture file that cannot be read as a JSON object; the message says why."""


def read_fixture(name: str, fixtures_dir: Path) -> dict[str, Any]:
    """The fixture ``name`` as a mapping, or ``FixtureError``."""
    try:
        fixture = load_fixture(name, fixtures_dir)
    except (OSError, ValueError, KeyError) as exc:  # unreadable, not JSON, or no such fixture
        raise FixtureError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(fixture, dict):
        raise FixtureError("a fixture must be a JSON object")
    return fixture


def expected_cards(fixture: Mapping[str, Any], hook: str) -> list[str]:
    """The card ids the fixture expects on ``hook`` (empty when it says nothing)."""
    expected = fixture.get("expected")
    listed = expected.get(hook) if isinstance(expected, dict) else None
    return [str(card_id) for card_id in listed] if isinstance(listed, list) else []


def check_runtime(cards_dir: Path, fixtures_dir: Path, catalog: Catalog | None = None) -> Runtime:
    """The service as it would start on ``cards_dir``: every card served, no auth, an in-memory store.
    With ``catalog``, that catalogue replaces the one loaded from ``cards_dir``."""
    settings = load_settings({"AUTH": "off", "CONTENT_POLICY": "all", "DATABASE_URL": "sqlite://",
                              "CARDS_DIR": str(cards_dir), "FIXTURES_DIR": str(fixtures_dir),
                              "AUDIT_KEY": "governance-check"})
    runtime = Runtime.build(settings)
    if catalog is not None:
        runtime = dataclasses.replace(runtime, catalog=catalog, renderer=Renderer(catalog))
    return runtime


def call_fixture(runtime: Runtime, fixture: Mapping[str, Any], hook: str,
                 today: date | None = None) -> pipeline.CallResult:
    """The fixture's request on ``hook`` through the real pipeline."""
    service = next(s for s in runtime.services.values() if s.hook == hook)
    payload = build_request(fixture, hook, templates=service.prefetch, today=today)
    request = parse_request(payload, hook, Limits())
    return pipeline.run(runtime, service, request)
