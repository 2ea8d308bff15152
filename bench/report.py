"""bench/RESULTS.md from a run's results."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .stats import median, p99

if TYPE_CHECKING:
    from .inprocess import Measured
    from .run import Results


def _ms(seconds: float) -> str:
    value = seconds * 1000
    if value < 10:
        return f"{value:.3f} ms"
    if value < 100:
        return f"{value:.2f} ms"
    return f"{value:.0f} ms"


def _load(values: tuple[float, float, float] | None) -> str:
    return "n/a" if values is None else " / ".join(f"{v:.2f}" for v in values)


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(path, out.parent).replace(os.sep, "/")


def _cards(measured: Measured) -> str:
    if measured.ok:
        return ", ".join(measured.cards) or "none (as expected)"
    return (f"**UNEXPECTED**: HTTP {measured.status}, cards {measured.cards or 'none'}; expected "
            f"{measured.workload.expected_cards or 'none'}")


def _floor(measured: Measured) -> str:
    return f"{_ms(median(measured.orjson_decode_s))} / {_ms(median(measured.orjson_round_trip_s))}"


def render(results: Results, out: Path) -> str:
    mode = results.mode
    m = results.machine
    lines: list[str] = []
    add = lines.append
    add("# ivig-cds benchmark results")
    add("")
    add(f"Written by `bench/run.py` ({mode.name} mode{', `make bench`' if mode.name == 'full' else ''}) "
        f"on {m.finished_at or m.started_at}; the run took {results.elapsed_s:.0f} s. "
        "Method, scenarios and how to rerun: [bench/README.md](README.md). Every ratio below divides two "
        "figures measured in the same run, interleaved call by call.")
    add("")

    # -- machine ---------------------------------------------------------------------------------
    add("## Machine")
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| CPU | {m.cpu_model} |")
    add(f"| cores | {m.logical_cores} logical, {m.usable_cores} usable by this process |")
    if m.memory_gib is not None:
        add(f"| memory | {m.memory_gib:.1f} GiB |")
    add(f"| OS | {m.os_name} ({m.kernel}) |")
    add(f"| Python | {m.python} |")
    add(f"| packages | {', '.join(f'{k} {v}' for k, v in m.packages.items())} |")
    add(f"| code | git {m.git_commit}{' with uncommitted changes' if m.git_dirty else ''} |")
    add(f"| date | {m.started_at} to {m.finished_at} |")
    add(f"| load average (1/5/15 min) | {_load(m.load_at_start)} at start, {_load(m.load_at_end)} at end |")
    noisy = [w for w in m.noise if w.other_cores is not None]
    if noisy:
        add("| other processes' CPU during the run | "
            + ", ".join(f"{w.name}: {w.other_cores:.2f} cores" for w in noisy if w.other_cores is not None)
            + " (all CPU time on the machine minus the benchmark's own, over wall time) |")
    if m.waited_for_idle is not None:
        add(f"| waited for an idle machine | {'yes, started on an idle machine' if m.waited_for_idle else 'gave up'} |")
    add("")
    busy = 0.5 * m.usable_cores
    other = max((w.other_cores or 0.0 for w in m.noise), default=0.0)
    if other > 0.25 or (m.load_at_start is not None and max(m.load_at_start[0], (m.load_at_end or (0.0,))[0]) > busy):
        add(f"> The machine was not idle (other processes' CPU or 1-minute load above {busy:g} on "
            f"{m.usable_cores} cores): "
            "other processes shared the CPUs, so absolute times are slower and noisier than on an idle "
            "machine. Ratios are less affected (both sides of each ratio are timed back to back).")
        add("")

    # -- targets ---------------------------------------------------------------------------------
    add("## Targets")
    add("")
    add("| target | measured | result |")
    add("|---|---|---|")
    for target in results.targets:
        state = "met" if target.met else "not measured" if target.met is None else "**not met**"
        profile = ""
        if target.profile is not None:
            profile = f" ([profile]({_rel(target.profile.path, out)}))"
        add(f"| {target.goal} | {target.measured} | {state}{profile} |")
    add("")

    # -- in process ------------------------------------------------------------------------------
    if results.in_process:
        add("## In process (Flask test client)")
        add("")
        add("`create_app({\"AUTH\": \"off\", \"CONTENT_POLICY\": \"all\", \"DATABASE_URL\": \"sqlite://\"})`, "
            "hook `order-sign` (service `ivig-order-sign`). *Service time* is one `client.post()` with the "
            "response body read; *JSON round trip* is `json.dumps(json.loads(body))` of the same request body, "
            "timed right after each call. Ratio = median service time / median JSON round trip. *CPU* is the "
            "calling thread's CPU time for the same calls (what a call costs when wall time includes waiting "
            "for a core on a busy machine).")
        add("")
        add("*orjson floor*: `orjson.loads(body)` and `orjson.dumps(orjson.loads(body))` of the same body, timed "
            "after each call (issue 16); *vs floor* = median service time / median orjson decode+encode.")
        add("")
        add("| scenario | prefetch (distinct / entries) | body | calls | service median | service p99 | CPU median "
            "| JSON round trip median | p99 | ratio | orjson decode / decode+encode | vs floor | cards returned |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for measured in results.in_process:
            w = measured.workload
            add(f"| {w.name}: {w.description} | {w.prefetch_resources} / {w.prefetch_entries} "
                f"| {w.body_kib:.0f} KiB | {len(measured.service_s)} | {_ms(median(measured.service_s))} "
                f"| {_ms(p99(measured.service_s))} | {_ms(median(measured.service_cpu_s))} "
                f"| {_ms(median(measured.json_s))} | {_ms(p99(measured.json_s))} | {measured.ratio:.1f}x "
                f"| {_floor(measured)} | {measured.round_trip_ratio:.1f}x | {_cards(measured)} |")
        add("")
        if results.healthz_s:
            add(f"For scale: the test client's own cost, `GET /healthz` (no body, no work), is "
                f"{_ms(median(results.healthz_s))} median (p99 {_ms(p99(results.healthz_s))}) over "
                f"{len(results.healthz_s)} calls; it is included in every service time above.")
            add("")

    # -- HTTP ------------------------------------------------------------------------------------
    if results.http_phases:
        cfg = results.http_config
        add("## Over HTTP (gunicorn on loopback)")
        add("")
        if cfg.get("loadgen") == "wrk":
            load = (f"`{cfg.get('wrk_version')}` (`bench/wrkload.py`) in its own process: "
                    f"`wrk -t{cfg.get('wrk_threads')} -c{cfg.get('concurrency')} -d<duration> "
                    f"--timeout {cfg.get('wrk_timeout_s')}s --latency -s "
                    f"<generated Lua script>`, i.e. {cfg.get('concurrency')} concurrent clients over keep-alive "
                    "connections (each sends its next call when the previous answer is complete), each wrk "
                    "thread cycling through the same request bodies and paths as the Python generator, for a "
                    "fixed duration per run after a short wrk warm-up run. The script's `response()` counts every "
                    "answer outside 2xx and its `done()` reports wrk's summary, socket errors, percentiles and "
                    "latency histogram as JSON. wrk 4 applies a coordinated-omission correction to its histogram "
                    "(synthetic samples below every slow call); the bench undoes it exactly, so p50/p99 below are "
                    "every call's latency as its client saw it (the same quantity as the Python generator's), and "
                    "wrk's own corrected percentiles are listed after the table")
        else:
            load = (f"`bench/loadgen.py` in its own process, Python asyncio + httpx, {cfg.get('concurrency')} "
                    "concurrent clients over keep-alive connections, a fixed number of calls per run after a "
                    "warm-up")
        add(f"gunicorn with `{cfg.get('config_file')}`: {cfg.get('workers')} workers x {cfg.get('threads')} "
            f"threads, `{cfg.get('worker_class')}`, keep-alive {cfg.get('keepalive')} s, access log off; env "
            "`CDS_AUTH=off CDS_PROFILE=development CDS_CONTENT_POLICY=all CDS_MAX_BODY_BYTES=<raised for the "
            f"body-size series>`; store: **{cfg.get('store')}** ({cfg.get('store_note')}). Load: "
            f"{load}. Latency is per call as the client sees it (send to full response); p50/p99 pool every "
            "call of every run; calls/s is per run (median, and the range when there are several runs).")
        add("")
        if cfg.get("loadgen_reason"):
            add(f"Load generator: **{cfg.get('loadgen')}** ({cfg.get('loadgen_reason')}).")
            add("")
        if cfg.get("config_note") and cfg.get("config_note") != "gunicorn.conf.py as is":
            add(f"> Config: {cfg.get('config_note')}.")
            add("")
        add("| phase | runs x calls | calls/s | p50 | p99 | per kind (p50 / p99) | errors "
            "| server CPU | load generator CPU |")
        add("|---|---|---|---|---|---|---|---|---|")
        for phase in results.http_phases:
            rates = phase.calls_per_s()
            rate = f"{median(rates):.0f}"
            if len(rates) > 1:
                rate += f" ({min(rates):.0f}-{max(rates):.0f})"
            p50_s, p99_s = phase.summary()
            if phase.per_kind:
                kinds = "; ".join(f"{kind}: {_ms(phase.summary(kind)[0])} / {_ms(phase.summary(kind)[1])}"
                                  for kind in dict.fromkeys(phase.pattern))
            else:
                kinds = "n/a (wrk gives one distribution per run)"
            errors: dict[str, int] = {}
            for run in phase.runs:
                for key, count in run.errors.items():
                    errors[key] = errors.get(key, 0) + count
            error_text = str(phase.error_count) + (
                f" ({', '.join(f'{k}: {v}' for k, v in errors.items())})" if errors else "")
            wall = sum(run.wall_s for run in phase.runs)
            calls = max(1, phase.calls)
            server_cpu, server_per_call = phase.server_cpu_s, phase.server_cpu_per_call
            server = "n/a" if server_cpu is None or server_per_call is None else (
                f"{server_cpu / wall:.2f} cores busy, {_ms(server_per_call)} per call")
            loadgen_cpu = sum(run.loadgen_cpu_s for run in phase.runs)
            loadgen = f"{loadgen_cpu / wall:.2f} cores busy, {_ms(loadgen_cpu / calls)} per call"
            if phase.runs and phase.runs[0].wrk is not None:
                per_run = (f"{phase.runs[0].wrk.duration_s:.0f} s ({', '.join(f'{r.calls:,}' for r in phase.runs)} "
                           "calls)")
            else:
                per_run = str(phase.runs[0].calls if phase.runs else 0)
            add(f"| {phase.name}: {phase.description} ({', '.join(phase.generators)}) | {len(phase.runs)} x {per_run} "
                f"| {rate} | {_ms(p50_s)} | {_ms(p99_s)} | {kinds} | {error_text} | {server} | {loadgen} |")
        add("")
        wrk_rows = [(phase, index, run) for phase in results.http_phases for index, run in enumerate(phase.runs)
                    if run.wrk is not None]
        if wrk_rows:
            add("wrk's own figures per run (its percentiles are of the coordinated-omission-corrected histogram; "
                "\"calls with latency\" is how many calls the corrected-then-undone histogram holds; wrk CPU is "
                "`os.clock()` when the run ended, and in brackets its whole process from rusage, start-up and "
                "the `done()` histogram walk included):")
            add("")
            add("| phase, run | calls | duration | calls/s | wrk p50 | wrk p90 | wrk p99 | wrk max "
                "| calls with latency | non-2xx | socket errors | wrk CPU |")
            add("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for phase, index, run in wrk_rows:
                w = run.wrk
                assert w is not None
                pct = w.percentiles_s
                basis = {"raw": "", "corrected": " (corrected: undoing failed)",
                         "corrected-quantiles": " (corrected quantiles: histogram too wide)"}[w.latency_basis]
                sockets = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items() if v) or "0"
                add(f"| {phase.name} {index + 1} | {w.requests:,} | {w.duration_s:.2f} s "
                    f"| {w.requests / w.duration_s:.0f} | "
                    + " | ".join(_ms(pct[k]) if k in pct else "n/a" for k in ("p50", "p90", "p99", "max"))
                    + f" | {len(w.latencies_s):,}{basis} | {w.non2xx} | {sockets} "
                    f"| {w.cpu_s:.2f} s ({w.cpu_total_s:.2f} s) |")
            add("")
        for name, status, cards, expected in results.http_checks:
            if status != 200 or cards != expected:
                add(f"> **Check failed** before the load: `{name}` over HTTP answered {status} with cards "
                    f"{cards or 'none'}; expected {expected or 'none'}.")
                add("")
        add(f"CPU: the machine has {m.usable_cores} usable cores shared by the gunicorn workers and the load "
            "generator; \"cores busy\" is CPU seconds over the phase's wall time, \"per call\" is CPU seconds "
            "over the number of calls (gunicorn master and workers together).")
        if results.mix_process_cpu_s is not None:
            add("")
            runs = results.mix_process_cpu_runs
            spread = (f" (median of {len(runs)} measurements, one after each mix run: "
                      f"{', '.join(_ms(r) for r in runs)})") if len(runs) > 1 else ""
            add(f"For comparison, the same 50/50 mix costs {_ms(results.mix_process_cpu_s)} of CPU per call in "
                f"process{spread} (all threads of the process, the audit writer included, through the Flask test "
                f"client, on the same {cfg.get('store')} store): the difference per call is the HTTP layer "
                "(gunicorn's request parsing and socket I/O, thread hand-offs, contention for the GIL between a "
                "worker's threads) and whatever else ran on the machine.  The `http-layer` row measures the first "
                "part directly: the same gunicorn configuration under the same load, serving `bench/noop_wsgi.py` "
                "(reads the body, answers `{\"cards\":[]}`), so its CPU per call is the HTTP layer's own.")
            mix = next((p for p in results.http_phases if p.name == "mix"), None)
            server_per_call = None if mix is None else mix.server_cpu_per_call
            if mix is not None and server_per_call is not None:
                loadgen_per_call = sum(r.loadgen_cpu_s for r in mix.runs) / max(1, mix.calls)
                add("")
                add(f"CPU ceiling: at {_ms(server_per_call)} of server CPU and {_ms(loadgen_per_call)} of load "
                    f"generator CPU per call, {m.usable_cores} fully available cores cap this setup at about "
                    f"{m.usable_cores / (server_per_call + loadgen_per_call):.0f} calls/s "
                    f"({m.usable_cores / server_per_call:.0f} calls/s for the server alone, with the load "
                    "generator on other cores).")
        add("")

    if results.http_bodies:
        add("### Body size over HTTP")
        add("")
        add("The body-size workloads (below) sent to the same gunicorn one call at a time over one keep-alive "
            "connection (httpx): latency from send to the full response read, the server's CPU per call (master "
            "and workers), and the in-process median of the same body from the body-size scenario of this run.")
        add("")
        add("| workload | body | calls | HTTP median | HTTP p99 | server CPU per call | in-process median "
            "| in-process CPU | HTTP / in process | cards |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for b in results.http_bodies:
            w = b.workload
            cards = ", ".join(b.cards) if b.ok else f"**UNEXPECTED** (HTTP {b.status}, {b.cards or 'none'})"
            add(f"| {w.description} | {w.body_kib / 1024:.2f} MiB | {len(b.latency_s)} | {_ms(median(b.latency_s))} "
                f"| {_ms(p99(b.latency_s))} | {_ms(b.server_cpu_s) if b.server_cpu_s is not None else 'n/a'} "
                f"| {_ms(b.in_process_s or 0.0)} | {_ms(b.in_process_cpu_s or 0.0)} "
                f"| {b.ratio or 0.0:.2f}x | {cards or 'none (as expected)'} |")
        add("")

    # -- fallback --------------------------------------------------------------------------------
    fb = results.fallback
    if fb is not None:
        add("## FHIR fallback (no prefetch for five keys)")
        add("")
        add(f"The typical patient's request with {len(fb.workload.missing_keys)} keys left out of prefetch "
            f"(`{'`, `'.join(fb.workload.missing_keys)}`) and `fhirServer` set to a loopback FHIR server "
            f"(`tests/fhir_server.py`) that waits {fb.delay_s * 1000:.0f} ms before answering each request. "
            f"\"One query\" is a `requests` GET of one of those five queries against the same server, "
            f"alternating with the hook calls.")
        add("")
        add("| | calls | median | p99 |")
        add("|---|---|---|---|")
        add(f"| hook call | {len(fb.call_s)} | {_ms(median(fb.call_s))} | {_ms(p99(fb.call_s))} |")
        add(f"| one query | {len(fb.query_s)} | {_ms(median(fb.query_s))} | {_ms(p99(fb.query_s))} |")
        add("")
        add(f"Ratio (median call / median query): **{fb.ratio:.2f}x**. FHIR requests per hook call: "
            f"{fb.server_requests_per_call:.1f}; most requests in flight at once: {fb.max_in_flight}. "
            f"Cards: {', '.join(fb.cards) if fb.ok else f'**UNEXPECTED** (HTTP {fb.status}, {fb.cards})'}.")
        if fb.gather_log:
            add("")
            add(f"Last call's gather log line: `{fb.gather_log}`")
        add("")

    # -- body size -------------------------------------------------------------------------------
    if results.body_sizes:
        add("## Body size: fast path and IVIG call against the orjson floor")
        add("")
        add("The fast-path fixture (a non-IVIG order: answered from `context` alone) and the typical IVIG fixture, "
            "each with 0, 2,000 and 20,000 routine Observations added to the prefetch, in process with "
            "`MAX_BODY_BYTES` raised. *vs decode* = median service time / median `orjson.loads(body)`; "
            "*vs decode+encode* = / median `orjson.dumps(orjson.loads(body))`.")
        add("")
        add("| workload | body | calls | service median | CPU median | orjson decode | orjson decode+encode "
            "| vs decode | vs decode+encode | stdlib JSON round trip | cards |")
        add("|---|---|---|---|---|---|---|---|---|---|---|")
        for measured in results.body_sizes:
            w = measured.workload
            add(f"| {w.description} | {w.body_kib / 1024:.2f} MiB | {len(measured.service_s)} "
                f"| {_ms(median(measured.service_s))} | {_ms(median(measured.service_cpu_s))} "
                f"| {_ms(median(measured.orjson_decode_s))} | {_ms(median(measured.orjson_round_trip_s))} "
                f"| {measured.decode_ratio:.2f}x | {measured.round_trip_ratio:.2f}x "
                f"| {_ms(median(measured.json_s))} | {_cards(measured)} |")
        add("")

    # -- scaling ---------------------------------------------------------------------------------
    if results.scaling:
        add("## Scaling with prefetch size")
        add("")
        add("The typical patient padded to N prefetched resources in the proportions of the large prefetch "
            "(80 % Observations, 8 % Conditions, 12 % MedicationRequests, one Patient). These bodies are "
            "over the 5 MiB production `MAX_BODY_BYTES` from about 5,000 resources, so this series runs with "
            "`MAX_BODY_BYTES` raised; everything else as in process above.")
        add("")
        add("| resources | body | calls | service median | p99 | CPU median | per resource | "
            "JSON round trip median | ratio | cards |")
        add("|---|---|---|---|---|---|---|---|---|---|")
        for measured in results.scaling:
            w = measured.workload
            per = median(measured.service_s) / max(1, w.prefetch_resources) * 1e6
            add(f"| {w.prefetch_resources:,} | {w.body_kib / 1024:.2f} MiB | {len(measured.service_s)} "
                f"| {_ms(median(measured.service_s))} | {_ms(p99(measured.service_s))} "
                f"| {_ms(median(measured.service_cpu_s))} | {per:.0f} µs "
                f"| {_ms(median(measured.json_s))} | {measured.ratio:.1f}x | {_cards(measured)} |")
        add("")
        if len(results.scaling) >= 2:
            first, last = results.scaling[0], results.scaling[-1]
            add(f"Growth from {first.workload.prefetch_resources:,} to {last.workload.prefetch_resources:,} "
                f"resources ({last.workload.prefetch_resources / first.workload.prefetch_resources:.0f}x): "
                f"service time {median(last.service_s) / median(first.service_s):.1f}x, JSON round trip "
                f"{median(last.json_s) / median(first.json_s):.1f}x.")
            add("")
        if results.scaling_gc:
            add("Cyclic garbage collector during one extra call per size (from `gc.callbacks`; pyinstrument "
                "charges this time to whichever frame was allocating):")
            add("")
            add("| resources | call | collections (gen 0 / 1 / 2) | time in GC | share |")
            add("|---|---|---|---|---|")
            for size, stats in results.scaling_gc:
                counts = " / ".join(str(stats.collections.get(g, 0)) for g in (0, 1, 2))
                add(f"| {size:,} | {_ms(stats.call_s)} | {counts} | {_ms(stats.gc_s)} "
                    f"| {stats.gc_s / stats.call_s * 100:.0f} % |")
            add("")
        if results.scaling_fit is not None:
            slope, intercept, r2 = results.scaling_fit
            add("Least-squares fit of median service time on resources: "
                f"**{slope * 1e6:.1f} µs per resource** + {_ms(intercept)} fixed (R² = {r2:.4f}).")
            add("")

    # -- profiles --------------------------------------------------------------------------------
    profiled = [t for t in results.targets if t.profile is not None]
    if profiled:
        add("## Where the time goes")
        add("")
        add("pyinstrument profiles (functions by self time, then the call tree) for "
            + ("every scenario (`--profile-all`)." if all(t.profile for t in results.targets)
               else "each missed target.")
            + " Top functions by self time:")
        add("")
        for target in profiled:
            found = target.profile
            assert found is not None
            add(f"### {target.scenario} ([{_rel(found.path, out)}]({_rel(found.path, out)}))")
            add("")
            add(f"{found.calls} calls, {found.seconds:.2f} s profiled.")
            add("")
            add("```")
            lines.extend(found.top or ["(no samples)"])
            add("```")
            add("")

    # -- notes -----------------------------------------------------------------------------------
    add("## Notes")
    add("")
    add("- Requests are built from the project's fixtures with `cds_service.devtools.fixtures.build_request`; padded "
        "patients add routine labs, unrelated problems and non-immunosuppressant medications "
        "(`bench/workloads.py`), and every scenario checks that the cards returned are the fixture's "
        "expected cards.")
    add("- The large and scaling requests are built with the `laboratory` template's `_count=1000` removed, "
        "so all their Observations arrive in one prefetched Bundle (no `next` link to page).")
    add("- Log lines are produced as in production (INFO, redaction filter) but written to /dev/null in "
        "process, and to a file under gunicorn.")
    add("- p99 over few calls (large, scaling) is close to the maximum; read it with the call count.")
    for note in results.notes:
        add(f"- {note}")
    add("")
    return "\n".join(lines)
