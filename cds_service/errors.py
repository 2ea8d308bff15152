"""One small exception hierarchy, mapped to JSON error bodies in one place (app.py)."""

from __future__ import annotations

from typing import Any


class CdsError(Exception):
    """An error answered to the client as ``{"error": code, "detail": detail}``."""

    status = 400
    code = "bad_request"

    def __init__(self, detail: str = "", *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code}
        if self.detail:
            body["detail"] = self.detail
        return body


class BadRequest(CdsError):
    status = 400
    code = "invalid_request"


class Unauthorized(CdsError):
    """Bare 401: the reason is logged (without the token), never sent."""

    status = 401
    code = "unauthorized"

    def body(self) -> dict[str, Any]:
        return {"error": "unauthorized"}


class NotFound(CdsError):
    status = 404
    code = "not_found"


class MethodNotAllowed(CdsError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(CdsError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(CdsError):
    status = 415
    code = "unsupported_media_type"


class PreconditionFailed(CdsError):
    """412: the data needed to decide could not be had (CDS Hooks 2.0 §Prefetch)."""

    status = 412
    code = "precondition_failed"

    def __init__(self, detail: str, missing_keys: list[str]) -> None:
        super().__init__(detail)
        self.missing_keys = missing_keys

    def body(self) -> dict[str, Any]:
        issues: list[dict[str, Any]] = [
            {
                "severity": "error",
                "code": "not-found",
                "diagnostics": f"prefetch key '{key}' could not be obtained",
                "expression": [f"prefetch.{key}"],
            }
            for key in self.missing_keys
        ] or [{"severity": "error", "code": "incomplete", "diagnostics": self.detail}]
        # A plain FHIR OperationOutcome, as the spec asks for 412; extra keys would make
        # it invalid FHIR, so the short code travels in issue.details.
        for issue in issues:
            issue["details"] = {"text": self.detail}
        return {"resourceType": "OperationOutcome", "issue": issues}
