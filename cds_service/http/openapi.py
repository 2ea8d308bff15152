"""The OpenAPI 3.1 document of the service, served at ``GET /openapi.json``.

Built from the very JSON Schemas the service validates with (``protocol/schemas/*.json``), so the
document cannot drift from the code: each schema file is embedded whole under
``components/schemas`` (its ``$defs`` included) and its local ``$ref``s are rewritten to point at
the embedded copy.  Service ids come from the running app; the security scheme is the one the app's
client verifier enforces (``http/auth``: the bearer JWT, or none for ``AUTH=off``).

The document is built once per app and cached; only ``servers`` is per request (``PUBLIC_BASE_URL``
when set, else the request's root URL).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from cds_service import __version__
from cds_service.engine.runtime import Runtime
from cds_service.http import context
from cds_service.protocol.schema import load_schema

bp = Blueprint("openapi", __name__)

JSON = "application/json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"
_CACHE_KEY = "cds_openapi"
SECURITY_SCHEME = "cdsClientJwt"

# components/schemas name -> schema file (without .json) under protocol/schemas/
EMBEDDED_SCHEMAS: dict[str, str] = {
    "HookRequestEnvelope": "request",
    "OrderSelectContext": "context-order-select",
    "OrderSignContext": "context-order-sign",
    "HookResponse": "response",
    "FeedbackRequest": "feedback",
    "Discovery": "discovery",
}
# The context schema for each hook (the service validates ``context`` with it after the envelope).
CONTEXT_SCHEMAS: dict[str, str] = {
    "order-select": "OrderSelectContext",
    "order-sign": "OrderSignContext",
}

JsonObject = dict[str, Any]


# -- schema embedding -----------------------------------------------------------------------

def component_ref(name: str) -> str:
    return f"#/components/schemas/{name}"


def embed_schema(schema: Mapping[str, Any], name: str) -> JsonObject:
    """``schema`` (a self-contained JSON Schema file) as ``components/schemas/<name>``.

    ``$id`` and ``$schema`` are dropped (the document's ``jsonSchemaDialect`` says 2020-12, and an
    ``$id`` would make ``#`` mean the schema, not the document); every local ``$ref`` ``#/...``
    becomes ``#/components/schemas/<name>/...``.  A reference to another document is an error: the
    files are meant to be self-contained.
    """
    embedded = _rewrite_refs(copy.deepcopy(dict(schema)), component_ref(name))
    embedded.pop("$id", None)
    embedded.pop("$schema", None)
    result: JsonObject = embedded
    return result


def _rewrite_refs(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out: JsonObject = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                if not value.startswith("#"):
                    raise ValueError(f"schema reference {value!r} leaves its file; schemas must be "
                                     "self-contained")
                out[key] = prefix + value[1:]
            else:
                out[key] = _rewrite_refs(value, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item, prefix) for item in node]
    return node


def _error_schema() -> JsonObject:
    return {
        "description": "Every 4xx/5xx answer except 412: a short machine-readable code and a "
                       "human-readable detail (a 401 carries no detail).",
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "minLength": 1,
                      "examples": ["invalid_request", "too_deep", "unauthorized"]},
            "detail": {"type": "string"},
        },
        "additionalProperties": False,
    }


def _operation_outcome_schema() -> JsonObject:
    return {
        "description": "412 Precondition Failed: a FHIR R4 OperationOutcome naming the prefetch keys "
                       "that were neither sent nor obtainable from fhirServer.",
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": {"enum": ["fatal", "error", "warning", "information"]},
                        "code": {"type": "string", "minLength": 1},
                        "diagnostics": {"type": "string"},
                        "expression": {"type": "array", "items": {"type": "string"}},
                        "details": {"type": "object",
                                    "properties": {"text": {"type": "string"}}},
                    },
                },
            },
        },
    }


def _health_schemas() -> dict[str, JsonObject]:
    return {
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "cards", "valueSets", "audit"],
            "properties": {
                "status": {"enum": ["ready", "not-ready"]},
                "cards": {"type": "integer", "minimum": 0},
                "valueSets": {"type": "integer", "minimum": 0},
                "audit": {
                    "type": "object",
                    "required": ["written", "lost"],
                    "properties": {"written": {"type": "integer", "minimum": 0},
                                   "lost": {"type": "integer", "minimum": 0}},
                },
                "reasons": {"type": "array", "items": {"type": "string"}},
            },
        },
        "FeedbackAccepted": {
            "description": "Feedback is stored; the body is an empty object.",
            "type": "object",
            "maxProperties": 0,
        },
    }


def _hook_request_schema(hooks: Iterable[str]) -> JsonObject:
    """The envelope plus, per hook, the context schema the service checks ``context`` with."""
    hooks = sorted(set(hooks))
    parts: list[JsonObject] = [
        {"$ref": component_ref("HookRequestEnvelope")},
        {"properties": {"hook": {"enum": hooks}}},
    ]
    for hook in hooks:
        context = CONTEXT_SCHEMAS.get(hook)
        if context is None:
            continue
        parts.append({
            "if": {"required": ["hook"], "properties": {"hook": {"const": hook}}},
            "then": {"properties": {"context": {"$ref": component_ref(context)}}},
        })
    return {
        "description": "A CDS Hooks 2.0 hook request: the envelope (HookRequestEnvelope) with the "
                       "context of its hook (OrderSelectContext or OrderSignContext). Each service "
                       "answers one hook; a request for another hook is refused with 400.",
        "allOf": parts,
    }


# -- responses ------------------------------------------------------------------------------

def _json_response(description: str, schema_name: str, *,
                   headers: Mapping[str, Any] | None = None) -> JsonObject:
    response: JsonObject = {"description": description,
                            "content": {JSON: {"schema": {"$ref": component_ref(schema_name)}}}}
    if headers:
        response["headers"] = dict(headers)
    return response


_ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The request is not valid JSON, breaks a limit (nesting depth, string length, number of "
         "draft orders or prefetch resources) or does not match the schema; `detail` names the "
         "JSON path.",
    401: "The CDS client JWT is missing or not valid for this endpoint (reason logged, not sent).",
    404: "No such service (on feedback also: no card with this uuid was issued to this client by this "
         "service within FEEDBACK_WINDOW_HOURS).",
    405: "Method not allowed (see the Allow header).",
    413: "The request body is larger than the configured limit.",
    415: "The Content-Type is not JSON.",
    500: "Unexpected server error; `detail` quotes a request id for the operators.",
    503: "The feedback store is unavailable; try again later.",
}


def _errors(*statuses: int, auth: bool) -> JsonObject:
    out: JsonObject = {}
    for status in statuses:
        if status == 401 and not auth:
            continue
        headers = ({"Allow": {"description": "The methods the path supports.",
                              "schema": {"type": "string"}}} if status == 405 else None)
        out[str(status)] = _json_response(_ERROR_DESCRIPTIONS[status], "Error", headers=headers)
    return out


# -- the document ---------------------------------------------------------------------------

def build_document(runtime: Runtime, security_scheme: Mapping[str, Any] | None) -> JsonObject:
    """The OpenAPI 3.1 document for ``runtime`` (without ``servers``, which is per request), with
    ``security_scheme`` (what the client verifier enforces; None: no authentication)."""
    settings = runtime.settings
    auth = security_scheme is not None
    service_ids = sorted(runtime.services)
    hooks = sorted({s.hook for s in runtime.services.values()})

    schemas: JsonObject = {name: embed_schema(load_schema(stem), name)
                           for name, stem in EMBEDDED_SCHEMAS.items()}
    schemas["HookRequest"] = _hook_request_schema(hooks)
    schemas["Error"] = _error_schema()
    schemas["OperationOutcome"] = _operation_outcome_schema()
    schemas.update(_health_schemas())

    security: list[JsonObject] = [{SECURITY_SCHEME: []}] if auth else []
    service_id_param: JsonObject = {
        "name": "service_id",
        "in": "path",
        "required": True,
        "description": "A service id from the discovery document.",
        "schema": {"type": "string", "enum": service_ids},
    }
    limits = (f"Limits: body at most {settings.MAX_BODY_BYTES} bytes, JSON nesting at most "
              f"{settings.MAX_JSON_DEPTH} levels, strings at most {settings.MAX_STRING_LENGTH} "
              f"characters, at most {settings.MAX_DRAFT_ORDERS} draft orders and "
              f"{settings.MAX_PREFETCH_RESOURCES} prefetch resources.")

    paths: JsonObject = {
        "/cds-services": {
            "get": {
                "operationId": "discovery",
                "tags": ["CDS Hooks"],
                "summary": "CDS Hooks discovery: the services hosted here",
                "security": security,
                "responses": {
                    "200": _json_response("The discovery document.", "Discovery"),
                    **_errors(401, auth=auth),
                },
            },
        },
        "/cds-services/{service_id}": {
            "parameters": [service_id_param],
            "post": {
                "operationId": "callService",
                "tags": ["CDS Hooks"],
                "summary": "Call a CDS service (one hook request in, cards out)",
                "security": security,
                "requestBody": {
                    "required": True,
                    "description": "The hook request. " + limits,
                    "content": {JSON: {"schema": {"$ref": component_ref("HookRequest")}}},
                },
                "responses": {
                    "200": _json_response("Cards (possibly none).", "HookResponse"),
                    "412": _json_response("Data needed to decide was neither prefetched nor "
                                          "obtainable from fhirServer.", "OperationOutcome"),
                    **_errors(400, 401, 404, 405, 413, 415, 500, auth=auth),
                },
            },
        },
        "/cds-services/{service_id}/feedback": {
            "parameters": [service_id_param],
            "post": {
                "operationId": "feedback",
                "tags": ["CDS Hooks"],
                "summary": "Report what the user did with the cards",
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": component_ref("FeedbackRequest")}}},
                },
                "responses": {
                    "200": _json_response("Feedback stored.", "FeedbackAccepted"),
                    **_errors(400, 401, 404, 405, 413, 415, 500, 503, auth=auth),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "tags": ["Operations"],
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json_response("The process is up.", "Health")},
            },
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "tags": ["Operations"],
                "summary": "Readiness: content loaded and the store reachable",
                "security": [],
                "responses": {
                    "200": _json_response("Ready to serve.", "Readiness"),
                    "503": _json_response("Not ready; `reasons` says why.", "Readiness"),
                },
            },
        },
    }

    components: JsonObject = {"schemas": schemas}
    if security_scheme is not None:
        components["securitySchemes"] = {SECURITY_SCHEME: dict(security_scheme)}

    document: JsonObject = {
        "openapi": "3.1.0",
        "jsonSchemaDialect": DIALECT,
        "info": {
            "title": "ivig-cds",
            "version": __version__,
            "summary": "CDS Hooks 2.0 service: IVIG guidance cards",
            "description": "A CDS Hooks 2.0 service. The request and response schemas are the JSON "
                           "Schemas the service validates with.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": "CDS Hooks"}, {"name": "Operations"}],
        "paths": paths,
        "components": components,
    }
    if auth:
        document["security"] = [{SECURITY_SCHEME: []}]
    return document


def openapi_document(app: Flask, server_url: str) -> JsonObject:
    """The app's document (built on first use, then cached) with ``servers`` = ``server_url``;
    called inside one of ``app``'s requests."""
    cached: JsonObject | None = app.extensions.get(_CACHE_KEY)
    if cached is None:
        cached = build_document(context.runtime(), context.verifier().security_scheme)
        app.extensions[_CACHE_KEY] = cached
    document: JsonObject = {}
    for key, value in cached.items():
        document[key] = value
        if key == "info":
            document["servers"] = [{"url": server_url}]
    return document


@bp.get("/openapi.json")
def openapi_json() -> Response:
    server_url = context.base_url()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return jsonify(openapi_document(app, server_url))
