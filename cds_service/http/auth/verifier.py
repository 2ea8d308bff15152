"""Who is calling: JWT verification of the CDS client (CDS Hooks 2.0 §Trusting CDS Clients).

``ClientVerifier(settings).verify(authorization_header, audience)`` returns the calling
``Client`` or raises ``errors.Unauthorized(reason)``.  The reason is for the log; the
client only ever sees a bare 401.  What is checked, in order:

1. ``Authorization: Bearer <jwt>``; a well-formed compact JWS.
2. Header: ``alg`` on the allow-list (never ``none`` or HS*), ``kid`` present, ``typ`` JWT.
3. ``iss`` (read unverified, to pick the keys) on the trusted-issuer list; a ``jku`` only
   under one of that issuer's allowed prefixes (anything else is never contacted).
4. Signature, with the issuer's key for ``kid``: inline JWKS first, then the JWKS URLs.
   Fetched JWK Sets are cached per URL and re-fetched only for an unknown ``kid``, at most
   once per ``JWKS_REFRESH_INTERVAL_S`` per URL (rotation without restart, no fetch storm).
5. Claims: ``aud`` is this endpoint, ``exp``/``iat``/``nbf`` with clock skew, lifetime
   capped, ``tenant`` allowed, ``jti`` present and never seen before by any worker or replica
   (Redis when ``REDIS_URL`` is set, else the service's database; a store that cannot answer
   within ``REPLAY_TIMEOUT_S`` means 401, not "let it in").

Tokens are never logged, not even in part; refusals are logged at INFO with the reason,
the issuer and the key id.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from jwt.algorithms import get_default_algorithms
from jwt.types import Options

from cds_service.engine.store import Store
from cds_service.errors import Unauthorized
from cds_service.http.auth.issuers import TrustedIssuer, load_trusted_issuers
from cds_service.http.auth.keys import JwksCache, KeySet, refused_algorithm
from cds_service.http.auth.replay import (
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    ReplayCacheUnavailable,
    SqlReplayCache,
)
from cds_service.settings import Settings, SettingsError

logger = logging.getLogger("cds_service.http.auth")

# A compact JWS: three base64url segments (the signature may be empty: "alg": "none",
# which step 2 refuses with a clearer reason than "malformed").
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_CHARS = 16 * 1024

# PyJWT checks the signature only; claims are checked below against the injectable clock.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_aud": False,
    "verify_exp": False,
    "verify_iat": False,
    "verify_iss": False,
    "verify_jti": False,
    "verify_nbf": False,
    "verify_sub": False,
    "require": [],
    "enforce_minimum_key_length": True,
}


@dataclass(frozen=True)
class Client:
    """The authenticated caller."""

    iss: str
    sub: str | None
    tenant: str | None
    kid: str


# What the no-auth verifier returns (``AUTH=off``, ``serve --dev``): no issuer, no key.
ANONYMOUS_CLIENT = Client(iss="", sub=None, tenant=None, kid="")


# How an OpenAPI document describes what ``ClientVerifier`` checks.
BEARER_JWT_SCHEME: Mapping[str, str] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "CDS Hooks 2.0 client JWT (asymmetrically signed; iss a trusted "
                   "issuer, aud the URL of the endpoint called, short-lived, unique jti).",
}


@dataclass
class _Attempt:
    """What the refusal log line may say about a token: its issuer and key id."""

    iss: object = None
    kid: object = None


def _loggable(value: object) -> str:
    if value is None:
        return "-"
    text = repr(value)  # repr escapes control characters: no forged log lines
    return text if len(text) <= 120 else text[:117] + "..."


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _same_audience(claimed: str, expected: str) -> bool:
    # Exact, except that one trailing slash on either side is forgiven.
    return claimed in (expected, expected + "/") or claimed + "/" == expected


def _algorithm_allow_list(configured: list[str]) -> tuple[str, ...]:
    known = {name.lower(): name for name in get_default_algorithms()}
    allowed: list[str] = []
    for alg in configured:
        if refused_algorithm(alg):
            logger.warning("JWT_ALGORITHMS: %r is never accepted (no 'none', no symmetric algorithms)", alg)
            continue
        if alg.lower() not in known:
            raise SettingsError(f"JWT_ALGORITHMS: unknown algorithm {alg!r}")
        allowed.append(known[alg.lower()])
    if not allowed:
        raise SettingsError("JWT_ALGORITHMS must name at least one asymmetric algorithm, e.g. ES384,RS384")
    return tuple(dict.fromkeys(allowed))


class ClientVerifier:
    """Verifies the CDS client's JWT on every call.  Thread-safe; build one per app."""

    # The OpenAPI security scheme this verifier enforces (``http/openapi.py`` declares it).
    security_scheme: Mapping[str, str] | None = BEARER_JWT_SCHEME

    def __init__(self, settings: Settings, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time,
                 replay_cache: ReplayCache | None = None, store: Store | None = None) -> None:
        self._clock = clock
        self._issuers = load_trusted_issuers(settings.TRUSTED_ISSUERS)
        self._algorithms = _algorithm_allow_list(settings.jwt_algorithms)
        # Numeric ranges are checked by Settings.validate(); what is checked here is what only
        # building the verifier can find out (issuer documents, algorithm names PyJWT knows).
        self._skew_s = settings.JWT_CLOCK_SKEW_S
        self._max_lifetime_s = settings.JWT_MAX_LIFETIME_S
        if not self._issuers:
            raise SettingsError("AUTH=jwt needs TRUSTED_ISSUERS (a JSON file path or inline JSON); "
                                "use AUTH=off only for development")
        self._jwks = JwksCache(
            session if session is not None else requests.Session(),
            timeout_s=settings.JWKS_TIMEOUT_S,
            refresh_interval_s=settings.JWKS_REFRESH_INTERVAL_S,
            clock=clock,
            configured_urls=[i.jwks_url for i in self._issuers.values() if i.jwks_url],
        )
        if replay_cache is not None:
            self._replay: ReplayCache = replay_cache
        elif settings.REDIS_URL:
            try:
                self._replay = RedisReplayCache(settings.REDIS_URL, timeout_s=settings.REPLAY_TIMEOUT_S)
            except ValueError as exc:
                raise SettingsError(f"REDIS_URL cannot be used: {exc}") from None
        elif store is not None:  # the app's database: shared by every worker and replica, kept on restart
            self._replay = SqlReplayCache(store, timeout_s=settings.REPLAY_TIMEOUT_S)
        else:  # a verifier built by hand (unit tests): this process only
            self._replay = MemoryReplayCache()

    def readiness_problem(self) -> str | None:
        """Why this verifier cannot answer calls now (the replay store is unreachable), or None."""
        problem = self._replay.ping()
        return f"replay store unreachable ({problem})" if problem else None

    @property
    def issuers(self) -> Mapping[str, TrustedIssuer]:
        return dict(self._issuers)

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self._algorithms

    def verify(self, authorization: str | None, audience: str) -> Client:
        """The client that signed the bearer token in ``authorization`` for ``audience``.

        ``audience`` is this endpoint's public URL (built from ``PUBLIC_BASE_URL``, not
        from the proxied request URL).  Raises ``Unauthorized(reason)``.
        """
        attempt = _Attempt()
        try:
            return self._verify(authorization, audience, attempt)
        except Unauthorized as refusal:
            logger.info("client JWT refused: %s (iss=%s, kid=%s)",
                        refusal.detail, _loggable(attempt.iss), _loggable(attempt.kid))
            raise

    # -- the steps ----------------------------------------------------------------------
    def _verify(self, authorization: str | None, audience: str, attempt: _Attempt) -> Client:
        token = self._bearer_token(authorization)
        alg, kid, jku = self._check_header(token, attempt)

        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("malformed JWT payload") from None
        iss = unverified.get("iss")
        attempt.iss = iss
        if not isinstance(iss, str):
            raise Unauthorized("iss missing")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise Unauthorized("iss is not a trusted issuer")
        if jku is not None and not issuer.allows_jku(jku):
            raise Unauthorized("jku is not on the issuer's allow-list")

        key = self._find_key(issuer, kid, alg, jku)
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], options=_SIGNATURE_ONLY)
        except jwt.InvalidSignatureError:
            raise Unauthorized("bad signature") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"token refused ({type(exc).__name__})") from None
        if claims.get("iss") != iss:  # the same bytes, now verified
            raise Unauthorized("iss changed after verification")

        expires_at = self._check_claims(claims, issuer, audience)
        jti: str = claims["jti"]
        try:
            first_use = self._replay.add(iss, jti, expires_at, self._clock())
        except ReplayCacheUnavailable as exc:
            logger.warning("jti replay cache unavailable (%s): refusing the call", exc)
            raise Unauthorized("replay cache unavailable") from None
        if not first_use:
            raise Unauthorized("jti replayed")

        sub, tenant = claims.get("sub"), claims.get("tenant")
        return Client(iss=iss, sub=sub if isinstance(sub, str) else None,
                      tenant=tenant if isinstance(tenant, str) else None, kid=kid)

    @staticmethod
    def _bearer_token(authorization: str | None) -> str:
        if not authorization or not authorization.strip():
            raise Unauthorized("no Authorization header")
        parts = authorization.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise Unauthorized("Authorization is not 'Bearer <jwt>'")
        token = parts[1]
        if len(token) > _MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
            raise Unauthorized("bearer token is not a compact JWT")
        return token

    def _check_header(self, token: str, attempt: _Attempt) -> tuple[str, str, str | None]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed JWT header") from None
        kid = header.get("kid")
        attempt.kid = kid
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise Unauthorized("alg missing")
        if refused_algorithm(alg):
            raise Unauthorized("alg refused (none or symmetric)")
        if alg not in self._algorithms:
            raise Unauthorized("alg not allowed")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("kid missing")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":
            raise Unauthorized("typ is not JWT")
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise Unauthorized("jku is not a string")
        return alg, kid, jku

    def _find_key(self, issuer: TrustedIssuer, kid: str, alg: str, jku: str | None) -> jwt.PyJWK:
        urls = list(dict.fromkeys(url for url in (issuer.jwks_url, jku) if url))
        known: list[KeySet] = [issuer.jwks] if issuer.jwks is not None else []
        known += [keys for keys in map(self._jwks.cached, urls) if keys is not None]
        for keys in known:
            key = keys.find(kid, alg)
            if key is not None:
                return key
        # Unknown here: the client may have rotated its keys.  Fetch again (rate-limited).
        for url in urls:
            refreshed = self._jwks.refresh(url)
            if refreshed is None:
                continue
            known.append(refreshed)
            key = refreshed.find(kid, alg)
            if key is not None:
                return key
        if any(kid in keys for keys in known):
            raise Unauthorized(f"kid has no key usable with {alg}")
        raise Unauthorized("unknown kid")

    def _check_claims(self, claims: dict[str, Any], issuer: TrustedIssuer, audience: str) -> float:
        """Check aud, times, lifetime, jti and tenant; return when the jti may be forgotten."""
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) for a in audiences):
            raise Unauthorized("aud missing or malformed")
        if not any(_same_audience(a, audience) for a in audiences):
            raise Unauthorized("aud is not this endpoint")

        now, skew = self._clock(), self._skew_s
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        if exp is None:
            raise Unauthorized("exp missing or not a number")
        if iat is None:
            raise Unauthorized("iat missing or not a number")
        if exp + skew <= now:
            raise Unauthorized("token expired")
        if iat > now + skew:
            raise Unauthorized("iat is in the future")
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None:
                raise Unauthorized("nbf is not a number")
            if nbf > now + skew:
                raise Unauthorized("token not valid yet (nbf)")
        if exp <= iat:
            raise Unauthorized("exp is not after iat")
        if exp - iat > self._max_lifetime_s:
            raise Unauthorized("token lifetime exceeds JWT_MAX_LIFETIME_S")

        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti.strip():
            raise Unauthorized("jti missing")

        if issuer.tenants is not None:
            tenant = claims.get("tenant")
            if not isinstance(tenant, str) or tenant not in issuer.tenants:
                raise Unauthorized("tenant missing or not allowed for this issuer")
        return exp + skew
