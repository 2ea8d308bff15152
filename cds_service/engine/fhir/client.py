"""A small FHIR REST client: pooled ``requests`` sessions, reads and searches only.

Safety rules live here so that every caller gets them:

- ``cds_service.urls.allowed`` decides whether a URL may be contacted at all (``FHIR_SERVERS``);
  a URL admitted only by ``*`` goes through a session that refuses names with any internal
  address and connects to the address it vetted (``transport``);
- redirects are never followed automatically: at most ``MAX_REDIRECTS`` hops, each to the same
  origin and still allowed, so a token never leaves the server it was meant for;
- every fetch ends at its deadline to the byte: each read waits at most ``FHIR_READ_TIMEOUT_S``,
  and when the deadline passes the connection is shut down under the reading thread
  (``transport.Reaper``), so a server that drips bytes cannot hold a worker thread;
- one origin holds at most ``per_origin`` of the pool's threads; its other fetches wait in their
  own queue, so a slow server cannot delay fetches from any other;
- responses are streamed and cut off at a size cap; anything that is not a JSON object with a
  ``resourceType`` is an error;
- the bearer token is passed per request, never stored on the session or the client, and never
  appears in logs or exception text.  Errors carry a short, fixed ``reason`` (no URL, no token, no
  server-supplied text) so they can be logged and audited as they are.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from http.cookiejar import DefaultCookiePolicy
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urljoin

import requests
import urllib3
from requests.cookies import RequestsCookieJar

from cds_service.engine.fhir.transport import GuardedAdapter, Reaper, watch
from cds_service.urls import ANY, Origin, allowed, allowed_by, origin

if TYPE_CHECKING:
    from cds_service.settings import Settings

__all__ = ["FhirClient", "FhirError", "Origin", "allowed", "origin"]

DEFAULT_POOL_SIZE = 32
DEFAULT_MAX_RESPONSE_BYTES = 20 * 1024 * 1024
DEFAULT_READ_TIMEOUT_S = 1.0
MAX_REDIRECTS = 3
ACCEPT = "application/fhir+json"

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# application/json, application/fhir+json, application/json+fhir (DSTU2 servers), any */*+json.
_JSON_MEDIA = re.compile(r"^application/(json|fhir\+json|json\+fhir|[a-z0-9.+-]+\+json)$")
_CHUNK_BYTES = 64 * 1024
# A socket timeout set to exactly the time left may fire a hair before the monotonic deadline.
_CLOCK_SLACK_S = 0.005

T = TypeVar("T")


class FhirError(Exception):
    """A FHIR call that produced no usable resource.

    ``reason`` is short and fixed ("http 500", "timeout", "non-FHIR response", "response too large",
    "redirect off server", "server not allowed", ...): safe to log, to audit and to show.  ``status``
    is the HTTP status when the server answered with an error status.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _session(pool_size: int, *, public_only: bool) -> requests.Session:
    session = requests.Session()
    # No proxies or .netrc credentials from the environment (netrc auth would replace the bearer
    # token; a proxy would resolve names where we cannot vet the addresses).
    session.trust_env = False
    # The session is shared by every request of every user: a cookie set by a server for one
    # user's call must never ride along on another's.
    session.cookies = RequestsCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    session.headers.update({"Accept": ACCEPT})
    adapter = GuardedAdapter(public_only=public_only, pool_connections=pool_size, pool_maxsize=pool_size,
                             max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class FhirClient:
    """Thread-safe FHIR GET client with the worker pool ``gather`` uses.

    Build one per application (``FhirClient.from_settings(settings)``) and ``close()`` it on shutdown.
    """

    def __init__(self, *, pool_size: int = DEFAULT_POOL_SIZE,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 per_origin: int | None = None) -> None:
        if pool_size <= 0 or max_response_bytes <= 0 or read_timeout_s <= 0:
            raise ValueError("pool_size, max_response_bytes and read_timeout_s must be positive")
        self.pool_size = pool_size
        self.max_response_bytes = max_response_bytes
        self.read_timeout_s = read_timeout_s
        # Half the pool: one slow origin leaves the other half to every other server.
        self.per_origin = max(1, pool_size // 2) if per_origin is None else per_origin
        if not 1 <= self.per_origin <= pool_size:
            raise ValueError("per_origin must be between 1 and pool_size")
        self._session = _session(pool_size, public_only=False)  # URLs an explicit entry admits
        self._public_session = _session(pool_size, public_only=True)  # URLs only "*" admits
        self._reaper = Reaper()
        self._executor = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="fhir-fetch")
        self._gate = threading.RLock()
        self._running: dict[object, int] = {}
        self._waiting: dict[object, deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int = DEFAULT_POOL_SIZE) -> FhirClient:
        return cls(pool_size=pool_size, max_response_bytes=settings.FHIR_MAX_RESPONSE_BYTES,
                   read_timeout_s=settings.FHIR_READ_TIMEOUT_S)

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded worker pool shared by every ``gather`` call on this client."""
        return self._executor

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._reaper.stop()
        self._session.close()
        self._public_session.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FhirClient(pool_size={self.pool_size}, per_origin={self.per_origin}, "
                f"max_response_bytes={self.max_response_bytes}, read_timeout_s={self.read_timeout_s})")

    # ----------------------------------------------------------------------------------------------
    # Worker pool, at most ``per_origin`` threads per origin
    # ----------------------------------------------------------------------------------------------
    def submit(self, key: object, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the pool, counted against ``key`` (the origin it fetches from).

        Beyond ``per_origin`` running jobs for ``key`` the job waits in that key's own queue, never
        in front of other origins' work.  ``cancel()`` on the returned future drops a waiting job.
        """
        future: Future[T] = Future()
        with self._gate:
            if self._running.get(key, 0) < self.per_origin:
                self._running[key] = self._running.get(key, 0) + 1
                self._start(key, future, fn, args)
            else:
                self._waiting.setdefault(key, deque()).append((future, fn, args))
        return future

    def _start(self, key: object, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._executor.submit(self._work, key, future, fn, args)
        except RuntimeError as exc:  # the pool is shut down: the client is closed
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
            self._done(key)  # re-entrant: the caller holds the gate

    def _work(self, key: object, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args)
                except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            self._done(key)

    def _done(self, key: object) -> None:
        with self._gate:
            queue = self._waiting.get(key)
            while queue:
                future, fn, args = queue.popleft()
                if future.cancelled():
                    continue
                if not queue:
                    del self._waiting[key]
                self._start(key, future, fn, args)
                return
            self._waiting.pop(key, None)
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]

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
        with watch(deadline, self._reaper) as fetch:
            try:
                return self._get(url, headers, cap, deadline, start_origin, allow_list)
            except FhirError:
                if fetch.refused:
                    raise FhirError("server not allowed") from None
                if fetch.fired:
                    raise FhirError("timeout") from None
                raise

    def _get(self, url: str, headers: dict[str, str], cap: int, deadline: float, start_origin: Origin,
             allow_list: Sequence[str] | None) -> dict[str, Any]:
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FhirError("timeout")
            public_only = allow_list is not None and allowed_by(current, allow_list) == ANY
            response = self._send(current, headers, remaining, deadline, public_only)
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
                if not 200 <= status < 300:
                    raise FhirError(f"http {status}", status=status)
                media = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if not _JSON_MEDIA.match(media):
                    raise FhirError("non-FHIR response")
                body = self._read_capped(response, cap, deadline)
            return _parse_resource(body)
        raise FhirError("too many redirects")

    def _send(self, url: str, headers: dict[str, str], remaining: float, deadline: float,
              public_only: bool) -> requests.Response:
        session = self._public_session if public_only else self._session
        wait = min(self.read_timeout_s, remaining)
        try:
            return session.get(url, headers=headers, timeout=(wait, wait), stream=True,
                               allow_redirects=False)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _failure(exc, deadline) from None
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
        except requests.RequestException as exc:
            raise _failure(exc, deadline) from None
        if time.monotonic() >= deadline:
            raise FhirError("timeout")  # cut at the deadline: what was read may be a truncated body
        return bytes(body)


def _failure(exc: BaseException, deadline: float) -> FhirError:
    """"timeout" at the deadline, "read timeout" when the server fell silent for longer than the
    per-read timeout before it, else "connection failed".  requests wraps urllib3's timeouts in
    several ways (``Timeout``, ``ConnectionError(ReadTimeoutError)``), so the chain is searched."""
    if time.monotonic() >= deadline - _CLOCK_SLACK_S:
        return FhirError("timeout")
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, (requests.Timeout, TimeoutError, urllib3.exceptions.TimeoutError)):
            return FhirError("read timeout")
        first = seen.args[0] if seen.args else None
        seen = first if isinstance(first, BaseException) else (seen.__cause__ or seen.__context__)
    return FhirError("connection failed")


def _parse_resource(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FhirError("non-FHIR response") from None
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str) \
            or not document["resourceType"]:
        raise FhirError("non-FHIR response")
    return document
