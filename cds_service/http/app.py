"""``create_app``: the Flask app factory — settings, runtime, client verifier, blueprints, the one
error handler (``errors.ERROR_CODES`` for the service's errors and werkzeug's), CORS, security headers."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Flask, Response, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cds_service.engine.runtime import Runtime
from cds_service.errors import CdsError, InternalError, error_for_status
from cds_service.http import collector, context
from cds_service.http.auth import build_verifier
from cds_service.ids import new_request_id
from cds_service.logs import clear_sensitive, configure_logging, mark_sensitive
from cds_service.settings import Settings, SettingsError, load_settings

log = logging.getLogger("cds_service.http.app")

_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON (``jsonify``, ``request.get_json``) with orjson: the same bytes as the default
    provider configured here (UTF-8, no ASCII escaping, keys in insertion order, compact, one
    trailing newline), several times faster for large bodies.  Dates and dataclasses go through
    Flask's ``default`` as before; NaN / Infinity (never in an answer: issue 10) would be ``null``."""

    sort_keys = False
    ensure_ascii = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=self.default, option=_ORJSON_OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        body = orjson.dumps(obj, default=self.default, option=_ORJSON_OPTIONS | orjson.OPT_APPEND_NEWLINE)
        return Response(body, mimetype=self.mimetype)  # the app's response_class (not customised here)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The WSGI app.  Settings from ``CDS_*`` env vars, overridden by ``config`` (keys without
    the prefix; an unknown key raises ``SettingsError``)."""
    settings = load_settings(config)
    problems = settings.production_problems()
    if problems:  # every entry point (serve, the image's gunicorn command, any WSGI file) refuses alike
        raise SettingsError("; ".join(problems))
    configure_logging(settings.LOG_LEVEL)
    app = Flask(__name__, static_folder=None)  # static files belong to the web blueprints
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.MAX_BODY_BYTES
    runtime = Runtime.build(settings)
    context.install(app, runtime, build_verifier(settings, runtime.store))

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
    collector.tune()
    return app


def _error_response(error: CdsError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    return response


def _register_errors(app: Flask) -> None:
    @app.errorhandler(CdsError)
    def cds_error(exc: CdsError) -> Response:
        response = _error_response(exc)
        if exc.status == 401:
            log.info("401 on %s: %s", request.path, exc.detail or "unauthorized")
            response.headers["WWW-Authenticate"] = "Bearer"  # RFC 6750 §3; the body stays bare
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        """werkzeug's errors (routing, body size) answered like the service's own."""
        status = exc.code or 500
        detail = exc.description or ""
        valid_methods = list(getattr(exc, "valid_methods", None) or [])
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            detail = f"request body larger than {limit} bytes"
        elif status == 405:
            detail = f"{request.method} is not allowed on {request.path}"
            if valid_methods:
                detail += f"; use {', '.join(sorted(valid_methods))}"
        elif status == 404:
            detail = f"no resource at {request.path[:200]}"
        response = _error_response(error_for_status(status, detail))
        if status == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        request_id = getattr(g, "request_id", "-")
        # The stack (files, lines, functions) but not the exception's message: a message can
        # carry what the code was handling (a resource, a name), which no redaction list knows.
        stack = "".join(traceback.format_tb(exc.__traceback__))
        log.error("unexpected error handling request %s (%s)\nTraceback (most recent call last):\n%s",
                  request_id, type(exc).__name__, stack.rstrip())
        return _error_response(InternalError(f"unexpected server error; quote request id {request_id}"))


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
