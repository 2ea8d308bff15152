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
   capped, ``tenant`` allowed, ``jti`` present and never seen before (in memory, or in
   Redis when several replicas share the work; Redis down means 401, not "let it in").

Tokens are never logged, not even in part; refusals are logged at INFO with the reason,
the issuer and the key id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import jwt
import redis
import requests
from jwt.algorithms import get_default_algorithms
from jwt.types import Options
from redis.backoff import NoBackoff
from redis.retry import Retry

from cds_service.errors import Unauthorized
from cds_service.settings import Settings, SettingsError
from cds_service.urls import allowed as url_allowed

logger = logging.getLogger("cds_service.http.auth")

# A compact JWS: three base64url segments (the signature may be empty: "alg": "none",
# which step 2 refuses with a clearer reason than "malformed").
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_JWKS_BYTES = 1024 * 1024
_MAX_JKU_URLS = 64  # distinct jku URLs cached per verifier; real clients use one or two
_REDIS_TIMEOUT_S = 1.0
_ISSUER_KEYS = frozenset({"jwks_url", "jwks", "jku_allow", "tenants"})
# JWK members that only a private or symmetric key has: never kept, never needed to verify.
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES256K": "secp256k1", "ES384": "P-384",
                     "ES512": "P-521", "ES521": "P-521"}

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


# What ``verify`` returns when ``AUTH`` is ``off`` (``serve --dev``).
ANONYMOUS_CLIENT = Client(iss="", sub=None, tenant=None, kid="")


# --------------------------------------------------------------------------------------
# JWK Sets
# --------------------------------------------------------------------------------------

def _refused_algorithm(alg: str) -> bool:
    return alg.lower() == "none" or alg.upper().startswith("HS")


def _key_fits(jwk: Mapping[str, Any], alg: str) -> bool:
    """Whether a JWK may verify a token signed with ``alg`` (kty/crv/alg agree)."""
    if jwk.get("alg") not in (None, alg):
        return False
    kty = jwk.get("kty")
    if alg in _EC_CURVE_FOR_ALG:
        return kty == "EC" and jwk.get("crv") == _EC_CURVE_FOR_ALG[alg]
    if alg[:2] in ("RS", "PS"):
        return kty == "RSA"
    if alg == "EdDSA":
        return kty == "OKP"
    return False


class KeySet:
    """An immutable snapshot of one JWK Set: the usable signature keys, by ``kid``."""

    def __init__(self, keys_by_kid: Mapping[str, tuple[dict[str, Any], ...]]) -> None:
        self._keys_by_kid = dict(keys_by_kid)
        # (kid, alg) -> key; filled lazily.  Concurrent fills store equal values, and a
        # dict item assignment is atomic, so no lock is needed.
        self._prepared: dict[tuple[str, str], jwt.PyJWK] = {}

    @classmethod
    def from_document(cls, document: Any) -> tuple[KeySet, int]:
        """(key set, number of keys skipped as unusable) from a parsed JWK Set document.

        Raises ``ValueError`` when the document is not a JWK Set at all.  Keys without a
        ``kid``, with ``use`` other than ``sig``, with ``key_ops`` lacking ``verify``,
        symmetric keys and keys PyJWT cannot load are skipped.
        """
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWK Set (an object with a 'keys' array)")
        keys_by_kid: dict[str, list[dict[str, Any]]] = {}
        skipped = 0
        for raw in document["keys"]:
            jwk = cls._usable_public_jwk(raw)
            if jwk is None:
                skipped += 1
                continue
            keys_by_kid.setdefault(jwk["kid"], []).append(jwk)
        return cls({kid: tuple(keys) for kid, keys in keys_by_kid.items()}), skipped

    @staticmethod
    def _usable_public_jwk(raw: Any) -> dict[str, Any] | None:
        if not isinstance(raw, dict):
            return None
        kid, use, key_ops = raw.get("kid"), raw.get("use"), raw.get("key_ops")
        if not isinstance(kid, str) or not kid or raw.get("kty") in (None, "oct"):
            return None
        if use not in (None, "sig"):
            return None
        if key_ops is not None and not (isinstance(key_ops, list) and "verify" in key_ops):
            return None
        jwk = {name: value for name, value in raw.items() if name not in _PRIVATE_JWK_MEMBERS}
        try:
            jwt.PyJWK(jwk)
        except jwt.PyJWTError:
            return None
        return jwk

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys_by_kid

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._keys_by_kid.values())

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys_by_kid)

    def find(self, kid: str, alg: str) -> jwt.PyJWK | None:
        """The key for ``kid`` that can verify ``alg``, or None."""
        prepared = self._prepared.get((kid, alg))
        if prepared is not None:
            return prepared
        for jwk in self._keys_by_kid.get(kid, ()):
            if not _key_fits(jwk, alg):
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                continue
            self._prepared[(kid, alg)] = key
            return key
        return None


def _is_fetchable_url(url: str) -> bool:
    """An absolute http(s) URL with a host, no credentials, no fragment, no dot segments."""
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\\" for ch in url):
        return False
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        has_credentials = parts.username is not None or parts.password is not None
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not hostname or has_credentials or parts.fragment:
        return False
    return all(unquote(segment) not in (".", "..") for segment in parts.path.split("/"))


@dataclass
class _CachedJwks:
    fetch_lock: threading.Lock = field(default_factory=threading.Lock)
    keys: KeySet | None = None
    attempted_at: float | None = None


class JwksCache:
    """JWK Sets fetched from URLs, cached per URL, refreshed only on demand and rate-limited."""

    def __init__(self, session: requests.Session, *, timeout_s: float, refresh_interval_s: float,
                 clock: Callable[[], float], configured_urls: Iterable[str] = (),
                 max_other_urls: int = _MAX_JKU_URLS) -> None:
        self._session = session
        self._timeout_s = timeout_s
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._max_other_urls = max_other_urls
        self._lock = threading.Lock()
        self._configured = frozenset(configured_urls)
        self._entries: dict[str, _CachedJwks] = {url: _CachedJwks() for url in self._configured}

    def cached(self, url: str) -> KeySet | None:
        """The keys last fetched from ``url``; never touches the network."""
        entry = self._entries.get(url)
        return entry.keys if entry is not None else None

    def refresh(self, url: str) -> KeySet | None:
        """Fetch ``url`` again unless it was tried less than the refresh interval ago.

        Returns the newest keys known for ``url`` (kept when a fetch fails).  Concurrent
        callers wait for one fetch rather than each fetching.
        """
        entry = self._entry(url)
        if entry is None:
            return None
        with entry.fetch_lock:
            now = self._clock()
            if entry.attempted_at is not None and 0 <= now - entry.attempted_at < self._refresh_interval_s:
                return entry.keys
            entry.attempted_at = now
            keys = self._fetch(url)
            if keys is not None:
                entry.keys = keys
            return entry.keys

    def _entry(self, url: str) -> _CachedJwks | None:
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                if len(self._entries) - len(self._configured) >= self._max_other_urls and not self._evict():
                    logger.warning("JWKS cache full (%d jku URLs); not fetching %s",
                                   self._max_other_urls, url)
                    return None
                entry = self._entries[url] = _CachedJwks()
            return entry

    def _evict(self) -> bool:
        """Make room by dropping one jku URL that gave no keys and may be tried again anyway.

        jku URLs come from unverified tokens: anyone who knows an issuer's allowed prefix can
        make up new ones.  Only dead entries older than the refresh interval are dropped, so
        made-up URLs cost at most ``max_other_urls`` fetches per interval and never push out
        keys that work.
        """
        now = self._clock()
        for url, entry in self._entries.items():
            if (url not in self._configured and entry.keys is None and entry.attempted_at is not None
                    and not 0 <= now - entry.attempted_at < self._refresh_interval_s):
                del self._entries[url]
                return True
        return False

    def _fetch(self, url: str) -> KeySet | None:
        started = time.monotonic()
        try:
            # No redirects: an allow-listed jku must not bounce us somewhere else.
            with self._session.get(url, timeout=self._timeout_s, allow_redirects=False, stream=True,
                                   headers={"Accept": "application/jwk-set+json, application/json"}
                                   ) as response:
                if response.status_code != 200:
                    logger.warning("JWKS fetch from %s failed: HTTP %d", url, response.status_code)
                    return None
                body = bytearray()
                for chunk in response.iter_content(chunk_size=64 * 1024):
                    body.extend(chunk)
                    if len(body) > _MAX_JWKS_BYTES:
                        raise ValueError(f"JWK Set larger than {_MAX_JWKS_BYTES} bytes")
                    if time.monotonic() - started > self._timeout_s:
                        raise ValueError("JWK Set download exceeded the timeout")
            keys, skipped = KeySet.from_document(json.loads(body))
        except (requests.RequestException, ValueError, RecursionError) as exc:
            logger.warning("JWKS fetch from %s failed: %s: %s", url, type(exc).__name__, exc)
            return None
        logger.info("JWKS fetched from %s: %d usable keys (kids %s), %d skipped",
                    url, len(keys), ", ".join(sorted(keys.kids)), skipped)
        return keys


# --------------------------------------------------------------------------------------
# Trusted issuers (TRUSTED_ISSUERS)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedIssuer:
    iss: str
    jwks: KeySet | None = None
    jwks_url: str | None = None
    jku_allow: tuple[str, ...] = ()
    tenants: frozenset[str] | None = None  # None: the tenant claim is not checked

    def allows_jku(self, jku: str) -> bool:
        return url_allowed(jku, self.jku_allow, wildcard=False)  # one strict check: cds_service/urls.py


def load_trusted_issuers(value: str) -> dict[str, TrustedIssuer]:
    """Parse ``TRUSTED_ISSUERS``: inline JSON (starts with ``{``) or a path to a JSON file.

    ``{"<iss>": {"jwks_url": "...", "jwks": {...}, "jku_allow": ["https://prefix/"],
    "tenants": ["..."]}}``.  Raises ``SettingsError`` naming what is wrong.
    """
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        source = "TRUSTED_ISSUERS (inline JSON)"
    else:
        path = Path(text).expanduser()
        source = f"TRUSTED_ISSUERS file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{source} cannot be read: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise SettingsError(f"{source} must be an object mapping each issuer (iss) to its keys")
    return {iss: _parse_issuer(source, iss, entry) for iss, entry in document.items()}


def _parse_issuer(source: str, iss: str, entry: Any) -> TrustedIssuer:
    where = f"{source}, issuer {iss!r}"
    if not iss.strip():
        raise SettingsError(f"{source}: an issuer (iss) may not be empty")
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: must be an object with jwks_url, jwks, jku_allow and/or tenants")
    unknown = sorted(set(entry) - _ISSUER_KEYS)
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}; known keys: {sorted(_ISSUER_KEYS)}")

    jwks_url = entry.get("jwks_url")
    if jwks_url is not None and not (isinstance(jwks_url, str) and _is_fetchable_url(jwks_url)):
        raise SettingsError(f"{where}: jwks_url must be an absolute http(s) URL")

    jwks: KeySet | None = None
    if entry.get("jwks") is not None:
        try:
            jwks, skipped = KeySet.from_document(entry["jwks"])
        except ValueError as exc:
            raise SettingsError(f"{where}: jwks is {exc}") from None
        if skipped or not len(jwks):
            raise SettingsError(f"{where}: jwks has {skipped} unusable keys (each key needs a kid, "
                                "a public asymmetric key, use 'sig' if any); fix or remove them")

    jku_allow = entry.get("jku_allow", [])
    if not isinstance(jku_allow, list) or not all(isinstance(p, str) for p in jku_allow):
        raise SettingsError(f"{where}: jku_allow must be a list of URL prefixes")
    for prefix in jku_allow:
        # The prefix must end its host part, or "https://ehr.example.org" would also
        # allow "https://ehr.example.org.attacker.net/".
        if not _is_fetchable_url(prefix) or not urlsplit(prefix).path.startswith("/"):
            raise SettingsError(f"{where}: jku_allow entry {prefix!r} must be an http(s) URL prefix "
                                "with a path, e.g. 'https://ehr.example.org/keys/'")

    tenants = entry.get("tenants")
    if tenants is not None and not (isinstance(tenants, list) and tenants
                                    and all(isinstance(t, str) and t for t in tenants)):
        raise SettingsError(f"{where}: tenants must be a non-empty list of strings (omit it to "
                            "accept any tenant)")

    if jwks is None and jwks_url is None and not jku_allow:
        raise SettingsError(f"{where}: give its keys: jwks_url, jwks or jku_allow")
    return TrustedIssuer(iss=iss, jwks=jwks, jwks_url=jwks_url, jku_allow=tuple(jku_allow),
                         tenants=frozenset(tenants) if tenants is not None else None)


# --------------------------------------------------------------------------------------
# jti replay caches
# --------------------------------------------------------------------------------------

class ReplayCacheUnavailable(Exception):
    """The replay cache cannot answer; the token must be refused (fail closed)."""


class ReplayCache(Protocol):
    def add(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """Remember (iss, jti) until ``expires_at``; False when it is already remembered."""
        ...


class MemoryReplayCache:
    """Per-process replay cache: a dict under a lock, pruned of expired entries now and then."""

    def __init__(self, prune_interval_s: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._expires_at: dict[tuple[str, str], float] = {}
        self._prune_interval_s = prune_interval_s
        self._pruned_at: float | None = None

    def __len__(self) -> int:
        return len(self._expires_at)

    def add(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        key = (iss, jti)
        with self._lock:
            if self._pruned_at is None or not 0 <= now - self._pruned_at < self._prune_interval_s:
                self._expires_at = {k: t for k, t in self._expires_at.items() if t > now}
                self._pruned_at = now
            remembered_until = self._expires_at.get(key)
            if remembered_until is not None and remembered_until > now:
                return False
            self._expires_at[key] = expires_at
            return True


class RedisReplayCache:
    """Replay cache shared by replicas: ``SET <key> 1 NX EX <ttl>``."""

    def __init__(self, url: str, *, key_prefix: str = "ivig-cds:jti:",
                 timeout_s: float = _REDIS_TIMEOUT_S) -> None:
        self.key_prefix = key_prefix
        # One immediate retry covers a pooled connection the server has closed; more
        # would only make a request wait longer before it is refused.
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 1))

    def key(self, iss: str, jti: str) -> str:
        # Hashed: fixed length whatever the client sends, and no separator ambiguity.
        digest = hashlib.sha256(json.dumps([iss, jti]).encode("utf-8")).hexdigest()
        return self.key_prefix + digest

    def add(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        ttl = max(1, math.ceil(expires_at - now))
        try:
            created = self._redis.set(self.key(iss, jti), 1, nx=True, ex=ttl)
        except (redis.RedisError, OSError) as exc:
            raise ReplayCacheUnavailable(type(exc).__name__) from exc
        return bool(created)


# --------------------------------------------------------------------------------------
# The verifier
# --------------------------------------------------------------------------------------

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
        if _refused_algorithm(alg):
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

    def __init__(self, settings: Settings, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time,
                 replay_cache: ReplayCache | None = None) -> None:
        self._enabled = settings.AUTH != "off"
        self._clock = clock
        self._issuers = load_trusted_issuers(settings.TRUSTED_ISSUERS)
        self._algorithms = _algorithm_allow_list(settings.jwt_algorithms)
        for name in ("JWT_CLOCK_SKEW_S", "JWKS_REFRESH_INTERVAL_S"):
            if getattr(settings, name) < 0:
                raise SettingsError(f"{name} may not be negative")
        for name in ("JWT_MAX_LIFETIME_S", "JWKS_TIMEOUT_S"):
            if getattr(settings, name) <= 0:
                raise SettingsError(f"{name} must be positive")
        self._skew_s = settings.JWT_CLOCK_SKEW_S
        self._max_lifetime_s = settings.JWT_MAX_LIFETIME_S
        if not self._enabled:
            logger.warning("AUTH is off: CDS client JWTs are not checked (development only)")
        elif not self._issuers:
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
                self._replay = RedisReplayCache(settings.REDIS_URL)
            except ValueError as exc:
                raise SettingsError(f"REDIS_URL cannot be used: {exc}") from None
        else:
            self._replay = MemoryReplayCache()

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
        if not self._enabled:
            return ANONYMOUS_CLIENT
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
        if _refused_algorithm(alg):
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
