"""What the benchmark ran on: CPU, cores, memory, OS, Python, key package versions, load, git state."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PACKAGES = ("flask", "werkzeug", "gunicorn", "jsonschema", "jinja2", "requests", "httpx", "SQLAlchemy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


@dataclass
class Machine:
    cpu_model: str
    logical_cores: int
    usable_cores: int
    memory_gib: float | None
    os_name: str
    kernel: str
    python: str
    packages: dict[str, str]
    started_at: str
    load_at_start: tuple[float, float, float] | None
    git_commit: str
    git_dirty: bool
    load_at_end: tuple[float, float, float] | None = None
    finished_at: str = ""
    waited_for_idle: bool | None = None  # None: not asked to wait
    noise: list[CpuWatch] = field(default_factory=list)


def describe(root: Path) -> Machine:
    packages: dict[str, str] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return Machine(
        cpu_model=_cpu_model(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=usable_cores(),
        memory_gib=_memory_gib(),
        os_name=_os_name(),
        kernel=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        packages=packages,
        started_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        load_at_start=load_average(),
        git_commit=_git(root, "rev-parse", "--short", "HEAD") or "unknown",
        git_dirty=bool(_git(root, "status", "--porcelain", "--untracked-files=no")),
    )


def finish(machine: Machine) -> None:
    machine.load_at_end = load_average()
    machine.finished_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (from /proc/stat), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """This process's CPU seconds plus those of the children it has waited for (gunicorn, loadgen)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class CpuWatch:
    """How busy *other* processes kept the CPUs while a scenario ran (noise indicator)."""

    name: str
    busy_start: float | None
    own_start: float
    wall_start: float
    other_cores: float | None = None

    def stop(self, extra_own_s: float = 0.0) -> None:
        """``extra_own_s``: CPU of the bench's own children not yet waited for (a running gunicorn)."""
        busy = _busy_cpu_seconds()
        wall = time.monotonic() - self.wall_start
        if busy is None or self.busy_start is None or wall <= 0:
            return
        own = _own_cpu_seconds() - self.own_start + extra_own_s
        self.other_cores = max(0.0, (busy - self.busy_start - own) / wall)


def watch(name: str) -> CpuWatch:
    return CpuWatch(name, _busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic())


def wait_until_idle(max_wait_s: float, *, window_s: float = 5.0, idle_share: float = 0.9,
                    log: Callable[[str], None] = print) -> bool:
    """Wait (up to ``max_wait_s``) for a ``window_s`` window in which the CPUs are at least
    ``idle_share`` idle.  True when such a window was seen."""
    deadline = time.monotonic() + max_wait_s
    cores = os.cpu_count() or 1
    while True:
        before = _busy_cpu_seconds()
        time.sleep(window_s)
        after = _busy_cpu_seconds()
        if before is None or after is None:
            return False
        busy_share = (after - before) / (window_s * cores)
        if busy_share <= 1 - idle_share:
            return True
        if time.monotonic() >= deadline:
            log(f"machine still {busy_share * 100:.0f} % busy after waiting {max_wait_s:.0f} s; running anyway")
            return False
        log(f"machine {busy_share * 100:.0f} % busy; waiting for it to settle")
