"""``create_app``: settings, blueprints, error handlers, CORS, security headers."""

from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_service.engine.runtime import Runtime
from cds_service.errors import CdsError
from cds_service.ids import new_request_id
from cds_service.logs import clear_sensitive, configure_logging, mark_sensitive
from cds_service.settings import Settings, load_settings

log = logging.getLogger("cds_service.http.app")

_HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
               429: "too_many_requests"}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The WSGI app.  Settings from ``CDS_*`` env vars, overridden by ``config`` (keys without
    the prefix; an unknown key raises ``SettingsError``)."""
    settings = load_settings(config)
    configure_logging(settings.LOG_LEVEL)
    app = Flask(__name__, static_folder=None)  # static files belong to the web blueprints
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions["cds_settings"] = settings
    app.extensions["cds_runtime"] = Runtime.build(settings)
    if settings.AUTH == "off":
        log.warning("*** CLIENT AUTHENTICATION IS OFF (AUTH=off): any caller can use this service. "
                    "Development and tests only. ***")
    else:
        from cds_service.http.auth import ClientVerifier

        app.extensions["cds_verifier"] = ClientVerifier(settings) if settings.TRUSTED_ISSUERS else None
        if not settings.TRUSTED_ISSUERS:
            log.warning("AUTH=jwt but no TRUSTED_ISSUERS configured: every CDS call will be refused (401)")

    if settings.cors_origins:
        origins: Any = "*" if "*" in settings.cors_origins else settings.cors_origins
        CORS(app, origins=origins, allow_headers=["Authorization", "Content-Type"],
             methods=["GET", "POST", "OPTIONS"], max_age=600, expose_headers=["X-Request-Id"])

    from cds_service.http.api import bp as api_bp

    app.register_blueprint(api_bp)
    from cds_service.http.openapi import bp as openapi_bp

    app.register_blueprint(openapi_bp)
    from cds_service.http.web import register_web

    register_web(app, settings)
    _register_errors(app)
    _register_headers(app, settings)
    _tune_garbage_collector()
    return app


def _tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the request path.

    A call allocates tens of thousands of short-lived objects (the decoded prefetch) and no
    cycles; with CPython's default thresholds the collector ran dozens of times per large call
    and re-scanned everything loaded at start-up (value sets, templates, modules), which made
    the cost per resource grow with prefetch size.  Freezing the start-up heap and collecting
    the young generation less often keeps the cost linear.  Process-wide, once.
    """
    gc.freeze()
    threshold = gc.get_threshold()
    if threshold[0] < 50_000:
        gc.set_threshold(50_000, max(threshold[1], 20), max(threshold[2], 100))


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CdsError)
    def cds_error(exc: CdsError) -> Response:
        if exc.status == 401:
            log.info("401 on %s: %s", request.path, exc.detail or "unauthorized")
        response = jsonify(exc.body())
        response.status_code = exc.status
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or ""
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body larger than {limit} bytes"
        elif status == 405:
            allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or []))
            detail = f"{request.method} is not allowed on {request.path}"
            if allowed:
                detail += f"; use {allowed}"
        elif status == 404:
            detail = f"no resource at {request.path[:200]}"
        response = jsonify({"error": _HTTP_CODES.get(status, "http_error"), "detail": detail})
        response.status_code = status
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", "-")
        # The stack (files, lines, functions) but not the exception's message: a message can
        # carry what the code was handling (a resource, a name), which no redaction list knows.
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.error("unexpected error handling request %s (%s)\nTraceback (most recent call last):\n%s",
                  request_id, type(exc).__name__, stack.rstrip())
        response = jsonify({"error": "internal_error",
                            "detail": f"unexpected server error; quote request id {request_id}"})
        response.status_code = 500
        return response


def _register_headers(app: Flask, settings: Settings) -> None:
    @app.before_request
    def assign_request_id() -> None:
        g.request_id = new_request_id()
        clear_sensitive()
        authorization = request.headers.get("Authorization")
        if authorization:
            mark_sensitive(authorization, authorization.split(" ")[-1])

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Request-Id"] = getattr(g, "request_id", "")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path.startswith("/cds-services") or request.path.startswith("/readyz"):
            response.headers["Cache-Control"] = "no-store"
        if response.mimetype == "text/html":
            response.headers["X-Frame-Options"] = "DENY"
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data: https:; style-src 'self'; script-src 'self'; "
                "connect-src *; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        return response
