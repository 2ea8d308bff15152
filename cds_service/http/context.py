"""What a request handler needs from the app, in one place: the runtime, the settings, the verifier,
and the base URL clients use.

``install`` (called by the app factory) puts them on the app; the accessors read them back inside a
request.  The extension keys are what tests read too (``app.extensions["cds_runtime"]``).
"""

from __future__ import annotations

from flask import Flask, current_app, request

from cds_service.engine.runtime import Runtime
from cds_service.http.auth import Verifier
from cds_service.settings import Settings

RUNTIME_KEY = "cds_runtime"
SETTINGS_KEY = "cds_settings"
VERIFIER_KEY = "cds_verifier"


def install(app: Flask, runtime: Runtime, verifier: Verifier) -> None:
    app.extensions[RUNTIME_KEY] = runtime
    app.extensions[SETTINGS_KEY] = runtime.settings
    app.extensions[VERIFIER_KEY] = verifier


def runtime() -> Runtime:
    rt: Runtime = current_app.extensions[RUNTIME_KEY]
    return rt


def settings() -> Settings:
    return runtime().settings


def verifier() -> Verifier:
    found: Verifier = current_app.extensions[VERIFIER_KEY]
    return found


def base_url() -> str:
    """The base URL clients use: ``PUBLIC_BASE_URL`` (required outside the development profile, so
    the JWT audience never follows the Host or X-Forwarded-* headers); only the development profile
    falls back to the request's root URL."""
    configured = settings().base_url
    if configured:
        return configured
    if not settings().development:  # unreachable: create_app refuses to start without it
        raise RuntimeError("PUBLIC_BASE_URL is required outside the development profile")
    return request.url_root.rstrip("/")
