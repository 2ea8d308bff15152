"""Raw-socket loopback servers for the FHIR hardening tests (issue 15).

``DripServer`` answers every request with response headers and then one body byte every
``interval`` seconds (or drips the status line itself with ``drip_headers=True``): the slow server
that must never hold the service's fetch threads past a call's deadline.  ``Listener`` accepts TCP
connections and only counts them: the internal address that must never be contacted.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class Listener:
    """A TCP listener on a loopback address that counts the connections it accepts."""

    def __init__(self, host: str = "127.0.0.1", family: socket.AddressFamily = socket.AF_INET) -> None:
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="test-listener", daemon=True)

    def __enter__(self) -> Listener:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._acceptor.join(timeout=5)
        self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.accepted += 1
                self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="test-listener-conn",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.close()  # contacted is all that counts


class DripServer(Listener):
    """Answers each HTTP request with headers, then one byte every ``interval`` seconds.

    ``drip_headers=True`` drips the status line and headers too; ``payload`` drips those bytes
    straight after the connection is accepted, without reading a request (a TLS handshake that
    never ends: a TLS record header announcing 16 kB, then the bytes one by one).
    """

    def __init__(self, *, interval: float = 0.5, drip_headers: bool = False,
                 payload: bytes | None = None) -> None:
        super().__init__()
        self.interval = interval
        self.drip_headers = drip_headers
        self.payload = payload
        self.open_connections = 0
        self.most_open = 0
        self.bytes_sent = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.open_connections += 1
            self.most_open = max(self.most_open, self.open_connections)
        try:
            if self.payload is not None:
                self._drip(conn, self.payload)
                return
            conn.settimeout(0.1)
            request = b""
            while b"\r\n\r\n" not in request and not self._stopping.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                request += data
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                    b"Content-Length: 100000\r\n\r\n")
            body = b'{"resourceType": "Bundle", "entry": [' + b" " * 100_000
            if self.drip_headers:
                self._drip(conn, head + body)
            else:
                conn.sendall(head)
                self._drip(conn, body)
        except OSError:
            return  # the client gave up: expected
        finally:
            with self._lock:
                self.open_connections -= 1
            conn.close()

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        for index in range(len(data)):
            if self._stopping.wait(self.interval):
                return
            conn.sendall(data[index:index + 1])
            with self._lock:
                self.bytes_sent += 1

    def wait_closed(self, timeout: float) -> bool:
        """True when every connection has been closed by the client within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if self.open_connections == 0:
                    return True
            time.sleep(0.02)
        return False

