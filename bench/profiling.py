"""pyinstrument profiles of a scenario, written to bench/profiles/<scenario>.txt.

Each file has the functions with the most *self* time first (where the CPU actually goes), then the
call tree (which request step they belong to).  Profiles are of in-process calls through the Flask
test client: for the HTTP scenario the same mix of calls is profiled in process (the gunicorn layer
is not in it); for the fallback scenario pyinstrument samples the request thread, so the wait for the
FHIR worker threads shows up as time in ``concurrent.futures.wait``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyinstrument import Profiler

FLAT_LINES = 30
TREE_LINES = 120
SUMMARY_LINES = 8


@dataclass
class Profile:
    scenario: str
    path: Path
    calls: int
    seconds: float
    top: list[str]  # the first flat lines: "self seconds  function  file:line"


def profile(scenario: str, out_dir: Path, work: Callable[[], None], *, calls: int,
            interval_s: float = 0.0002, note: str = "") -> Profile:
    """Run ``work`` ``calls`` times under pyinstrument and write the profile summary."""
    profiler = Profiler(interval=interval_s, async_mode="disabled")
    profiler.start()
    for _ in range(calls):
        work()
    session = profiler.stop()
    flat = profiler.output_text(unicode=False, color=False, flat=True, show_all=False)
    tree = profiler.output_text(unicode=False, color=False, show_all=False)
    flat_lines = [line for line in _without_banner(flat) if _FLAT_ENTRY.match(line)]
    tree_lines = _without_banner(tree)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{scenario}.txt"
    header = [f"pyinstrument profile: {scenario}",
              f"{calls} calls, {session.duration:.3f} s wall, {session.cpu_time:.3f} s CPU, "
              f"sampling every {interval_s * 1000:.1f} ms", note, ""]
    body = (["== functions by self time (top) ==", *flat_lines[:FLAT_LINES], "",
             "== call tree ==", *tree_lines[:TREE_LINES]])
    if len(tree_lines) > TREE_LINES:
        body.append(f"... ({len(tree_lines) - TREE_LINES} more lines)")
    path.write_text("\n".join([line for line in header if line] + [""] + body) + "\n", encoding="utf-8")
    return Profile(scenario, path, calls, session.duration, _top(flat_lines))


_FLAT_ENTRY = re.compile(r"^\s*\d+(\.\d+)?\s")


def _without_banner(text: str) -> list[str]:
    """pyinstrument's text output without its ASCII-art banner (everything up to "Profile at ...")."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Profile at"):
            return [line for line in lines[index + 1:] if line.strip()]
    return [line for line in lines if line.strip()]


def _top(flat_lines: list[str]) -> list[str]:
    return [line.strip() for line in flat_lines[:SUMMARY_LINES]]
