"""The sockets under ``FhirClient``: deadlines kept to the byte, and addresses vetted and pinned.

Two things a plain ``requests`` session cannot do, done in urllib3's connection class:

- **A fetch ends at its deadline**, however the server drips.  Socket timeouts bound each read,
  not a sequence of reads: a server that sends one byte every half second never trips them.  Each
  fetch runs inside ``watch(deadline)``; every connection it uses is registered with that watch,
  and one ``Reaper`` thread shuts the connection's socket down (``shutdown(SHUT_RDWR)``, through
  a duplicate descriptor so that it also works during the TLS handshake) when the deadline
  passes.  A blocked read then returns at once and the fetch thread is free.  A connection
  already handed to another fetch (keep-alive) is never touched.
- **Addresses are resolved once, vetted, and the vetted one is connected to.**  Under
  ``FHIR_SERVERS=*`` (``GuardedAdapter(public_only=True)``) a name with ANY internal address
  (``urls.is_internal``: loopback, private, link-local and metadata, ...) is refused before a
  connection is attempted; TLS still checks the certificate against the name (SNI and hostname
  come from the URL), and there is no second lookup a rebinding DNS server could answer
  differently.

Name resolution (``getaddrinfo``) cannot be interrupted; the system resolver's own timeouts bound it.
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import ipaddress
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from cds_service.urls import is_internal


class Watch:
    """One fetch's deadline and the connections it has used."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False  # the deadline passed while the fetch was still running
        self.refused = False  # a connection was refused: the name has an internal address
        self._connections: list[_Guarded] = []
        self._lock = threading.Lock()
        self._done = False

    def add(self, connection: _Guarded) -> None:
        with self._lock:
            if not self._done:
                self._connections.append(connection)
            fired = self.fired and not self._done
        if fired:
            connection._cut(self)

    def fire(self) -> None:
        with self._lock:
            if self._done or self.fired:
                return
            self.fired = True
            connections = list(self._connections)
        for connection in connections:
            connection._cut(self)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._connections.clear()


_CURRENT: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("fhir_fetch_watch", default=None)


class Reaper:
    """One thread that fires each watch at its deadline (started on first use)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._counter = itertools.count()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def schedule(self, watch: Watch) -> None:
        with self._condition:
            if self._stopped:
                return
            heapq.heappush(self._heap, (watch.deadline, next(self._counter), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="fhir-deadline", daemon=True)
                self._thread.start()
            self._condition.notify()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._heap.clear()
            self._condition.notify()

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._condition.wait(wait)
                if self._stopped:
                    return
                _, _, due = heapq.heappop(self._heap)
            due.fire()


@contextlib.contextmanager
def watch(deadline: float, reaper: Reaper) -> Iterator[Watch]:
    """Run a fetch under ``deadline``: its connections are cut when the deadline passes."""
    current = Watch(deadline)
    reaper.schedule(current)
    token = _CURRENT.set(current)
    try:
        yield current
    finally:
        _CURRENT.reset(token)
        current.finish()


class AddressRefused(OSError):
    """The name resolves to an internal address, and only public ones may be contacted."""


def _resolve(host: str, port: int, public_only: bool) -> list[tuple[Any, ...]]:
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    if public_only:
        for info in infos:
            if is_internal(ipaddress.ip_address(str(info[4][0]))):
                raise AddressRefused("address not allowed")
    return infos


class _Guarded(HTTPConnection):
    """An urllib3 connection that connects to vetted addresses and can be cut by its watch."""

    public_only = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_lock = threading.Lock()
        self._guard: socket.socket | None = None  # a dup of the socket: shutdown() reaches TLS too
        self._watch: Watch | None = None

    def _new_conn(self) -> socket.socket:
        current = _CURRENT.get()
        try:
            infos = _resolve(self._dns_host, self.port, self.public_only)
        except AddressRefused as exc:
            if current is not None:
                current.refused = True
            raise NewConnectionError(self, "address not allowed") from exc
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            timeout = self.timeout if isinstance(self.timeout, (int, float)) else None
            if current is not None:
                left = max(0.001, current.deadline - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            sock = socket.socket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                sock.connect(address)  # the vetted address itself: no second lookup
            except TimeoutError as exc:
                sock.close()
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._watch_socket(sock, current)
            return sock
        raise NewConnectionError(self, f"failed to establish a new connection: {error}")

    def _watch_socket(self, sock: socket.socket, current: Watch | None) -> None:
        with self._guard_lock:
            if self._guard is not None:
                self._guard.close()
            self._guard = sock.dup()
            self._watch = current
        if current is not None:
            current.add(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        # A pooled connection now serves another fetch: that fetch's watch owns it.
        current = _CURRENT.get()
        with self._guard_lock:
            self._watch = current
        if current is not None and self._guard is not None:
            current.add(self)
        super().request(*args, **kwargs)

    def _cut(self, by: Watch) -> None:
        with self._guard_lock:
            if self._watch is not by or self._guard is None:
                return
            with contextlib.suppress(OSError):
                self._guard.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._guard_lock:
            if self._guard is not None:
                self._guard.close()
                self._guard = None
            self._watch = None
        super().close()


class _GuardedHTTPS(_Guarded, HTTPSConnection):
    pass


class _PublicHTTP(_Guarded):
    public_only = True


class _PublicHTTPS(_GuardedHTTPS):
    public_only = True


def _pools(public_only: bool) -> dict[str, type[HTTPConnectionPool]]:
    class Pool(HTTPConnectionPool):
        ConnectionCls = _PublicHTTP if public_only else _Guarded

    class TLSPool(HTTPSConnectionPool):
        ConnectionCls = _PublicHTTPS if public_only else _GuardedHTTPS

    return {"http": Pool, "https": TLSPool}


class GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections are watched; ``public_only`` also vets addresses."""

    def __init__(self, *, public_only: bool, **kwargs: Any) -> None:
        self.public_only = public_only
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pools(self.public_only)
