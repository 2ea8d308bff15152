"""One hook call's computing at a time per process (issue 16).

Under CPython only one thread runs Python at a time.  When a worker's threads serve several calls at
once, the calls take turns on the interpreter mid-way -- every database round trip, every switch
interval -- and each turn costs thread switches and caches refilled with another call's data.
Measured in process with the 50/50 mix on two cores: 8 threads calling at once cost 2.5-2.7 ms of
CPU per call; the same 8 threads taking whole calls in turn, 1.8-2.0 ms (one thread alone: 1.9 ms);
throughput rose by the same quarter.

So a call holds a slot of its process's ``CallGate`` while it computes (decoding the body, facts,
rules, rendering), and gives it up while it waits -- for FHIR servers, for the database --
(``released``), so a slow FHIR server or a hung database never stalls the other calls of the
process: they compute while it waits.  Reading the request from the client happens before the slot
is taken, writing the answer after it is given back.

``CALL_SLOTS`` (settings) is the number of slots: 1 suits CPython's one running thread; 0 turns the
gate off.  A call that waits longer than ``MAX_WAIT_S`` for a slot computes without one rather than
queue behind a stuck call (logged).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TypeVar

_T = TypeVar("_T")

log = logging.getLogger("cds_service.engine.gate")

#: A wait for the database kept shorter than this keeps the slot: a round trip of a millisecond
#: is not worth letting another call in mid-way (that cost more than it saved, measured); a longer
#: one -- a slow or hung database -- gives it up.
GRACE_S = 0.05
#: Longest wait for a slot; past it a call computes without one (a call stuck computing must not
#: stop the process's others).
MAX_WAIT_S = 5.0

_held = threading.local()  # .gate: the CallGate whose slot this thread holds


class CallGate:
    """``slots`` calls computing at once (0: no limit)."""

    def __init__(self, slots: int) -> None:
        self._semaphore = threading.BoundedSemaphore(slots) if slots > 0 else None
        self.waited_out = 0  # calls that computed without a slot after MAX_WAIT_S

    @contextmanager
    def held(self) -> Iterator[None]:
        """A slot for the duration (re-entrant: a thread holding one takes no second)."""
        if self._semaphore is None or getattr(_held, "gate", None) is not None:
            yield
            return
        self._take()
        try:
            yield
        finally:
            if getattr(_held, "gate", None) is self:  # not when none could be taken back after a wait
                _held.gate = None
                self._semaphore.release()

    def _take(self) -> None:
        assert self._semaphore is not None
        if self._semaphore.acquire(timeout=MAX_WAIT_S):
            _held.gate = self
            return
        self.waited_out += 1
        log.warning("no call slot within %.0f s: computing without one (%d so far)", MAX_WAIT_S, self.waited_out)


@contextmanager
def released() -> Iterator[None]:
    """Give this thread's slot up for the duration of a wait (FHIR requests, database round trips) and
    take it back afterwards; nothing when the thread holds none."""
    gate: CallGate | None = getattr(_held, "gate", None)
    if gate is None or gate._semaphore is None:
        yield
        return
    _held.gate = None
    gate._semaphore.release()
    try:
        yield
    finally:
        gate._take()


def wait_for(future: Future[_T], timeout: float) -> _T:
    """``future``'s result within ``timeout`` seconds (``concurrent.futures.TimeoutError`` past it):
    the first ``GRACE_S`` with this thread's slot kept, the rest with it given up."""
    grace = min(GRACE_S, timeout)
    try:
        return future.result(timeout=grace)
    except FutureTimeout:
        if timeout <= grace:
            raise
    with released():
        return future.result(timeout=timeout - grace)
