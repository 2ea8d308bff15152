"""ivig-cds benchmark: ``make bench`` (full, a few minutes) or ``make bench-quick`` (< 60 s).

    .venv/bin/python bench/run.py            # full: writes bench/RESULTS.md (+ bench/profiles/)
    .venv/bin/python bench/run.py --quick    # quick: writes var/bench/RESULTS-quick.md
    .venv/bin/python bench/run.py --tiny --out /tmp/r.md --profiles-dir /tmp/p --profile-all
                                             # the smoke test's mode: every code path, tiny counts
    .venv/bin/python bench/run.py --quick --only http --loadgen httpx
                                             # one scenario; the HTTP load from the Python generator
                                             # (default --loadgen auto: wrk when it is on PATH)

Scenarios (see bench/README.md): in-process fast path / typical / large prefetch, each against a JSON
round trip of its own body; gunicorn over loopback under 16 concurrent clients; FHIR fallback with
five missing keys on a slow server; prefetch scaling 100 -> 20,000 resources.  Each target is
reported met / not met; a missed target gets a pyinstrument profile in the profiles directory.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from bench import fallback, httpbody, httpload, inprocess, machine, profiling, report, workloads, wrkload  # noqa: E402
from bench.stats import least_squares, median, p99  # noqa: E402


@dataclass(frozen=True)
class Mode:
    name: str
    fast_repeats: int
    typical_repeats: int
    large_repeats: int
    large_scale: float
    warmup: int
    scaling: dict[int, int]  # prefetch size -> repeats
    scaling_reference: tuple[int, int]  # (small, large) sizes of the linearity ratio
    fallback_delay_s: float
    fallback_repeats: int
    http_mix_runs: int
    http_mix_count: int
    http_ivig_count: int
    http_warmup: int
    http_wrk_mix_s: int  # with wrk: seconds per mix run (a fixed duration, not a fixed count)
    http_wrk_ivig_s: int  # with wrk: seconds of the IVIG-only run (0: no such run)
    http_wrk_warmup_s: int  # with wrk: seconds of the warm-up run before the first mix run
    profile_calls: dict[str, int]
    body_sizes: dict[int, int] = field(default_factory=dict)  # extra Observations -> repeats (issue 16)


MODES: dict[str, Mode] = {
    "full": Mode("full", fast_repeats=3000, typical_repeats=600, large_repeats=40, large_scale=1.0, warmup=20,
                 scaling={100: 200, 1000: 30, 5000: 10, 20000: 5}, scaling_reference=(1000, 20000),
                 fallback_delay_s=0.1, fallback_repeats=30,
                 http_mix_runs=3, http_mix_count=3000, http_ivig_count=2000, http_warmup=300,
                 http_wrk_mix_s=15, http_wrk_ivig_s=10, http_wrk_warmup_s=3,
                 profile_calls={"fast-path": 3000, "typical": 300, "large": 20, "http": 600, "fallback": 10,
                                "scaling": 3, "typical-floor": 300, "large-floor": 20, "body-fast": 3},
                 body_sizes={0: 300, 2000: 20, 20000: 5}),
    "quick": Mode("quick", fast_repeats=500, typical_repeats=100, large_repeats=8, large_scale=1.0, warmup=5,
                  scaling={100: 20, 1000: 5, 5000: 3, 20000: 2}, scaling_reference=(1000, 20000),
                  fallback_delay_s=0.1, fallback_repeats=6,
                  http_mix_runs=1, http_mix_count=800, http_ivig_count=0, http_warmup=100,
                  http_wrk_mix_s=5, http_wrk_ivig_s=0, http_wrk_warmup_s=1,
                  profile_calls={"fast-path": 500, "typical": 50, "large": 4, "http": 100, "fallback": 3,
                                 "scaling": 1, "typical-floor": 50, "large-floor": 4, "body-fast": 1},
                  body_sizes={0: 50, 2000: 5, 20000: 2}),
    "tiny": Mode("tiny", fast_repeats=3, typical_repeats=3, large_repeats=2, large_scale=0.02, warmup=1,
                 scaling={30: 2, 60: 2}, scaling_reference=(30, 60),
                 fallback_delay_s=0.01, fallback_repeats=2,
                 http_mix_runs=1, http_mix_count=16, http_ivig_count=0, http_warmup=0,
                 http_wrk_mix_s=1, http_wrk_ivig_s=0, http_wrk_warmup_s=1,
                 profile_calls={"fast-path": 2, "typical": 2, "large": 1, "http": 2, "fallback": 1,
                                "scaling": 1, "typical-floor": 2, "large-floor": 1, "body-fast": 1},
                 body_sizes={0: 2, 40: 2}),
}


# --------------------------------------------------------------------------------------------------
# Targets (issue 8)
# --------------------------------------------------------------------------------------------------

FAST_PATH_MAX_S = 0.001
TYPICAL_MAX_S = 0.010
LARGE_MAX_RATIO = 3.0
HTTP_MIN_CALLS_PER_S = 300.0
HTTP_MAX_P99_S = 0.100
# Issue 16, over HTTP: the goal at 16 clients; the HTTP layer's CPU per call; a large body over HTTP.
HTTP_GOAL_CALLS_PER_S = 1000.0
HTTP_GOAL_P99_S = 0.050
HTTP_MAX_OVERHEAD_CPU_S = 0.0005
HTTP_BODY_MAX_RATIO = 1.5  # the 20,000-Observation IVIG call over HTTP / in process, same body
FALLBACK_MAX_RATIO = 1.5
SCALING_MAX_RATIO = 20.0  # issue 16 (was 25 in issue 8)
# Issue 16: against orjson on the same body (the JSON floor).
FAST_BODY_MAX_DECODE_RATIO = 1.5  # fast path, largest body of the series / orjson decode
LARGE_MAX_FLOOR_RATIO = 3.0  # large / orjson decode + encode
TYPICAL_MAX_FLOOR_RATIO = 10.0  # typical / orjson decode + encode


@dataclass
class Target:
    scenario: str  # also the profile's file name
    goal: str
    measured: str
    met: bool | None  # None: not measured in this mode
    profile: profiling.Profile | None = None


@dataclass
class Results:
    mode: Mode
    machine: machine.Machine
    healthz_s: list[float] = field(default_factory=list)
    in_process: list[inprocess.Measured] = field(default_factory=list)
    scaling: list[inprocess.Measured] = field(default_factory=list)
    scaling_fit: tuple[float, float, float] | None = None  # slope s/resource, intercept s, r^2
    scaling_gc: list[tuple[int, inprocess.GcStats]] = field(default_factory=list)
    body_sizes: list[inprocess.Measured] = field(default_factory=list)
    http_bodies: list[httpbody.HttpBody] = field(default_factory=list)
    fallback: fallback.FallbackResult | None = None
    http_phases: list[httpload.LoadPhase] = field(default_factory=list)
    http_checks: list[tuple[str, int, list[str], list[str]]] = field(default_factory=list)
    http_config: dict[str, object] = field(default_factory=dict)
    mix_process_cpu_s: float | None = None  # in process, all threads, per call of the 50/50 mix (median)
    mix_process_cpu_runs: list[float] = field(default_factory=list)  # one after each HTTP mix run
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.1 else f"{seconds * 1000:.0f} ms"


def _caller(client: FlaskClient, workload: workloads.Workload) -> Callable[[], None]:
    def call() -> None:
        inprocess.post(client, workload)

    return call


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------------

SCENARIO_GROUPS = ("in-process", "body-size", "scaling", "fallback", "http")
LOADGENS = ("auto", "wrk", "httpx")


def choose_loadgen(choice: str) -> tuple[str, str | None, str]:
    """(generator, wrk executable or None, why) for ``--loadgen auto|wrk|httpx``."""
    wrk = wrkload.executable()
    if choice == "httpx":
        return "httpx", None, "--loadgen httpx"
    if wrk is not None:
        return "wrk", wrk, f"--loadgen {choice}, wrk found at {wrk}"
    if choice == "wrk":
        raise SystemExit("--loadgen wrk: wrk is not on PATH (Debian: apt-get install wrk)")
    return "httpx", None, "wrk is not on PATH, so the Python asyncio + httpx generator (--loadgen auto)"


class Runner:
    def __init__(self, mode: Mode, profiles_dir: Path, profile_all: bool, *, loadgen: str = "httpx",
                 wrk: str | None = None, loadgen_reason: str = "",
                 groups: tuple[str, ...] = SCENARIO_GROUPS) -> None:
        self.mode = mode
        self.profiles_dir = profiles_dir
        self.profile_all = profile_all
        self.loadgen, self.wrk, self.loadgen_reason = loadgen, wrk, loadgen_reason
        self.groups = groups
        self.results = Results(mode, machine.describe(ROOT))
        self._app: Flask | None = None

    def _target(self, scenario: str, goal: str, measured: str, met: bool | None,
                work: Callable[[], None] | None, note: str = "") -> Target:
        target = Target(scenario, goal, measured, met)
        if work is not None and (self.profile_all or met is False):
            calls = self.mode.profile_calls.get(scenario.split("-")[0] if scenario.startswith("scaling")
                                                else scenario, 1)
            log(f"profiling {scenario} ({calls} calls)")
            target.profile = profiling.profile(scenario, self.profiles_dir, work, calls=calls, note=note)
        self.results.targets.append(target)
        return target

    # -- in process --------------------------------------------------------------------------
    def in_process(self) -> None:
        mode = self.mode
        app = inprocess.make_app()
        client = app.test_client()
        self.results.healthz_s = inprocess.measure_empty_request(client, min(500, mode.fast_repeats))
        fast_wl = workloads.fast_path()
        typical_wl = workloads.typical()
        log("in-process: fast path")
        fast = inprocess.measure(client, fast_wl, repeats=mode.fast_repeats, warmup=mode.warmup)
        self.results.in_process.append(fast)
        log("in-process: typical IVIG call")
        typical = inprocess.measure(client, typical_wl, repeats=mode.typical_repeats, warmup=mode.warmup)
        self.results.in_process.append(typical)
        log("in-process: large prefetch (building the request)")
        large_wl = workloads.large(mode.large_scale)
        log(f"in-process: large prefetch ({large_wl.prefetch_resources} resources, "
            f"{large_wl.body_kib:.0f} KiB)")
        large = inprocess.measure(client, large_wl, repeats=mode.large_repeats, warmup=min(3, mode.warmup))
        self.results.in_process.append(large)

        call = functools.partial(_caller, client)
        self._target("fast-path", "fast path (non-IVIG order) <= 1 ms median, in process",
                     f"{_ms(median(fast.service_s))} median (p99 {_ms(p99(fast.service_s))})",
                     median(fast.service_s) <= FAST_PATH_MAX_S, call(fast_wl))
        self._target("typical", "typical IVIG call (~60 resources) <= 10 ms median, in process",
                     f"{_ms(median(typical.service_s))} median (p99 {_ms(p99(typical.service_s))})",
                     median(typical.service_s) <= TYPICAL_MAX_S, call(typical_wl))
        self._target("large", "large prefetch <= 3x the JSON round trip of its own body",
                     f"{large.ratio:.2f}x ({_ms(median(large.service_s))} vs {_ms(median(large.json_s))})",
                     large.ratio <= LARGE_MAX_RATIO, call(large_wl))
        self._target("typical-floor", f"typical IVIG call <= {TYPICAL_MAX_FLOOR_RATIO:g}x orjson decode+encode of "
                     "its body, in process", f"{typical.round_trip_ratio:.1f}x ({_ms(median(typical.service_s))} vs "
                     f"{_ms(median(typical.orjson_round_trip_s))})",
                     typical.round_trip_ratio <= TYPICAL_MAX_FLOOR_RATIO, call(typical_wl))
        self._target("large-floor", f"large prefetch <= {LARGE_MAX_FLOOR_RATIO:g}x orjson decode+encode of its body, "
                     "in process", f"{large.round_trip_ratio:.2f}x ({_ms(median(large.service_s))} vs "
                     f"{_ms(median(large.orjson_round_trip_s))})",
                     large.round_trip_ratio <= LARGE_MAX_FLOOR_RATIO, call(large_wl))
        self._app, self._fast_wl, self._typical_wl = app, fast_wl, typical_wl

    # -- body size (issue 16) ---------------------------------------------------------------
    def body_size(self) -> None:
        """The fast path and the typical IVIG call with 0 / 2,000 / 20,000 extra Observations, against
        orjson on the same body (MAX_BODY_BYTES raised, as for scaling)."""
        app = inprocess.make_app({"MAX_BODY_BYTES": inprocess.SCALING_MAX_BODY_BYTES})
        client = app.test_client()
        biggest: dict[str, tuple[workloads.Workload, inprocess.Measured]] = {}
        for kind in ("fast", "ivig"):
            for extra, repeats in sorted(self.mode.body_sizes.items()):
                workload = workloads.body_size(kind, extra)
                log(f"body size: {workload.name} ({workload.body_kib / 1024:.1f} MiB), {repeats} calls")
                measured = inprocess.measure(client, workload, repeats=repeats, warmup=min(2, repeats))
                self.results.body_sizes.append(measured)
                biggest[kind] = (workload, measured)
                gc.collect()
        if "fast" in biggest:
            workload, measured = biggest["fast"]
            self._target("body-fast", f"fast path, {workload.description.split(' + ')[-1]} <= "
                         f"{FAST_BODY_MAX_DECODE_RATIO:g}x orjson decode of its body, in process",
                         f"{measured.decode_ratio:.2f}x ({_ms(median(measured.service_s))} vs "
                         f"{_ms(median(measured.orjson_decode_s))})",
                         measured.decode_ratio <= FAST_BODY_MAX_DECODE_RATIO, _caller(client, workload))

    # -- scaling -----------------------------------------------------------------------------
    def scaling(self) -> None:
        mode = self.mode
        app = inprocess.make_app({"MAX_BODY_BYTES": inprocess.SCALING_MAX_BODY_BYTES})
        client = app.test_client()
        largest: workloads.Workload | None = None
        sizes = sorted(mode.scaling.items())
        plan: list[tuple[workloads.Workload, int]] = []
        for size, repeats in sizes:
            log(f"scaling: building {size} resources")
            plan.append((workloads.scaling(size), repeats))
        # Interleaved: each round makes its share of every size's calls, so all sizes are timed over the
        # same stretches of the run (the ratio of two sizes timed a minute apart moved with the machine's
        # speed: 1,000-resource medians of 9 to 17 ms in identical runs).
        rounds = min(repeats for _, repeats in plan)
        log(f"scaling: {', '.join(f'{size} resources x {repeats}' for size, repeats in sizes)} calls, "
            f"interleaved in {rounds} rounds")
        self.results.scaling.extend(inprocess.measure_interleaved(client, plan, rounds=rounds, warmup=1))
        for (size, _), (workload, _) in zip(sizes, plan, strict=True):
            self.results.scaling_gc.append((size, inprocess.gc_during_call(client, workload)))
            largest = workload
            gc.collect()
        points = [(m.workload.prefetch_resources, median(m.service_s)) for m in self.results.scaling]
        if len(points) >= 2:
            line = least_squares([p[0] for p in points], [p[1] for p in points])
            self.results.scaling_fit = (line.slope, line.intercept, line.r_squared)
        small_size, big_size = mode.scaling_reference
        by_size = {m.workload.name: m for m in self.results.scaling}
        small, big = by_size.get(f"scaling-{small_size}"), by_size.get(f"scaling-{big_size}")
        met: bool | None = None
        figure = "not measured"
        if small is not None and big is not None:
            ratio = median(big.service_s) / median(small.service_s)
            # 25x for 1,000 -> 20,000 (20x the resources); the same allowance for other size pairs.
            limit = SCALING_MAX_RATIO * (big_size / small_size) / 20
            met = ratio <= limit
            figure = (f"{ratio:.1f}x ({big_size:,}: {_ms(median(big.service_s))}, "
                      f"{small_size:,}: {_ms(median(small.service_s))})")
        work = None if largest is None else _caller(client, largest)
        self._target("scaling", f"linear in prefetch size: {big_size:,}-resource call <= "
                     f"{SCALING_MAX_RATIO:g}x the {small_size:,}-resource call", figure, met, work,
                     note=f"workload: {largest.description if largest else '-'}")

    # -- fallback ----------------------------------------------------------------------------
    def fallback(self) -> None:
        mode = self.mode
        log(f"fallback: five missing keys, {mode.fallback_delay_s * 1000:.0f} ms per query")
        result = fallback.run(delay_s=mode.fallback_delay_s, repeats=mode.fallback_repeats,
                              warmup=min(3, mode.warmup + 1))
        self.results.fallback = result
        met = result.ratio <= FALLBACK_MAX_RATIO
        target = self._target(
            "fallback", f"fallback, five missing keys at {mode.fallback_delay_s * 1000:.0f} ms each "
            "<= 1.5x one query", f"{result.ratio:.2f}x ({_ms(median(result.call_s))} vs "
            f"{_ms(median(result.query_s))})", met, None)
        if self.profile_all or not met:
            log("profiling fallback")
            target.profile = fallback.profile(delay_s=mode.fallback_delay_s, out_dir=self.profiles_dir,
                                              calls=mode.profile_calls.get("fallback", 1))

    # -- HTTP --------------------------------------------------------------------------------
    def _load(self, server: httpload.Server, tmp: Path, phase: httpload.LoadPhase,
              mix: list[workloads.Workload], *, count: int, duration_s: int, warmup: bool) -> None:
        """One run of ``phase`` with the chosen load generator (warm-up first when ``warmup``)."""
        mode = self.mode
        if self.loadgen == "wrk":
            assert self.wrk is not None
            log(f"http: {phase.name} run {len(phase.runs) + 1}, wrk for {duration_s} s"
                + (f" after a {mode.http_wrk_warmup_s} s warm-up" if warmup and mode.http_wrk_warmup_s else ""))
            phase.runs.append(httpload.run_load_wrk(server, tmp, mix, phase.pattern, wrk=self.wrk,
                                                    duration_s=duration_s, name=phase.name,
                                                    warmup_s=mode.http_wrk_warmup_s if warmup else 0))
        else:
            log(f"http: {phase.name} run {len(phase.runs) + 1}, {count} calls (httpx)")
            phase.runs.append(httpload.run_load(server, tmp, mix, phase.pattern, count=count,
                                                warmup=mode.http_warmup if warmup else 0))

    def http(self, tmp: Path) -> None:
        mode = self.mode
        self._ensure_app()
        assert self._app is not None
        fast_wl, typical_wl = self._fast_wl, self._typical_wl
        settings = httpload.production_settings()
        log(f"http: starting gunicorn ({settings.get('workers')} workers x "
            f"{settings.get('threads')} threads); load generator: {self.loadgen}")
        # MAX_BODY_BYTES raised (the body-size series' bodies); the hook calls of the mix are far below it.
        with httpload.gunicorn(tmp, extra_env={"CDS_MAX_BODY_BYTES": str(inprocess.SCALING_MAX_BODY_BYTES)}) as server:
            self.results.http_config = {**settings, "config_file": str(server.config.relative_to(ROOT)),
                                        "config_note": server.config_note, "store_note": server.store_note,
                                        "store": server.store_url.split("://")[0],
                                        "concurrency": httpload.CONCURRENCY, "loadgen": self.loadgen,
                                        "loadgen_reason": self.loadgen_reason,
                                        "wrk_version": wrkload.version(self.wrk) if self.wrk else None,
                                        "wrk_threads": wrkload.THREADS, "wrk_timeout_s": wrkload.TIMEOUT_S}
            for workload in (typical_wl, fast_wl):
                status, cards = httpload.check_answer(server, workload)
                self.results.http_checks.append((workload.name, status, cards, workload.expected_cards))
            mix = httpload.LoadPhase("mix", "typical IVIG calls and fast-path calls alternating (50/50)",
                                     [typical_wl.name, fast_wl.name])
            # The same mix in process, on the same store (the difference is then the HTTP layer, not the
            # database), measured after each mix run while the server idles: the overhead figure is a
            # difference of two noisy figures, so each side is taken over the same stretches of the run.
            same_store = inprocess.make_app({"DATABASE_URL": server.store_url})
            same_client = same_store.test_client()
            in_process: list[float] = []
            for index in range(mode.http_mix_runs):
                self._load(server, tmp, mix, [typical_wl, fast_wl], count=mode.http_mix_count,
                           duration_s=mode.http_wrk_mix_s, warmup=index == 0)
                in_process.append(inprocess.process_cpu_per_call(
                    same_store, same_client, [typical_wl, fast_wl], min(1000, max(20, mode.http_mix_count // 3))))
            same_store.extensions["cds_runtime"].store.close()
            self.results.mix_process_cpu_runs = in_process
            self.results.mix_process_cpu_s = median(in_process)
            self.results.http_phases.append(mix)
            if mode.http_wrk_ivig_s if self.loadgen == "wrk" else mode.http_ivig_count:
                ivig = httpload.LoadPhase("ivig-only", "typical IVIG calls only", [typical_wl.name])
                self._load(server, tmp, ivig, [typical_wl], count=mode.http_ivig_count,
                           duration_s=mode.http_wrk_ivig_s, warmup=False)
                self.results.http_phases.append(ivig)
            self._http_bodies(server)
        self._http_layer(tmp, [typical_wl, fast_wl])
        rates = mix.calls_per_s()
        rate = median(rates)
        p50_s, p99_s = mix.summary()
        errors = mix.error_count
        met = rate >= HTTP_MIN_CALLS_PER_S and p99_s <= HTTP_MAX_P99_S and errors == 0
        client = self._app.test_client()
        pair = [typical_wl, fast_wl]
        turn = iter(range(10**9))

        def work() -> None:
            inprocess.post(client, pair[next(turn) % 2])

        generator = ("wrk" if self.loadgen == "wrk" else "Python asyncio + httpx") + " load generator"
        corrected = ""
        wrk_runs = [run.wrk for run in mix.runs if run.wrk is not None]
        if wrk_runs:
            corrected = (f"; wrk's own coordinated-omission-corrected p99 "
                         f"{_ms(median([w.percentiles_s.get('p99', float('nan')) for w in wrk_runs]))}")
        self._target("http", "HTTP, 16 clients: >= 300 calls/s, p99 <= 100 ms, zero errors",
                     f"{rate:.0f} calls/s, p50 {_ms(p50_s)}, p99 {_ms(p99_s)}, {errors} errors "
                     f"({mix.calls} calls, 50/50 typical/fast path, {generator}{corrected})", met, work,
                     note="in-process profile of the same 50/50 mix (the gunicorn layer is not in it)")
        self._http_targets(mix)

    def _http_layer(self, tmp: Path, mix: list[workloads.Workload]) -> None:
        """The same gunicorn configuration and the same 50/50 load, served by a WSGI app that only reads the
        body (``bench/noop_wsgi.py``): what the HTTP layer itself costs per call, measured, not inferred."""
        mode = self.mode
        phase = httpload.LoadPhase("http-layer", "the same mix to a no-op WSGI app (bench/noop_wsgi.py): the "
                                   "HTTP layer alone", [w.name for w in mix])
        log("http: the HTTP layer alone (bench/noop_wsgi.py on the same gunicorn configuration)")
        with httpload.gunicorn(tmp, app="bench.noop_wsgi:app") as server:
            self._load(server, tmp, phase, mix, count=mode.http_mix_count, duration_s=mode.http_wrk_mix_s,
                       warmup=True)
        self.results.http_phases.append(phase)

    def _layer_cpu_per_call(self) -> float | None:
        layer = next((p for p in self.results.http_phases if p.name == "http-layer"), None)
        return None if layer is None else layer.server_cpu_per_call

    def _http_targets(self, mix: httpload.LoadPhase) -> None:
        """Issue 16 over HTTP: the throughput goal, the HTTP layer's CPU per call, a large body."""
        rate, (_, p99_s) = median(mix.calls_per_s()), mix.summary()
        self._target("http-goal", f"HTTP, 16 clients, 50/50 mix: >= {HTTP_GOAL_CALLS_PER_S:,.0f} calls/s with p99 <= "
                     f"{HTTP_GOAL_P99_S * 1000:.0f} ms (a goal)", f"{rate:.0f} calls/s, p99 {_ms(p99_s)}",
                     rate >= HTTP_GOAL_CALLS_PER_S and p99_s <= HTTP_GOAL_P99_S and mix.error_count == 0, None)
        server = mix.server_cpu_per_call
        if self.results.mix_process_cpu_s is not None and server is not None:
            overhead = server - self.results.mix_process_cpu_s
            layer = self._layer_cpu_per_call()
            alone = "" if layer is None else (
                f"; the HTTP layer alone, same server and load with a no-op app: {_ms(layer)} per call, so "
                f"{_ms(max(0.0, overhead - layer))} is the service's own work costing more under 16 concurrent "
                "clients than one call at a time")
            self._target("http-overhead", f"HTTP overhead <= {HTTP_MAX_OVERHEAD_CPU_S * 1000:.1f} ms CPU per call "
                         "(server CPU per call minus in-process CPU per call, 50/50 mix)",
                         f"{_ms(overhead)} ({_ms(server)} server vs {_ms(self.results.mix_process_cpu_s)} in process"
                         f"{alone})", overhead <= HTTP_MAX_OVERHEAD_CPU_S, None)
        body = next((b for b in reversed(self.results.http_bodies) if b.workload.name.startswith("ivig+")), None)
        if body is not None and body.ratio is not None:
            self._target("http-body", f"IVIG call with {body.workload.description.split(' + ')[-1]} over HTTP <= "
                         f"{HTTP_BODY_MAX_RATIO:g}x in process (same body)",
                         f"{body.ratio:.2f}x ({_ms(median(body.latency_s))} vs {_ms(body.in_process_s or 0.0)})",
                         body.ratio <= HTTP_BODY_MAX_RATIO, None)

    def _http_bodies(self, server: httpload.Server) -> None:
        """The body-size workloads over HTTP, one call at a time, against their in-process times."""
        if not self.results.body_sizes:
            self.results.notes.append("The body-size series over HTTP needs the in-process body-size scenario "
                                      "(`--only body-size --only http`).")
            return
        for measured in self.results.body_sizes:
            workload = measured.workload
            repeats = max(2, len(measured.service_s))
            log(f"http: body size {workload.name}, {repeats} calls")
            result = httpbody.measure(server, workload, repeats=repeats, warmup=min(2, repeats))
            result.in_process_s = median(measured.service_s)
            result.in_process_cpu_s = median(measured.service_cpu_s)
            self.results.http_bodies.append(result)
            gc.collect()

    def _ensure_app(self) -> None:
        """The in-process app and the two workloads the HTTP scenario needs (``--only http``)."""
        if self._app is None:
            self._app = inprocess.make_app()
            self._fast_wl, self._typical_wl = workloads.fast_path(), workloads.typical()

    def _watched(self, name: str, scenario: Callable[[], None]) -> None:
        noise = machine.watch(name)
        try:
            scenario()
        finally:
            noise.stop()
            self.results.machine.noise.append(noise)

    def run(self, tmp: Path) -> Results:
        started = time.perf_counter()
        with inprocess.quiet_logs():
            if "in-process" in self.groups:
                self._watched("in process", self.in_process)
            if "body-size" in self.groups:
                self._watched("body size", self.body_size)
            if "scaling" in self.groups:
                self._watched("scaling", self.scaling)
            if "fallback" in self.groups:
                self._watched("fallback", self.fallback)
            if "http" in self.groups:
                self._watched("HTTP", functools.partial(self.http, tmp))
        machine.finish(self.results.machine)
        self.results.elapsed_s = time.perf_counter() - started
        return self.results


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ivig-cds benchmark (see bench/README.md)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer repeats: runs in under a minute")
    group.add_argument("--tiny", action="store_true", help="smoke-test mode: every code path, tiny counts")
    parser.add_argument("--out", type=Path, help="where to write the results (Markdown)")
    parser.add_argument("--profiles-dir", type=Path, help="where to write pyinstrument profiles")
    parser.add_argument("--profile-all", action="store_true", help="profile every scenario, met or not")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to SECONDS for the CPUs to be >= 90 %% idle over 5 s")
    parser.add_argument("--loadgen", choices=LOADGENS, default="auto",
                        help="HTTP load generator: wrk (a fixed duration per run), httpx (bench/loadgen.py, a "
                             "fixed count of calls), or auto (default): wrk when it is on PATH, else httpx")
    parser.add_argument("--only", action="append", choices=SCENARIO_GROUPS, metavar="SCENARIO",
                        help=f"run only these scenarios (repeatable; {', '.join(SCENARIO_GROUPS)}); "
                             "never writes bench/RESULTS.md unless --out says so")
    args = parser.parse_args(argv)
    loadgen, wrk, loadgen_reason = choose_loadgen(args.loadgen)
    groups = tuple(g for g in SCENARIO_GROUPS if g in args.only) if args.only else SCENARIO_GROUPS
    mode = MODES["quick" if args.quick else "tiny" if args.tiny else "full"]
    if mode.name == "full" and groups == SCENARIO_GROUPS:
        out = args.out or ROOT / "bench" / "RESULTS.md"
        profiles_dir = args.profiles_dir or ROOT / "bench" / "profiles"
    else:  # never overwrite the published results with a quick, tiny or partial run
        out = args.out or ROOT / "var" / "bench" / f"RESULTS-{mode.name}.md"
        profiles_dir = args.profiles_dir or ROOT / "var" / "bench" / "profiles"
    waited: bool | None = None
    if args.wait_idle > 0:
        waited = machine.wait_until_idle(args.wait_idle, log=log)
    loads = machine.load_average()
    cores = machine.usable_cores()
    if loads is not None and loads[0] > 0.5 * cores:
        log(f"warning: load average {loads[0]:.1f} on {cores} cores: other work is running, figures will be "
            "slower and noisier than on an idle machine")
    log(f"HTTP load generator: {loadgen} ({loadgen_reason})")
    runner = Runner(mode, profiles_dir, args.profile_all, loadgen=loadgen, wrk=wrk, loadgen_reason=loadgen_reason,
                    groups=groups)
    runner.results.machine.waited_for_idle = waited
    if groups != SCENARIO_GROUPS:
        runner.results.notes.append(f"Partial run (`--only`): only {', '.join(groups)} ran.")
    with tempfile.TemporaryDirectory(prefix="ivig-bench-") as tmp:
        results = runner.run(Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.render(results, out), encoding="utf-8")
    log(f"wrote {out} in {results.elapsed_s:.0f} s")
    for target in results.targets:
        state = "met" if target.met else "not measured" if target.met is None else "NOT MET"
        log(f"  {state:12} {target.goal}: {target.measured}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
