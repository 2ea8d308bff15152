"""The integrators' demo page: fire a fixture patient's hook request from the browser, see the cards.

``/demo`` is plain server-rendered HTML (``templates/demo.html``) plus one small script
(``static/demo.js``): no inline script or style, so the page runs under the app's CSP.
The server builds everything that needs the project's code (the request JSON from a fixture,
the patient's key facts, card Markdown rendered safely); the browser only talks CDS Hooks to
the target service (discovery, hook call, feedback), the way an EHR would.

Helper endpoints (JSON), all read-only:

- ``GET  /demo/api/fixtures``        -> ``[{"name", "description"}]``
- ``GET  /demo/api/request?fixture=NAME&hook=HOOK`` -> the request this service's templates give
- ``POST /demo/api/request``  ``{"fixture", "hook", "prefetch"?: {key: template}, "fhirServer"?}``
  -> the request for another service's prefetch templates (as discovered by the browser)
- ``POST /demo/api/render-markdown`` ``{"markdown"}`` -> ``{"html"}`` (raw HTML never passes through)

Registered only when ``DEMO`` is true (``serve --dev`` sets it); otherwise every path here is 404.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for

from cds_service.clinical import facts as clinical_facts
from cds_service.clinical import matching as clinical_matching
from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.engine import pipeline
from cds_service.engine.services import ServiceDefinition
from cds_service.errors import BadRequest, NotFound
from cds_service.http.context import runtime as _runtime
from cds_service.http.web.markdown import render_markdown
from cds_service.protocol import HOOKS, parse_json, parse_request

bp = Blueprint("demo", __name__, url_prefix="/demo", template_folder="templates",
               static_folder="static", static_url_path="/static")

DEFAULT_FIXTURE = "pl7-ro52-rpild"
_MAX_MARKDOWN_CHARS = 200_000
_MAX_TEMPLATES = 100


def _fixtures_dir() -> Path:
    return Path(_runtime().settings.FIXTURES_DIR)


# --------------------------------------------------------------------------------------
# Fixtures and requests
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FixtureChoice:
    name: str
    description: str


def fixture_choices() -> list[FixtureChoice]:
    choices = []
    for name in list_fixtures(_fixtures_dir()):
        try:
            description = str(load_fixture(name, _fixtures_dir()).get("description", ""))
        except (OSError, ValueError, KeyError):
            description = ""
        choices.append(FixtureChoice(name, description))
    return choices


def _load(name: str) -> dict[str, Any]:
    try:
        return load_fixture(name, _fixtures_dir())
    except (KeyError, ValueError):
        raise NotFound(f"no fixture called {name[:100]!r}; see GET /demo/api/fixtures") from None


def _hook(value: str | None) -> str:
    hook = value or HOOKS[0]
    if hook not in HOOKS:
        raise BadRequest(f"hook must be one of {', '.join(HOOKS)}", code="invalid_hook")
    return hook


def _service_for(hook: str) -> ServiceDefinition:
    for service in _runtime().services.values():
        if service.hook == hook:
            return service
    raise NotFound(f"this service has no CDS service for hook {hook!r}")


def fixture_request(fixture: dict[str, Any], hook: str, templates: dict[str, str] | None = None,
                    fhir_server: str | None = None) -> dict[str, Any]:
    """The hook request for ``fixture``, prefetch filled from ``templates`` (default: this service's)."""
    if templates is None:
        templates = dict(_service_for(hook).prefetch)
    return build_request(fixture, hook, templates=templates, fhir_server=fhir_server)


# --------------------------------------------------------------------------------------
# Key facts (what the rules will see), computed with the same extractor the service uses
# --------------------------------------------------------------------------------------

@dataclass
class FactRow:
    label: str
    value: str = ""
    date: str = ""
    reference: str = ""
    flag: str = ""


@dataclass
class FactsView:
    orders: list[FactRow] = field(default_factory=list)
    antibodies: list[FactRow] = field(default_factory=list)
    conditions: list[FactRow] = field(default_factory=list)
    derived: list[FactRow] = field(default_factory=list)
    therapy: list[FactRow] = field(default_factory=list)
    labs: list[FactRow] = field(default_factory=list)
    pulmonary: list[FactRow] = field(default_factory=list)
    plasma_exchange: list[FactRow] = field(default_factory=list)
    notes: list[FactRow] = field(default_factory=list)
    possible: list[FactRow] = field(default_factory=list)
    context: list[FactRow] = field(default_factory=list)
    not_counted: list[FactRow] = field(default_factory=list)


def _iso(value: Any) -> str:
    return value.isoformat() if value is not None and hasattr(value, "isoformat") else (value or "")


def _lab_row(label: str, lab: clinical_facts.LabValue) -> FactRow:
    return FactRow(label, lab.text, _iso(lab.date), lab.reference, lab.flag or "")


def _title(set_id: str) -> str:
    terminology = _runtime().terminology
    return terminology[set_id].title if set_id in terminology else set_id


def key_facts(fixture: dict[str, Any], hook: str) -> FactsView:
    """The patient's key facts as the service reads them: the fixture's request (dates moved to
    today) through the service's own pipeline, nothing re-implemented here."""
    rt = _runtime()
    service = _service_for(hook)
    hook_request = parse_request(fixture_request(fixture, hook), hook, rt.limits)
    result = pipeline.run(rt, service, hook_request)
    orders = result.orders
    facts = result.facts or rt.facts.extract([], pipeline.today_utc())
    view = FactsView()
    view.orders = [FactRow(o.display or o.reference, reference=o.reference) for o in orders]
    for name, set_id in clinical_matching.ANTIBODIES.items():
        antibody = facts.antibodies.get(name)
        if antibody is None:
            view.antibodies.append(FactRow(_title(set_id), rt.catalog.status_display("unknown")))
        else:
            shown = rt.catalog.status_display(antibody.status)
            if antibody.value_text:
                shown = f"{shown} ({antibody.value_text})"
            view.antibodies.append(FactRow(_title(set_id), shown, _iso(antibody.date), antibody.reference,
                                           antibody.status))
    for name in clinical_matching.CONDITIONS:
        for fact in facts.conditions.get(name, []):
            view.conditions.append(FactRow(fact.label, fact.value_text or "", fact.date or "",
                                           fact.reference or ""))
    view.derived = [
        FactRow(_title("condition-asys"), "yes" if facts.asys else "no"),
        FactRow(_title("condition-ild"), "yes" if facts.ild else "no"),
        FactRow(_title("condition-rp-ild"), "yes" if facts.rp_ild else "no"),
    ]
    for therapy in facts.therapies:
        where = "co-ordered" if therapy.co_ordered else "on record"
        view.therapy.append(FactRow(therapy.name, f"{therapy.status} ({where})", _iso(therapy.date),
                                    therapy.reference, "pulse" if therapy.pulse_methylprednisolone else ""))
    for name, set_id in clinical_matching.LABS.items():
        lab = facts.labs.get(name)
        if lab is not None:
            view.labs.append(_lab_row(_title(set_id), lab))
    for name, set_id in clinical_matching.PFT_PERCENT.items():
        lab = facts.pft.get(name)
        if lab is not None:
            view.pulmonary.append(_lab_row(_title(set_id), lab))
    if facts.fvc_decline is not None:
        decline = facts.fvc_decline
        view.pulmonary.append(FactRow(decline.label, decline.value_text or "", decline.date or "",
                                      decline.reference or "", "decline"))
    for fact in facts.plasma_exchange:
        view.plasma_exchange.append(FactRow(fact.label, fact.value_text or "", fact.date or "",
                                            fact.reference or ""))
    for name in clinical_matching.CONDITIONS:
        for fact in facts.possible_conditions.get(name, []):
            view.possible.append(FactRow(fact.label, fact.value_text or "", fact.date or "", fact.reference or "",
                                         "possible"))
    age = "unknown (adult rules applied)" if facts.age_years is None else str(facts.age_years)
    view.context.append(FactRow("Age (years)", age, flag="" if facts.adult else "under adult age"))
    view.context.append(FactRow("Pregnancy", "yes" if facts.pregnancy else "none on record",
                                facts.pregnancy.date or "" if facts.pregnancy else "",
                                facts.pregnancy.reference or "" if facts.pregnancy else ""))
    indication = ", ".join(f.value_text or "" for f in facts.indication_facts) or "none named"
    view.context.append(FactRow("IVIG order indication", f"{indication} ({facts.indication})"))
    last = facts.ivig_courses[-1] if facts.ivig_courses else None
    view.context.append(FactRow("IVIG courses, last 12 months", str(len(facts.ivig_courses)),
                                last[0].isoformat() if last else "", last[1] if last else ""))
    for item in facts.not_counted:
        view.not_counted.append(FactRow(item.name, rt.catalog.status_display(item.reason), _iso(item.date),
                                        item.reference))
    for note in facts.notes:
        view.notes.append(FactRow(note.kind, note.key, reference=note.reference or ""))
    return view


# --------------------------------------------------------------------------------------
# Views
# --------------------------------------------------------------------------------------

@bp.get("")
@bp.get("/")
def page() -> str:
    choices = fixture_choices()
    names = [c.name for c in choices]
    requested = request.args.get("fixture")
    if requested:
        name = requested
    elif DEFAULT_FIXTURE in names:
        name = DEFAULT_FIXTURE
    else:
        name = names[0] if names else ""
    hook = _hook(request.args.get("hook"))
    fixture = _load(name) if name else None
    service = _service_for(hook)
    hook_request = fixture_request(fixture, hook) if fixture is not None else None
    return render_template(
        "demo.html",
        choices=choices,
        selected=name,
        fixture=fixture,
        hooks=HOOKS,
        hook=hook,
        service=service,
        facts=key_facts(fixture, hook) if fixture is not None else None,
        request_json=json.dumps(hook_request, indent=2, ensure_ascii=False) if hook_request else "",
        expected=(fixture or {}).get("expected", {}).get(hook, []),
        discovery_path=url_for("cds.discovery"),
        review_url=url_for("review.review_index") if "review.review_index" in current_app.view_functions
        else None,
    )


@bp.get("/api/fixtures")
def api_fixtures() -> Response:
    return jsonify([{"name": c.name, "description": c.description} for c in fixture_choices()])


@bp.get("/api/request")
def api_request() -> Response:
    hook = _hook(request.args.get("hook"))
    return jsonify(fixture_request(_load(request.args.get("fixture", "")), hook))


def _json_body() -> dict[str, Any]:
    # The service's own JSON reader: its limits, and no lone surrogates (they break the answer).
    body = parse_json(request.get_data(cache=False), _runtime().limits)
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object (Content-Type: application/json)", code="invalid_json")
    return body


@bp.post("/api/request")
def api_request_for_templates() -> Response:
    body = _json_body()
    fixture = body.get("fixture")
    if not isinstance(fixture, str):
        raise BadRequest("'fixture' must be a fixture name", code="invalid_request")
    hook = _hook(body.get("hook") if isinstance(body.get("hook"), str) else None)
    templates = body.get("prefetch")
    if templates is not None and not (
            isinstance(templates, dict) and len(templates) <= _MAX_TEMPLATES
            and all(isinstance(k, str) and isinstance(v, str) for k, v in templates.items())):
        raise BadRequest(f"'prefetch' must map keys to template strings (at most {_MAX_TEMPLATES})",
                         code="invalid_request")
    fhir_server = body.get("fhirServer")
    if fhir_server is not None and not (isinstance(fhir_server, str)
                                        and fhir_server.startswith(("http://", "https://"))):
        raise BadRequest("'fhirServer' must be an http(s) URL", code="invalid_request")
    try:
        built = fixture_request(_load(fixture), hook, templates, fhir_server)
    except ValueError as exc:  # a template that is not a FHIR read or search
        raise BadRequest(f"a prefetch template cannot be run over the fixture: {exc}",
                         code="invalid_request") from None
    return jsonify(built)


@bp.post("/api/render-markdown")
def api_render_markdown() -> Response:
    body = _json_body()
    text = body.get("markdown")
    if not isinstance(text, str):
        raise BadRequest("'markdown' must be a string", code="invalid_request")
    if len(text) > _MAX_MARKDOWN_CHARS:
        raise BadRequest(f"'markdown' longer than {_MAX_MARKDOWN_CHARS} characters", code="too_long")
    return jsonify({"html": str(render_markdown(text))})
