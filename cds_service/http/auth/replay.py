"""``jti`` replay caches: a token is used once, by every worker and replica, also after a restart.

- ``RedisReplayCache`` when ``REDIS_URL`` is set: ``SET NX EX``.
- ``SqlReplayCache`` otherwise: a row per token in the service's database (``DATABASE_URL``; a unique
  key with an expiry, SQLite or PostgreSQL), so gunicorn's workers and a restarted service share it.
- ``MemoryReplayCache``: one process only; for unit tests that build a ``ClientVerifier`` by hand.

A cache that cannot answer within ``REPLAY_TIMEOUT_S`` raises ``ReplayCacheUnavailable`` and the verifier
refuses the token (fail closed, fast); ``ping()`` tells ``/readyz`` why.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.exc import SQLAlchemyError

from cds_service.engine.store import Store, StoreTimeout

_REDIS_TIMEOUT_S = 0.5


class ReplayCacheUnavailable(Exception):
    """The replay cache cannot answer; the token must be refused (fail closed)."""


class ReplayCache(Protocol):
    def add(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        """Remember (iss, jti) until ``expires_at``; False when it is already remembered."""
        ...

    def ping(self) -> str | None:
        """None when the cache can answer, else the reason (for ``/readyz``)."""
        ...


def _digest(iss: str, jti: str) -> str:
    # Hashed: fixed length whatever the client sends, and no separator ambiguity.
    return hashlib.sha256(json.dumps([iss, jti]).encode("utf-8")).hexdigest()


class MemoryReplayCache:
    """Per-process replay cache: a dict under a lock, pruned of expired entries now and then."""

    def __init__(self, prune_interval_s: float = 30.0) -> None:
        self._lock = threading.Lock()
        self._expires_at: dict[tuple[str, str], float] = {}
        self._prune_interval_s = prune_interval_s
        self._pruned_at: float | None = None

    def __len__(self) -> int:
        return len(self._expires_at)

    def ping(self) -> str | None:
        return None

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
        return self.key_prefix + _digest(iss, jti)

    def ping(self) -> str | None:
        try:
            self._redis.ping()
            return None
        except (redis.RedisError, OSError) as exc:
            return f"redis: {type(exc).__name__}"

    def add(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        ttl = max(1, math.ceil(expires_at - now))
        try:
            created = self._redis.set(self.key(iss, jti), 1, nx=True, ex=ttl)
        except (redis.RedisError, OSError) as exc:
            raise ReplayCacheUnavailable(type(exc).__name__) from exc
        return bool(created)


class SqlReplayCache:
    """Replay cache in the service's SQL database (``jti_seen``: digest primary key, expiry), shared by
    every worker and replica using that database and kept across restarts."""

    def __init__(self, store: Store, *, timeout_s: float) -> None:
        self._store = store
        self._timeout_s = timeout_s

    def add(self, iss: str, jti: str, expires_at: float, now: float) -> bool:
        try:
            return self._store.claim_jti(_digest(iss, jti), expires_at, now, timeout=self._timeout_s)
        except (StoreTimeout, SQLAlchemyError) as exc:
            raise ReplayCacheUnavailable(f"database: {type(exc).__name__}") from exc

    def ping(self) -> str | None:
        problem = self._store.replay_ping(timeout=self._timeout_s)
        return f"database: {problem}" if problem else None
