"""A small FHIR REST client: one pooled ``requests.Session``, reads and searches only.

Safety rules live here so that every caller gets them:

- ``allowed`` decides whether a base URL may be contacted at all (``FHIR_SERVERS``);
- redirects are never followed automatically: at most ``MAX_REDIRECTS`` hops, each to the same
  origin and still allowed, so a token never leaves the server it was meant for;
- responses are streamed and cut off at a size cap; anything that is not a JSON object with a
  ``resourceType`` is an error;
- the bearer token is passed per request, never stored on the session or the client, and never
  appears in logs or exception text.  Errors carry a short, fixed ``reason`` (no URL, no token, no
  server-supplied text) so they can be logged and audited as they are.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar

if TYPE_CHECKING:
    from cds_service.settings import Settings

DEFAULT_POOL_SIZE = 32
DEFAULT_MAX_RESPONSE_BYTES = 20 * 1024 * 1024
MAX_REDIRECTS = 3
ACCEPT = "application/fhir+json"

_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# application/json, application/fhir+json, application/json+fhir (DSTU2 servers), any */*+json.
_JSON_MEDIA = re.compile(r"^application/(json|fhir\+json|json\+fhir|[a-z0-9.+-]+\+json)$")
# Whitespace, control characters and backslashes have no place in a base URL; parsers disagree on them.
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
_CHUNK_BYTES = 64 * 1024

Origin = tuple[str, str, int]


class FhirError(Exception):
    """A FHIR call that produced no usable resource.

    ``reason`` is short and fixed ("http 500", "timeout", "non-FHIR response", "response too large",
    "redirect off server", ...): safe to log, to audit and to show.  ``status`` is the HTTP status
    when the server answered with an error status.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# --------------------------------------------------------------------------------------------------
# Allow-list
# --------------------------------------------------------------------------------------------------

def _split(url: str) -> SplitResult | None:
    """``url`` split, or None when it is not a plain absolute http(s) URL without userinfo."""
    if not isinstance(url, str) or not url or _UNSAFE_CHARS.search(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc or not parts.hostname:
        return None
    if "@" in parts.netloc or parts.fragment:
        return None
    if port == 0:
        return None
    return parts


def origin(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL, default port filled in; None when not usable."""
    parts = _split(url)
    if parts is None or parts.hostname is None:
        return None
    scheme = parts.scheme.lower()
    return scheme, parts.hostname.lower(), parts.port or _DEFAULT_PORTS[scheme]


def _path_segments(path: str) -> list[str] | None:
    """Non-empty path segments, or None when the path has a dot segment (plain or percent-encoded)
    that a server could resolve to somewhere else."""
    segments = [s for s in path.split("/") if s]
    for segment in segments:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            return None
    return segments


def allowed(base_url: str, allow_list: Sequence[str]) -> bool:
    """May ``base_url`` be contacted under ``allow_list`` (the ``FHIR_SERVERS`` entries)?

    - ``*`` allows any ``https`` URL (never plain ``http``);
    - any other entry is a URL prefix: same scheme, host and port (default ports normalised), and the
      entry's path is a whole-segment prefix of the URL's path, so ``https://good.example.org`` does
      not admit ``https://good.example.org.evil.com`` and ``/fhir`` does not admit ``/fhir-admin``;
    - plain ``http`` only through an entry that names that ``http://`` prefix;
    - URLs with userinfo (``user@host``), other schemes, fragments, dot segments, whitespace or
      backslashes are never allowed.  The query string is not part of the match.
    """
    target = origin(base_url)
    if target is None:
        return False
    target_segments = _path_segments(urlsplit(base_url).path)
    if target_segments is None:
        return False
    for raw_entry in allow_list:
        entry = raw_entry.strip()
        if entry == "*":
            if target[0] == "https":
                return True
            continue
        entry_origin = origin(entry)
        if entry_origin is None or entry_origin != target:
            continue
        entry_parts = urlsplit(entry)
        if entry_parts.query:
            continue  # a prefix with a query string is a configuration mistake: match nothing
        entry_segments = _path_segments(entry_parts.path)
        if entry_segments is None:
            continue
        if target_segments[: len(entry_segments)] == entry_segments:
            return True
    return False


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------

class FhirClient:
    """Thread-safe FHIR GET client on one pooled session, with the worker pool ``gather`` uses.

    Build one per application (``FhirClient.from_settings(settings)``) and ``close()`` it on shutdown.
    """

    def __init__(self, *, pool_size: int = DEFAULT_POOL_SIZE,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 proxies: dict[str, str] | None = None) -> None:
        if pool_size <= 0 or max_response_bytes <= 0:
            raise ValueError("pool_size and max_response_bytes must be positive")
        self.pool_size = pool_size
        self.max_response_bytes = max_response_bytes
        session = requests.Session()
        # No proxies or .netrc credentials from the environment (netrc auth would replace the bearer
        # token); explicit proxies only.
        session.trust_env = False
        if proxies:
            session.proxies.update(proxies)
        # The session is shared by every request of every user: a cookie set by a server for one
        # user's call must never ride along on another's.
        session.cookies = RequestsCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        session.headers.update({"Accept": ACCEPT})
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="fhir-fetch")

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int = DEFAULT_POOL_SIZE) -> FhirClient:
        return cls(pool_size=pool_size, max_response_bytes=settings.FHIR_MAX_RESPONSE_BYTES)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded worker pool shared by every ``gather`` call on this client."""
        return self._executor

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FhirClient(pool_size={self.pool_size}, max_response_bytes={self.max_response_bytes})"

    # ----------------------------------------------------------------------------------------------
    def get(self, url: str, token: str | None, timeout: float, *,
            allow_list: Sequence[str] | None = None, max_bytes: int | None = None) -> dict[str, Any]:
        """GET ``url`` and return the FHIR resource (a dict with ``resourceType``).

        ``timeout`` bounds the whole call (connect, redirects, body), not each socket read alone.
        ``allow_list``, when given, must admit ``url`` and every redirect target; redirect targets
        must in any case be on the same origin as ``url``.  Raises ``FhirError``.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        cap = self.max_response_bytes if max_bytes is None else max_bytes
        start_origin = origin(url)
        if start_origin is None:
            raise FhirError("invalid url")
        if allow_list is not None and not allowed(url, allow_list):
            raise FhirError("server not allowed")
        headers = {"Accept": ACCEPT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FhirError("timeout")
            response = self._send(current, headers, remaining, deadline)
            with response:
                status = response.status_code
                if status in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FhirError(f"http {status}", status=status)
                    target = urljoin(current, location)
                    if origin(target) != start_origin or (
                            allow_list is not None and not allowed(target, allow_list)):
                        raise FhirError("redirect off server")
                    current = target
                    continue
                if status >= 400:
                    raise FhirError(f"http {status}", status=status)
                if not 200 <= status < 300:
                    raise FhirError(f"http {status}", status=status)
                media = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if not _JSON_MEDIA.match(media):
                    raise FhirError("non-FHIR response")
                body = self._read_capped(response, cap, deadline)
            return _parse_resource(body)
        raise FhirError("too many redirects")

    def _send(self, url: str, headers: dict[str, str], remaining: float,
              deadline: float) -> requests.Response:
        try:
            return self._session.get(url, headers=headers, timeout=(remaining, remaining), stream=True,
                                     allow_redirects=False)
        except requests.Timeout:
            raise FhirError("timeout") from None
        except requests.ConnectionError:
            # requests reports some timeouts as connection errors; the clock tells them apart.
            raise FhirError("timeout" if time.monotonic() >= deadline else "connection failed") from None
        except requests.RequestException:
            raise FhirError("request failed") from None

    @staticmethod
    def _read_capped(response: requests.Response, cap: int, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            raise FhirError("response too large")
        body = bytearray()
        try:
            # iter_content decodes gzip/deflate, so the cap bounds what we hold, not the wire size.
            for chunk in response.iter_content(chunk_size=_CHUNK_BYTES):
                body.extend(chunk)
                if len(body) > cap:
                    raise FhirError("response too large")
                if time.monotonic() > deadline:
                    raise FhirError("timeout")
        except requests.RequestException:
            raise FhirError("timeout" if time.monotonic() >= deadline else "connection failed") from None
        return bytes(body)


def _parse_resource(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FhirError("non-FHIR response") from None
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str) \
            or not document["resourceType"]:
        raise FhirError("non-FHIR response")
    return document
