"""Load generator, run in its own process: N concurrent asyncio clients (httpx, keep-alive) POST a
fixed number of hook calls and report every call's latency and status as JSON on stdout.

    python bench/loadgen.py --base-url http://127.0.0.1:8080 --plan plan.json \
        --concurrency 16 --count 3000 --warmup 200

``plan.json``: {"kinds": [{"name": "typical", "path": "/cds-services/x", "body_file": "..."}, ...],
"pattern": ["typical", "fast-path"]}; call i sends the kind pattern[i % len(pattern)].
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    body: bytes


@dataclass
class Call:
    kind: int
    latency_s: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    error: str = ""


async def _drive(client: httpx.AsyncClient, kinds: list[Kind], pattern: list[int], count: int,
                 concurrency: int) -> list[Call]:
    calls: list[Call] = []
    next_index = 0
    headers = {"Content-Type": "application/json", "Accept": "application/json"}

    async def worker() -> None:
        nonlocal next_index
        while True:
            index = next_index
            if index >= count:
                return
            next_index += 1
            kind_index = pattern[index % len(pattern)]
            kind = kinds[kind_index]
            started = time.perf_counter()
            try:
                response = await client.post(kind.path, content=kind.body, headers=headers)
                status, error = response.status_code, ""
            except httpx.HTTPError as exc:
                status, error = 0, type(exc).__name__
            calls.append(Call(kind_index, time.perf_counter() - started, status, error))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls


async def run(base_url: str, kinds: list[Kind], pattern: list[int], *, count: int, warmup: int,
              concurrency: int, timeout_s: float) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout_s) as client:
        if warmup:
            await _drive(client, kinds, pattern, warmup, concurrency)
        cpu_started = time.process_time()
        started = time.perf_counter()
        calls = await _drive(client, kinds, pattern, count, concurrency)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    return {
        "kinds": [k.name for k in kinds],
        "wall_s": wall,
        "loadgen_cpu_s": cpu,
        "concurrency": concurrency,
        "calls": [[c.kind, round(c.latency_s, 7), c.status, c.error] for c in calls],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text(encoding="utf-8"))
    kinds = [Kind(k["name"], k["path"], Path(k["body_file"]).read_bytes()) for k in plan["kinds"]]
    names = [k.name for k in kinds]
    pattern = [names.index(name) for name in plan["pattern"]]
    result = asyncio.run(run(args.base_url, kinds, pattern, count=args.count, warmup=args.warmup,
                             concurrency=args.concurrency, timeout_s=args.timeout))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
