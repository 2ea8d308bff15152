"""Logging with PHI and secrets kept out of every line, at every level.

Two layers: the code never formats patient data or tokens into log messages, and a filter on
the root handler redacts, as a second line of defence, anything shaped like a JWT or bearer
token and every value registered as sensitive for the current request (patient id, access
token, …) — so a future careless ``log.debug(resource)`` still cannot leak them.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.handlers
import os
import queue
import re
import sys
from urllib.parse import quote, quote_plus

_SENSITIVE: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("cds_sensitive", default=())
_TOKEN_PATTERNS = (
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWT / JWS
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)(\"?access_token\"?\s*[:=]\s*\"?)[^\"\s,}]+"),
)
REDACTED = "[redacted]"


def mark_sensitive(*values: str | None) -> None:
    """Register values (patient id, tokens, names) to be redacted from logs in this context,
    as given and percent-encoded (the forms they take in the FHIR URLs urllib3 logs)."""
    current = _SENSITIVE.get()
    forms = {form for v in values if isinstance(v, str) and len(v) >= 3
             for form in (v, quote(v, safe=""), quote(v), quote_plus(v))}
    extra = tuple(sorted(f for f in forms if f not in current))
    if extra:
        _SENSITIVE.set(current + extra)


def clear_sensitive() -> None:
    _SENSITIVE.set(())


def redact(text: str) -> str:
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    for value in sorted(_SENSITIVE.get(), key=len, reverse=True):
        if value in text:
            text = text.replace(value, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message (for handlers that see records made before set-up)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _clean(record)
        return True


def _clean(record: logging.LogRecord) -> None:
    if getattr(record, "_cds_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # a broken format string must not break logging
        message = str(record.msg)
    record.msg = redact(message)
    record.args = None
    if record.exc_info and record.exc_info[1] is not None:
        # Keep the traceback for operators, redacted like the message.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        record.exc_info = None
    record._cds_redacted = True


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _install_record_factory() -> None:
    """Redact at record creation, so every handler (files, gunicorn, pytest's caplog) is covered."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_cds_redacting", False):
        return

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _clean(record)
        return record

    factory._cds_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_configured = False
_listener: logging.handlers.QueueListener | None = None
_front: logging.handlers.QueueHandler | None = None


def install_filter(handler: logging.Handler) -> None:
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


def write_in_background() -> None:
    """Move the root handler this module installed onto a background thread: request threads hand each
    record to a queue (already redacted: see ``_install_record_factory``) and never wait on the log
    file's lock or its write — under load, a worker's threads queued on that lock, each write giving up
    the GIL.  For the server (``cds_service.wsgi``); lines still queued are written at exit."""
    global _listener, _front
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "_cds_handler", False)]
    if _listener is not None or not ours:
        return
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=_QUEUED_MAX)
    front = _front = _DroppingQueueHandler(records)
    install_filter(front)
    for handler in ours:
        root.removeHandler(handler)
    root.addHandler(front)
    _listener = logging.handlers.QueueListener(records, *ours, respect_handler_level=True)
    _listener.start()
    atexit.register(_stop_listener)
    # A worker forked from a process that set this up (gunicorn --preload) has the queue but not the
    # thread that empties it: start one in the child.
    os.register_at_fork(after_in_child=_restart_listener_in_child)


#: Log records waiting for the writer thread at most; beyond, records are dropped and counted (a blocked
#: stderr must not grow the worker's memory without bound).
_QUEUED_MAX = 10_000
dropped_records = 0


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    def enqueue(self, record: logging.LogRecord) -> None:
        global dropped_records
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            dropped_records += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        prepared = super().prepare(record)
        prepared.stack_info = None  # already in the prepared message (Python 3.11 keeps it: printed twice)
        return prepared


def _stop_listener() -> None:
    if _listener is not None:
        _listener.stop()


def _restart_listener_in_child() -> None:
    if _listener is not None and _front is not None:
        # A fresh queue (the parent's may have been locked by its writer thread at the fork) and thread.
        fresh: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=_QUEUED_MAX)
        _front.queue = fresh
        _listener.queue = fresh
        _listener._thread = None  # the parent's thread does not exist in this process
        _listener.start()


def configure_logging(level: str = "INFO") -> None:
    """Root handler on stderr with the redacting filter; idempotent (tests create many apps).

    One handler only: when the host already gave the root logger a handler (a WSGI server, the test
    runner), that one prints our lines - a second would print each line twice."""
    global _configured
    _install_record_factory()
    root = logging.getLogger()
    if not _configured and not root.handlers:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._cds_handler = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        _configured = True
    for handler in root.handlers:
        install_filter(handler)
    logging.getLogger("cds_service").setLevel(getattr(logging, level.upper(), logging.INFO))
    # Library loggers may print URLs with query strings (patient ids): keep them quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
