"""Client authentication, decided once: ``build_verifier(settings)`` picks the verifier the app uses.

- ``AUTH=jwt`` with ``TRUSTED_ISSUERS``: ``ClientVerifier`` checks the CDS client's JWT on every call
  (``verifier.py``; keys in ``keys.py``, issuers in ``issuers.py``, ``jti`` replay in ``replay.py``).
- ``AUTH=jwt`` without trusted issuers: ``RefusingVerifier`` answers every call 401 (a server that
  trusts nobody must not fall open).
- ``AUTH=off`` (``serve --dev``, tests): ``NoAuthVerifier`` lets every caller in as
  ``ANONYMOUS_CLIENT``.

Every verifier has the same interface (``Verifier``): ``verify(authorization, audience) -> Client``
(or ``errors.Unauthorized``) and ``security_scheme`` (the OpenAPI scheme it enforces, None for none),
so nothing else in the package asks whether authentication is on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from cds_service.engine.store import Store
from cds_service.errors import Unauthorized
from cds_service.http.auth.issuers import TrustedIssuer, load_trusted_issuers
from cds_service.http.auth.keys import JwksCache, KeySet
from cds_service.http.auth.replay import (
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    ReplayCacheUnavailable,
    SqlReplayCache,
)
from cds_service.http.auth.verifier import ANONYMOUS_CLIENT, BEARER_JWT_SCHEME, Client, ClientVerifier
from cds_service.settings import Settings

__all__ = [
    "ANONYMOUS_CLIENT", "BEARER_JWT_SCHEME", "Client", "ClientVerifier", "JwksCache", "KeySet",
    "MemoryReplayCache", "NoAuthVerifier", "RedisReplayCache", "RefusingVerifier", "ReplayCache",
    "ReplayCacheUnavailable", "SqlReplayCache", "TrustedIssuer", "Verifier", "build_verifier", "load_trusted_issuers",
]

logger = logging.getLogger("cds_service.http.auth")


class Verifier(Protocol):
    """Who is calling: the ``Client``, or ``errors.Unauthorized(reason)`` (the reason is logged)."""

    @property
    def security_scheme(self) -> Mapping[str, str] | None: ...

    def verify(self, authorization: str | None, audience: str) -> Client: ...

    def readiness_problem(self) -> str | None:
        """Why calls cannot be answered now (e.g. the replay store is unreachable), or None."""
        ...


class NoAuthVerifier:
    """``AUTH=off``: every caller is ``ANONYMOUS_CLIENT``; the Authorization header is not read."""

    security_scheme: Mapping[str, str] | None = None

    def verify(self, authorization: str | None, audience: str) -> Client:
        return ANONYMOUS_CLIENT

    def readiness_problem(self) -> str | None:
        return None


class RefusingVerifier:
    """``AUTH=jwt`` with no trusted issuer: every call is refused (401), none is let in."""

    security_scheme: Mapping[str, str] | None = BEARER_JWT_SCHEME

    def verify(self, authorization: str | None, audience: str) -> Client:
        raise Unauthorized("no trusted issuers configured")

    def readiness_problem(self) -> str | None:
        return None


def build_verifier(settings: Settings, store: Store | None = None) -> Verifier:
    """The verifier for ``settings``: the one place that reads ``AUTH``.  ``store``: the app's
    database, the ``jti`` replay store when ``REDIS_URL`` is not set."""
    if settings.AUTH == "off":
        logger.warning("*** CLIENT AUTHENTICATION IS OFF (AUTH=off): any caller can use this service. "
                       "Development and tests only. ***")
        return NoAuthVerifier()
    if not settings.TRUSTED_ISSUERS:
        logger.warning("AUTH=jwt but no TRUSTED_ISSUERS configured: every CDS call will be refused (401)")
        return RefusingVerifier()
    return ClientVerifier(settings, store=store)
