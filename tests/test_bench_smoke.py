"""The benchmark must not rot: run ``bench/run.py --tiny`` end to end (in-process, scaling, fallback,
gunicorn + load generator, profiles, report) and check what it wrote.  No timed assertions: the
figures of a tiny run on a shared test machine mean nothing; only the code paths are checked.
The HTTP phase runs once with each load generator: the Python one in the full tiny run, ``wrk``
(skipped when it is not installed) in a tiny HTTP-only run.
"""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import workloads, wrkload
from bench.stats import least_squares, median, p99, percentile
from cds_service.settings import DEFAULT_CARDS_DIR
from cds_service.terminology import Terminology

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("fast-path", "typical", "large", "typical-floor", "large-floor", "body-fast", "scaling", "fallback",
             "http")
# Issue 16's HTTP targets: measured in the HTTP scenario (its profile is the "http" one).
HTTP_TARGETS = ("http-goal", "http-overhead", "http-body")


def test_tiny_benchmark_runs_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    profiles = tmp_path / "profiles"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--out", str(out), "--profiles-dir",
         str(profiles), "--profile-all", "--loadgen", "httpx"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "Load generator: **httpx**" in text
    assert "| http-layer: the same mix to a no-op WSGI app" in text  # the HTTP layer measured alone
    for heading in ("## Machine", "## Targets", "## In process", "## Over HTTP", "## FHIR fallback",
                    "## Scaling with prefetch size", "## Body size: fast path and IVIG call against the orjson floor",
                    "### Body size over HTTP", "## Where the time goes"):
        assert heading in text, heading
    # Every target has a row with a verdict; the tiny run answers every call correctly.
    target_rows = [line for line in text.splitlines() if line.startswith("| ") and
                   any(v in line for v in ("| met", "| **not met**", "| not measured"))]
    assert len(target_rows) == len(SCENARIOS) + len(HTTP_TARGETS)
    assert "UNEXPECTED" not in text
    assert "Check failed" not in text
    assert "least-squares fit" in text.lower()
    for scenario in SCENARIOS:
        profile = profiles / f"{scenario}.txt"
        assert profile.is_file(), scenario
        assert "functions by self time" in profile.read_text(encoding="utf-8")
        assert f"profiles/{scenario}.txt" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (the bench falls back to httpx)")
def test_tiny_wrk_http_phase(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--tiny", "--only", "http", "--loadgen", "wrk",
         "--out", str(out), "--profiles-dir", str(tmp_path / "profiles")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "## Over HTTP" in text and "## In process" not in text
    assert "Load generator: **wrk**" in text
    assert "Check failed" not in text
    mix_rows = [line for line in text.splitlines() if line.startswith("| mix: ")]
    assert len(mix_rows) == 1 and "(wrk)" in mix_rows[0]
    assert mix_rows[0].split(" | ")[6] == "0", mix_rows[0]  # errors: no non-2xx answer, no socket error
    wrk_rows = [line for line in text.splitlines() if line.startswith("| mix 1 |")]
    assert len(wrk_rows) == 1
    cells = wrk_rows[0].split(" | ")
    calls, with_latency = int(cells[1].replace(",", "")), int(cells[8].replace(",", ""))
    assert calls > 0 and 0 < with_latency <= calls  # the corrected histogram was undone
    target_rows = [line for line in text.splitlines() if line.startswith("| HTTP, 16 clients: >= 300")]
    assert len(target_rows) == 1 and "wrk load generator" in target_rows[0]


def _wrk_correct(raw: dict[int, int], expected: int) -> dict[int, int]:
    """wrk 4's ``stats_correct`` (stats.c), transcribed: the histogram ``done()`` receives."""
    data = dict(raw)
    for n in range(expected * 2, max(raw) + 1):
        count, m = data.get(n, 0), n - expected
        while count and m > expected:
            data[m] = data.get(m, 0) + count
            m -= expected
    return {k: v for k, v in data.items() if v}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_wrk_coordinated_omission_correction_is_undone_exactly(seed: int) -> None:
    rng = random.Random(seed)
    raw: dict[int, int] = {}
    for _ in range(3000):  # latencies in µs with a long tail
        value = int(rng.lognormvariate(10.5, 0.8))
        raw[value] = raw.get(value, 0) + 1
    requests, connections, duration_us = 3000, 16, 10_000_000
    expected = duration_us // (requests // connections)
    corrected = _wrk_correct(raw, expected)
    assert sum(corrected.values()) > requests  # the correction added samples
    histogram = sorted([value, count] for value, count in corrected.items())
    assert wrkload.uncorrect(histogram, requests=requests, duration_us=duration_us,
                             connections=connections) == raw


def test_lua_string_literal_escapes_everything() -> None:
    assert wrkload._lua_string('a"b\\c\nd é') == '"a\\034b\\092c\\010d \\195\\169"'


def test_loadgen_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import run

    monkeypatch.setattr(wrkload, "executable", lambda: None)
    assert run.choose_loadgen("auto")[0] == "httpx"
    assert run.choose_loadgen("httpx")[0] == "httpx"
    with pytest.raises(SystemExit):
        run.choose_loadgen("wrk")
    monkeypatch.setattr(wrkload, "executable", lambda: "/usr/bin/wrk")
    assert run.choose_loadgen("auto")[:2] == ("wrk", "/usr/bin/wrk")
    assert run.choose_loadgen("httpx")[0] == "httpx"


def test_quick_and_tiny_runs_never_overwrite_the_published_results() -> None:
    from bench.run import MODES

    assert set(MODES) == {"full", "quick", "tiny"}
    source = (ROOT / "bench" / "run.py").read_text(encoding="utf-8")
    assert 'ROOT / "var" / "bench"' in source


def test_filler_matches_no_value_set() -> None:
    """Padding must not change what the rules see: no filler code or text is in any value set."""
    terminology = Terminology.load(DEFAULT_CARDS_DIR / "valuesets")
    concepts = [(k.system, k.code, k.display) for k in workloads.LAB_KINDS]
    concepts += [(workloads._ICD10CM, code, display) for code, display in workloads.CONDITION_KINDS]
    concepts += [(workloads._LOCAL_FORMULARY, code, display) for code, display, _ in workloads.MEDICATION_KINDS]
    for vs in terminology.value_sets.values():
        for system, code, display in concepts:
            assert not vs.has_coding(system, code), (vs.id, code)
            assert not vs.matches_text(display), (vs.id, display)


@pytest.mark.parametrize("size", [40, 250])
def test_scaling_workload_has_the_requested_size(size: int) -> None:
    workload = workloads.scaling(size)
    assert workload.prefetch_resources == size
    assert workload.expected_cards  # an IVIG call that fires cards


def test_typical_workload_has_about_sixty_resources() -> None:
    workload = workloads.typical()
    assert workload.prefetch_resources == workloads.TYPICAL_PREFETCH_RESOURCES
    fallback = workloads.fallback("http://127.0.0.1:9/fhir")
    assert fallback.missing_keys == workloads.FALLBACK_MISSING_KEYS


def test_stats() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert p99([5.0]) == 5.0
    assert math.isnan(median([]))
    assert p99(list(map(float, range(101)))) == pytest.approx(99.0)
    line = least_squares([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    assert (line.slope, line.intercept) == pytest.approx((2.0, 1.0))
    assert line.r_squared == pytest.approx(1.0)
