"""A loopback FHIR server for the acceptance tests' fetch path, on the tests' one loopback server.

It answers reads and searches over ``resources`` with ``acceptance.support.search`` (independent of
the service's own search helper), pages with ``page_size`` and misbehaves on ``faults``: a fragment
of the request target mapped to "500"/"401" (an OperationOutcome with that status), "html" (a login
page), "redirect:<origin>" (302 to the same target there) or "sleep:<seconds>" (then answers).
"""

from __future__ import annotations

import re
from typing import Any

from loopback import LoopbackServer, Request, Response

from acceptance.support import search

FHIR_JSON = "application/fhir+json"


def _outcome(status: int, code: str) -> Response:
    return Response(status, {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]},
                    FHIR_JSON)


class FhirServer:
    """Started on creation; ``close()`` stops it. ``requests``: (target, Authorization) per request."""

    def __init__(self) -> None:
        self.resources: list[dict[str, Any]] = []
        self.page_size: int | None = None
        self.faults: dict[str, str] = {}
        self._server = LoopbackServer(self._answer, name="acceptance-fhir").start()
        self.origin = self._server.origin
        self.base = self._server.url("/fhir")

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        return [(r.path, r.authorization) for r in list(self._server.requests)]

    def reset(self, resources: list[dict[str, Any]], page_size: int | None = None,
              faults: dict[str, str] | None = None) -> None:
        self.resources = resources
        self.page_size = page_size
        self.faults = faults or {}
        self._server.clear()

    def close(self) -> None:
        self._server.stop()

    def _answer(self, request: Request) -> Response:
        for fragment, mode in self.faults.items():
            if fragment in request.path:
                if mode.startswith("sleep:"):
                    self._server.sleep(float(mode.removeprefix("sleep:")))
                    continue
                if mode == "html":
                    return Response(200, b"<html><body>Login</body></html>", "text/html")
                if mode.startswith("redirect:"):
                    return Response(302, headers={"Location": mode.removeprefix("redirect:") + request.path})
                return _outcome(int(mode), "exception")
        relative = request.path.removeprefix("/fhir/")
        page = 0
        match = re.search(r"[&?]_acc_page=(\d+)", relative)
        if match:
            page = int(match.group(1))
            relative = relative.replace(match.group(0), "")
        result = search(self.resources, relative, self.base)
        if result is None:
            return _outcome(404, "not-found")
        if result.get("resourceType") == "Bundle" and self.page_size:
            entries = result["entry"]
            size = self.page_size
            result["entry"] = entries[page * size:(page + 1) * size]
            if (page + 1) * size < len(entries):
                sep = "&" if "?" in relative else "?"
                result["link"] = [{"relation": "next", "url": f"{self.base}/{relative}{sep}_acc_page={page + 1}"}]
        return Response(200, result, FHIR_JSON)
