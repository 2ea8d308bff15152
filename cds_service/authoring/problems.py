"""What the authoring tools report: a ``Problem`` found by ``cards check`` and ``GovernanceError``
for an approval or export that cannot be done."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

ERROR, WARNING, INFO = "error", "warning", "info"
_SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class Problem:
    """One finding of ``cards check``: where, what kind, what, how bad."""

    file: str
    kind: str
    message: str
    severity: str = ERROR
    card_id: str | None = None

    def __str__(self) -> str:
        return f"{self.file}: [{self.kind}] {self.message}"


class GovernanceError(Exception):
    """An approval or export that cannot be done; the message says why."""


def sorted_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Errors first, then warnings, then information; duplicates dropped."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (_SEVERITY_ORDER.get(p.severity, 3), p.file, p.kind))


def collapse(problems: Iterable[Problem]) -> list[Problem]:
    """One problem per (file, kind, severity): the same template fault shows in many contexts."""
    first: dict[tuple[str, str, str], Problem] = {}
    counts: dict[tuple[str, str, str], int] = {}
    for problem in problems:
        key = (problem.file, problem.kind, problem.severity)
        first.setdefault(key, problem)
        counts[key] = counts.get(key, 0) + 1
    collapsed = []
    for key, problem in first.items():
        more = counts[key] - 1
        if more:
            problem = dataclasses.replace(problem, message=f"{problem.message} (and {more} more context(s))")
        collapsed.append(problem)
    return collapsed


def short_error(exc: BaseException) -> str:
    """An exception's text on one line, at most 400 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:399] + "…"
