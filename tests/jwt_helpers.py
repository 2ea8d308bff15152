"""Test helpers for client JWTs: a loopback JWKS server and a raw (unsigned) token builder.

Signing real tokens is ``cds_service.devtools.keys``; this module only adds what tests need
on top: somewhere to publish keys, and tokens no honest client would make.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loopback import LoopbackServer, Response


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS with whatever header, claims and signature bytes the test wants."""
    segments = [json.dumps(part, separators=(",", ":")).encode() for part in (header, claims)]
    return ".".join([*(b64url(s) for s in segments), b64url(signature)])


class JwksServer:
    """Serves JWKS documents by path on the loopback server and counts every request per path."""

    def __init__(self) -> None:
        self.routes: dict[str, Response] = {}  # path -> document; looked up per request
        self._server = LoopbackServer(self.routes, name="jwks-server")
        self.base_url = self._server.origin

    @property
    def hits(self) -> Counter[str]:
        """Requests per path (query included), whether a document was there or not."""
        return Counter(request.path for request in list(self._server.requests))

    def url(self, path: str) -> str:
        return self.base_url + path

    def publish(self, path: str, *jwks: dict[str, Any]) -> str:
        """Serve ``{"keys": [...]}`` at ``path`` (anything else answers 404); returns its URL."""
        self.routes[path] = Response(200, {"keys": list(jwks)})
        return self.url(path)

    def total_hits(self) -> int:
        return len(self._server.requests)

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        with self._server:
            yield self
