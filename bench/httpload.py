"""Over HTTP: gunicorn on loopback with the production config, loaded in a separate process by
``wrk`` (``bench/wrkload.py``, when it is on PATH) or by ``bench/loadgen.py`` (Python asyncio + httpx).

gunicorn is started directly (``cds-service serve`` refuses ``CDS_AUTH=off`` without ``--dev``) with
``CDS_AUTH=off CDS_PROFILE=development CDS_CONTENT_POLICY=all`` and the store the README recommends for
production (PostgreSQL: ``BENCH_DATABASE_URL``, else a local server on 127.0.0.1:5432 in a database of
its own, else SQLite, said so in the results), ``CDS_MAX_BODY_BYTES`` raised for the body-size series, and the
access log off; the service's own log lines go to a file.  The server's CPU time (master and
workers, from /proc) and the load generator's CPU time are recorded: on a 2-core machine the load
generator competes with the workers for the same cores.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import wrkload
from .stats import median, p99
from .workloads import Workload, card_ids

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION_CONFIG = ROOT / "gunicorn.conf.py"
CONCURRENCY = 16


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def production_settings() -> dict[str, Any]:
    """The production config's values as gunicorn would see them with the bench's environment."""
    previous = os.environ.get("GUNICORN_ACCESSLOG")
    os.environ["GUNICORN_ACCESSLOG"] = ""
    try:
        values = runpy.run_path(str(PRODUCTION_CONFIG))
    finally:
        if previous is None:
            os.environ.pop("GUNICORN_ACCESSLOG", None)
        else:
            os.environ["GUNICORN_ACCESSLOG"] = previous
    return {k: v for k, v in values.items() if k in ("workers", "threads", "worker_class", "keepalive",
                                                       "timeout", "accesslog")}


def config_file() -> tuple[Path, str]:
    """The config file to start gunicorn with and a note on it: the production file, as is."""
    return PRODUCTION_CONFIG, "gunicorn.conf.py as is"


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    config: Path
    config_note: str
    store_url: str = ""
    store_note: str = ""

    def pids(self) -> list[int]:
        pids = [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
            pids.extend(int(p) for p in children.split())
        except OSError:
            pass
        return pids

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the master and its workers so far (None off Linux)."""
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                return None
            total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# The store the README recommends for production: PostgreSQL.  BENCH_DATABASE_URL names one; otherwise a
# local server (the one CI and this machine run) is used when it answers, in a database of the bench's own.
LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/"
BENCH_DATABASE = "ivig_cds_bench"


def bench_store(tmp: Path) -> tuple[str, str]:
    """(SQLAlchemy URL, how it was chosen) of the store the HTTP phase runs against."""
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:
        return given, "BENCH_DATABASE_URL"
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=2,
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DATABASE,)).fetchone()
            if exists is None:
                conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
        return LOCAL_POSTGRES + BENCH_DATABASE, "PostgreSQL on 127.0.0.1:5432, as the README recommends for production"
    except Exception as exc:  # no local PostgreSQL: the embedded default
        return f"sqlite:///{tmp / 'bench.sqlite3'}", f"SQLite (no PostgreSQL on 127.0.0.1:5432: {type(exc).__name__})"


@contextmanager
def gunicorn(tmp: Path, *, startup_timeout_s: float = 60.0, extra_env: dict[str, str] | None = None,
             app: str = "cds_service.wsgi:app") -> Iterator[Server]:
    """gunicorn as the benchmark runs it; ``extra_env`` (e.g. GUNICORN_THREADS) for experiments; ``app``
    another WSGI app served with the same configuration (``bench.noop_wsgi:app``: the HTTP layer alone)."""
    port = free_port()
    config, note = config_file()
    store_url, store_note = bench_store(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_"))}
    env.update({
        "CDS_AUTH": "off",
        "CDS_PROFILE": "development",
        "CDS_CONTENT_POLICY": "all",
        "CDS_DATABASE_URL": store_url,
        "GUNICORN_ACCESSLOG": "",
        **(extra_env or {}),
    })
    log_path = tmp / "gunicorn.log"
    executable = Path(sys.executable).parent / "gunicorn"
    command = [str(executable), "-c", str(config), "--bind", f"127.0.0.1:{port}", app]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path, config, note, store_url, store_note)
    try:
        _wait_ready(server, startup_timeout_s)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.base_url + "/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer /healthz within {timeout_s:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # graceful: the master stops its workers
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def check_answer(server: Server, workload: Workload) -> tuple[int, list[str]]:
    """One call over HTTP: status and card ids (to be sure the load measures real answers)."""
    response = httpx.post(server.base_url + workload.path, content=workload.body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    return response.status_code, card_ids(response.json()) if response.status_code == 200 else []


@dataclass
class LoadRun:
    wall_s: float
    loadgen_cpu_s: float
    server_cpu_s: float | None
    latencies: dict[str, list[float]]  # per kind (wrk: one "all" list), successful and failed calls alike
    errors: dict[str, int]  # "http 500": n, "ConnectTimeout": n, "socket read": n, ...
    calls: int
    generator: str = "httpx"  # "httpx" (bench/loadgen.py) or "wrk"
    wrk: wrkload.WrkRun | None = None  # wrk's own figures (per_kind is then False)

    @property
    def per_kind(self) -> bool:
        return self.wrk is None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.wall_s


@dataclass
class LoadPhase:
    name: str
    description: str
    pattern: list[str]
    runs: list[LoadRun] = field(default_factory=list)

    @property
    def generators(self) -> list[str]:
        return list(dict.fromkeys(run.generator for run in self.runs))

    @property
    def per_kind(self) -> bool:
        return all(run.per_kind for run in self.runs)

    def latencies(self, kind: str | None = None) -> list[float]:
        out: list[float] = []
        for run in self.runs:
            for name, values in run.latencies.items():
                if kind is None or name == kind:
                    out.extend(values)
        return out

    @property
    def error_count(self) -> int:
        return sum(sum(run.errors.values()) for run in self.runs)

    @property
    def calls(self) -> int:
        return sum(run.calls for run in self.runs)

    def calls_per_s(self) -> list[float]:
        return [run.calls_per_s for run in self.runs]

    @property
    def server_cpu_s(self) -> float | None:
        """Server CPU seconds over all runs (None when a run could not read it)."""
        if not self.runs or any(run.server_cpu_s is None for run in self.runs):
            return None
        return sum(run.server_cpu_s or 0.0 for run in self.runs)

    @property
    def server_cpu_per_call(self) -> float | None:
        total = self.server_cpu_s
        return None if total is None else total / max(1, self.calls)

    def summary(self, kind: str | None = None) -> tuple[float, float]:
        values = self.latencies(kind)
        return median(values), p99(values)


def run_load(server: Server, tmp: Path, workloads: Sequence[Workload], pattern: Sequence[str], *,
             count: int, warmup: int, concurrency: int = CONCURRENCY) -> LoadRun:
    kinds = []
    for workload in workloads:
        body_file = tmp / f"body-{workload.name}.json"
        if not body_file.exists():
            body_file.write_bytes(workload.body)
        kinds.append({"name": workload.name, "path": workload.path, "body_file": str(body_file)})
    plan = tmp / "plan.json"
    plan.write_text(json.dumps({"kinds": kinds, "pattern": list(pattern)}), encoding="utf-8")
    if warmup:
        _loadgen(server, plan, count=warmup, concurrency=concurrency)
    cpu_before = server.cpu_seconds()
    result = _loadgen(server, plan, count=count, concurrency=concurrency)
    cpu_after = server.cpu_seconds()
    names: list[str] = result["kinds"]
    latencies: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, int] = {}
    for kind_index, latency, status, error in result["calls"]:
        latencies[names[kind_index]].append(float(latency))
        if status != 200:
            key = error or f"http {status}"
            errors[key] = errors.get(key, 0) + 1
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return LoadRun(wall_s=float(result["wall_s"]), loadgen_cpu_s=float(result["loadgen_cpu_s"]),
                   server_cpu_s=server_cpu, latencies=latencies, errors=errors, calls=len(result["calls"]))


def _loadgen(server: Server, plan: Path, *, count: int, concurrency: int) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("loadgen.py")), "--base-url", server.base_url,
         "--plan", str(plan), "--concurrency", str(concurrency), "--count", str(count)],
        capture_output=True, cwd=ROOT, timeout=max(120.0, count * 0.5), check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed ({completed.returncode}):\n"
                           f"{completed.stderr.decode(errors='replace')[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def run_load_wrk(server: Server, tmp: Path, workloads: Sequence[Workload], pattern: Sequence[str], *,
                 wrk: str, duration_s: int, warmup_s: int, concurrency: int = CONCURRENCY,
                 name: str = "load") -> LoadRun:
    """One fixed-duration wrk run (after a ``warmup_s`` wrk run when > 0) with the same plan as
    ``run_load``: ``-t2 -c<concurrency>``; every answer outside 2xx and every socket error counts."""
    script = wrkload.prepare(tmp, workloads, pattern, name)
    if warmup_s:
        wrkload.run(wrk, server.base_url, script, duration_s=warmup_s, connections=concurrency)
    cpu_before = server.cpu_seconds()
    result = wrkload.run(wrk, server.base_url, script, duration_s=duration_s, connections=concurrency)
    cpu_after = server.cpu_seconds()
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return LoadRun(wall_s=result.duration_s, loadgen_cpu_s=result.cpu_s, server_cpu_s=server_cpu,
                   latencies={"all": result.latencies_s}, errors=result.errors, calls=result.requests,
                   generator="wrk", wrk=result)
