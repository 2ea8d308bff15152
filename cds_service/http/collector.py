"""The cyclic garbage collector and the request path (issue 16).

A hook call's decoded body is a tree of dicts and lists (JSON cannot express a cycle), freed by
reference counting when the call ends.  The cyclic collector still scans it: every 50,000 new
containers a young collection walks all of them, and every 20th of those walks what survived,
i.e. the whole live payload again.  On a 20,000-Observation body that was a fifth of the decode
under gunicorn (py-spy: ``gc_collect_main`` under ``orjson.loads``) and the part of a call that
grew faster than the body.

Two measures, process-wide:

* at start-up (``tune``), the heap loaded so far (modules, value sets, templates, schemas) is
  frozen out of every collection and the young generation is collected less often;
* while a call with a large body is in flight (``paused_for``), the collector is off.  Calls
  overlap on a worker's threads, so the pause is counted: the collector comes back on when the
  last paused call ends.  A pause never lasts for good: once it has run ``MAX_PAUSE_S``, new
  calls no longer join it, so it ends when the calls already in it end.  Cycles made meanwhile
  (an exception's traceback, say) are collected at the next collection after it.  A collector
  someone else turned off is left off.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

#: Bodies from this size pause the collector: below it a call allocates fewer containers than one
#: young collection waits for, so no collection would run during it anyway.
PAUSE_MIN_BODY_BYTES = 512 * 1024
#: After this long, a pause takes no new calls (it ends when the calls in it end).
MAX_PAUSE_S = 2.0
YOUNG_THRESHOLD = 50_000

_lock = threading.Lock()
_in_pause = 0
_pause_started = 0.0
_pauses = 0  # pauses begun in this process (for tests and diagnostics)


def tune() -> None:
    """Freeze the start-up heap and collect the young generation every ``YOUNG_THRESHOLD``
    containers (CPython's default, 700, ran dozens of collections per large call).  Idempotent."""
    gc.freeze()
    threshold = gc.get_threshold()
    if threshold[0] < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, max(threshold[1], 20), max(threshold[2], 100))


def pauses() -> int:
    """How many pauses this process has begun."""
    return _pauses


@contextmanager
def paused_for(body_bytes: int | None) -> Iterator[bool]:
    """The collector off for the duration, when ``body_bytes`` is large; yields whether this call
    is in a pause.  Free the call's payload inside the block (return from the function that held
    it): the pause is for the time it is alive."""
    joined = _join() if body_bytes is not None and body_bytes >= PAUSE_MIN_BODY_BYTES else False
    try:
        yield joined
    finally:
        if joined:
            _leave()


def _join() -> bool:
    global _in_pause, _pause_started, _pauses
    with _lock:
        if _in_pause == 0:
            if not gc.isenabled():
                return False  # turned off by someone else: theirs to turn on
            gc.disable()
            _pause_started = time.monotonic()
            _pauses += 1
        elif time.monotonic() - _pause_started > MAX_PAUSE_S:
            return False  # let this pause end
        _in_pause += 1
        return True


def _leave() -> None:
    global _in_pause
    with _lock:
        _in_pause -= 1
        if _in_pause == 0:
            gc.enable()
