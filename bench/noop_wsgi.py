"""A WSGI app that does no work: it reads the request body and answers ``{"cards": []}``.

Served by the same gunicorn configuration and loaded with the same calls as the service, it measures
what the HTTP layer alone costs per call (request parsing, body reads, socket I/O, the worker's thread
hand-offs): the part of the server's CPU per call that is not the service's (issue 16).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

_ANSWER = b'{"cards":[]}\n'
_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_ANSWER)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", _HEADERS)
    return [_ANSWER]
