"""Body size over HTTP (issue 16): the body-size workloads sent one at a time over one keep-alive
connection to the gunicorn the HTTP scenario runs (``CDS_MAX_BODY_BYTES`` raised to fit them), each call's
latency as the client sees it (send to full response read) and the server's CPU per call (master and
workers, from /proc), set against the in-process time of the same body measured earlier in the run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx

from .httpload import Server
from .stats import median
from .workloads import Workload, card_ids


@dataclass
class HttpBody:
    workload: Workload
    latency_s: list[float] = field(default_factory=list)
    server_cpu_s: float | None = None  # per call
    status: int = 0
    cards: list[str] = field(default_factory=list)
    in_process_s: float | None = None  # median service time of the same body, in process, same run
    in_process_cpu_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.cards == self.workload.expected_cards

    @property
    def ratio(self) -> float | None:
        """Median latency over HTTP / median in-process service time of the same body."""
        if not self.latency_s or not self.in_process_s:
            return None
        return median(self.latency_s) / self.in_process_s


def measure(server: Server, workload: Workload, *, repeats: int, warmup: int) -> HttpBody:
    result = HttpBody(workload)
    headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=120.0) as client:
        first = client.post(server.base_url + workload.path, content=workload.body, headers=headers)
        result.status = first.status_code
        result.cards = card_ids(first.json()) if first.status_code == 200 else []
        for _ in range(max(0, warmup - 1)):
            client.post(server.base_url + workload.path, content=workload.body, headers=headers)
        cpu_before = server.cpu_seconds()
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.post(server.base_url + workload.path, content=workload.body, headers=headers)
            response.read()
            result.latency_s.append(time.perf_counter() - started)
        cpu_after = server.cpu_seconds()
    if cpu_before is not None and cpu_after is not None and repeats:
        result.server_cpu_s = (cpu_after - cpu_before) / repeats
    return result
