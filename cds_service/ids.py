"""Fresh identifiers for cards, suggestions and requests.

``uuid.uuid4()`` reads ``os.urandom`` on every call, which costs ~0.5 ms per call on some
virtual machines; card and request ids need to be unique, not secret, so they come from a
generator seeded once from ``os.urandom`` (per process, and re-seeded after fork).
"""

from __future__ import annotations

import os
import random
import threading
import uuid

_local = threading.local()


def _generator() -> random.Random:
    state = getattr(_local, "state", None)
    if state is None or state[0] != os.getpid():
        state = (os.getpid(), random.Random(os.urandom(32)))  # noqa: S311 - uniqueness, not secrecy
        _local.state = state
    rng: random.Random = state[1]
    return rng


def new_uuid() -> str:
    """A random (version 4) UUID string."""
    return str(uuid.UUID(int=_generator().getrandbits(128), version=4))


def new_request_id() -> str:
    return f"{_generator().getrandbits(64):016x}"
