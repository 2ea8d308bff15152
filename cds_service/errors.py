"""The service's errors: one exception hierarchy and one table of the ``error`` codes clients see.

``ERROR_CODES`` gives the code for each HTTP status, whoever raised the error: this package (a
``CdsError`` subclass) or werkzeug (routing, body size; ``http/app.py`` turns those into the
``CdsError`` for their status with ``error_for_status``).  A raise site may name a finer code for
one kind of 400 (``too_deep``, ``invalid_json`` ...); the status-level code is the default.
Answered as JSON ``{"error": code, "detail": detail}`` by the one handler in ``http/app.py``.
"""

from __future__ import annotations

from typing import Any

# HTTP status -> the ``error`` code a client sees for that kind of error.
ERROR_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
}
# Any other status (rare werkzeug errors, e.g. 416).
OTHER_HTTP_ERROR = "http_error"


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, OTHER_HTTP_ERROR)


class CdsError(Exception):
    """An error answered to the client as ``{"error": code, "detail": detail}``."""

    status = 400
    code = ERROR_CODES[400]

    def __init__(self, detail: str = "", *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
            self.code = error_code(status)
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code}
        if self.detail:
            body["detail"] = self.detail
        return body


class BadRequest(CdsError):
    status = 400
    code = ERROR_CODES[400]


class Unauthorized(CdsError):
    """Bare 401: the reason is logged (without the token), never sent."""

    status = 401
    code = ERROR_CODES[401]

    def body(self) -> dict[str, Any]:
        return {"error": self.code}


class NotFound(CdsError):
    status = 404
    code = ERROR_CODES[404]


class MethodNotAllowed(CdsError):
    status = 405
    code = ERROR_CODES[405]


class PayloadTooLarge(CdsError):
    status = 413
    code = ERROR_CODES[413]


class UnsupportedMediaType(CdsError):
    status = 415
    code = ERROR_CODES[415]


class InternalError(CdsError):
    """500: a bug; ``detail`` quotes the request id, never the exception's message."""

    status = 500
    code = ERROR_CODES[500]


class PreconditionFailed(CdsError):
    """412: the data needed to decide could not be had (CDS Hooks 2.0 §Prefetch)."""

    status = 412
    code = ERROR_CODES[412]

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


_BY_STATUS: dict[int, type[CdsError]] = {
    cls.status: cls for cls in (BadRequest, Unauthorized, NotFound, MethodNotAllowed, PayloadTooLarge,
                                UnsupportedMediaType, InternalError)
}


def error_for_status(status: int, detail: str = "") -> CdsError:
    """The service's error for an HTTP status raised elsewhere (werkzeug), with the table's code."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(detail)
    return CdsError(detail, code=error_code(status), status=status)
