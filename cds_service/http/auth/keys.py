"""JWK Sets: the usable public keys of one set (``KeySet``) and the per-URL fetch cache (``JwksCache``).

A JWK Set is fetched only for an unknown ``kid``, at most once per refresh interval per URL, never
through a redirect, never larger than ``_MAX_JWKS_BYTES``; private and symmetric key material is
dropped on load.  Used by ``verifier.ClientVerifier`` and ``issuers`` (inline ``jwks``).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import requests

from cds_service.urls import parse as parse_url

logger = logging.getLogger("cds_service.http.auth")

_MAX_JWKS_BYTES = 1024 * 1024
_MAX_JKU_URLS = 64  # distinct jku URLs cached per verifier; real clients use one or two
# JWK members that only a private or symmetric key has: never kept, never needed to verify.
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES256K": "secp256k1", "ES384": "P-384",
                     "ES512": "P-521", "ES521": "P-521"}


def refused_algorithm(alg: str) -> bool:
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


def key_url_problem(url: object, *, need_path: bool) -> str | None:
    """Why ``url`` cannot be a JWKS location (``jwks_url``, a ``jku_allow`` prefix), or None.

    The strict URL rules of ``cds_service/urls.py``, and https only: plain ``http://`` only for a
    loopback host (a test key server on this machine), never for a key host on a network.
    """
    parsed = parse_url(url)
    if not isinstance(url, str) or parsed is None:
        return "must be an absolute https URL (no credentials, fragment, dot or encoded-slash segments)"
    if need_path and not urlsplit(url).path.startswith("/"):
        # The prefix must end its host part, or "https://ehr.example.org" would also
        # allow "https://ehr.example.org.attacker.net/".
        return "must be an https URL prefix with a path, e.g. 'https://ehr.example.org/keys/'"
    if parsed.scheme != "https" and not _loopback(parsed.host):
        return "must be https (plain http only for a loopback test server such as http://127.0.0.1:PORT/)"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



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
        problem = key_url_problem(url, need_path=False)
        if problem:  # the same strict check as configuration: never contacted
            logger.warning("JWKS not fetched from %r: it %s", url[:200], problem)
            return None
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

