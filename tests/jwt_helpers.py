"""Test helpers for client JWTs: a loopback JWKS server and a raw (unsigned) token builder.

Signing real tokens is ``cds_service.devtools.keys``; this module only adds what tests need
on top: somewhere to publish keys, and tokens no honest client would make.
"""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with whatever header, claims and signature bytes the test wants."""
    segments = [json.dumps(part, separators=(",", ":")).encode() for part in (header, claims)]
    return ".".join([*(b64url(s) for s in segments), b64url(signature)])


class JwksServer:
    """Serves JSON documents by path on 127.0.0.1 and counts every request per path."""

    def __init__(self) -> None:
        self.documents: dict[str, Any] = {}
        self.hits: Counter[str] = Counter()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits[self.path] += 1
                    document = server.documents.get(self.path)
                body = json.dumps(document).encode() if document is not None else b'{"error":"not found"}'
                self.send_response(200 if document is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def publish(self, path: str, *jwks: dict[str, Any]) -> str:
        """Serve ``{"keys": [...]}`` at ``path``; returns its URL."""
        with self._lock:
            self.documents[path] = {"keys": list(jwks)}
        return self.url(path)

    def total_hits(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join(timeout=2)
