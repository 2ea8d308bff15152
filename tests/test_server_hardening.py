"""Issue 15 against a real gunicorn on loopback, started with the image's command and configuration:
slow and partial clients do not starve the workers, a chunked body over the limit is 413, a token sent
concurrently to both workers is accepted once, and SIGTERM flushes the queued audit rows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, select
from test_gunicorn import free_port, local_argv

from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.engine.services import default_services
from cds_service.engine.store import audit_table

REPO = Path(__file__).resolve().parent.parent
ISS = "https://ehr.server-hardening.example.org"
KID = "server-hardening-key"
SELECT = "/cds-services/ivig-order-select"
START_TIMEOUT_S = 30.0
# Half a request line (stock gthread blocks a thread on each: 16 of them stop /healthz) and half a header.
PARTIALS = (b"GET /healthz HT", b"POST /cds-services/ivig-order-select HTTP/1.1\r\nHost: x\r\nContent-Le")


@dataclass
class Gunicorn:
    base_url: str
    database: Path
    private_pem: bytes
    process: subprocess.Popen[bytes]
    log: Path

    def token(self, path: str) -> str:
        return mint_token(self.private_pem, alg="ES384", kid=KID, iss=ISS, aud=self.base_url + path)

    def headers(self, path: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(path)}"}


def hook_request() -> dict[str, Any]:
    service = default_services()["ivig-order-select"]
    return build_request(load_fixture("pl7-ro52-rpild"), "order-select", templates=service.prefetch)


def start(folder: Path, **extra_env: str) -> Gunicorn:
    private_pem, jwk = new_key_pair("ES384", KID)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    database = folder / "served.sqlite3"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_"))}
    env.update({
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_ACCESSLOG": "",
        "CDS_TRUSTED_ISSUERS": json.dumps({ISS: {"jwks": {"keys": [jwk]}}}),
        "CDS_PUBLIC_BASE_URL": base_url,
        "CDS_DATABASE_URL": f"sqlite:///{database}",
        "CDS_AUDIT_KEY": "7c2e9a4f1b6d3058e2a7c4f9b1d6e3a8c5f2b9d4e1a6c3f8",
        "CDS_CONTENT_POLICY": "all",
        **extra_env,
    })
    log = folder / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(local_argv(), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(base_url + "/readyz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"gunicorn did not get ready in {START_TIMEOUT_S}s:\n{log.read_text()}")
        time.sleep(0.1)
    return Gunicorn(base_url, database, private_pem, process, log)


def stop(process: subprocess.Popen[bytes], timeout: float = 25) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    server = start(tmp_path_factory.mktemp("served"), GUNICORN_WORKERS="2", GUNICORN_THREADS="8",
                   GUNICORN_HEADER_TIMEOUT="3", CDS_MAX_BODY_BYTES="1000000")
    yield server
    stop(server.process)


def _partial_connections(base_url: str, count: int) -> list[socket.socket]:
    host, port = base_url.removeprefix("http://").split(":")
    held = []
    for index in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(PARTIALS[index % len(PARTIALS)])
        held.append(sock)
    return held


def test_partial_header_connections_do_not_starve_the_workers(served: Gunicorn) -> None:
    held = _partial_connections(served.base_url, 64)
    try:
        time.sleep(0.3)  # let both workers accept them
        started = time.monotonic()
        assert requests.get(served.base_url + "/healthz", timeout=5).status_code == 200
        response = requests.post(served.base_url + SELECT, json=hook_request(), headers=served.headers(SELECT),
                                 timeout=5)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and response.json()["cards"]
        assert elapsed < 1.0, f"healthz + hook call took {elapsed:.2f}s with 64 partial clients"
    finally:
        for sock in held:
            sock.close()


def test_half_sent_bodies_do_not_starve_the_workers(served: Gunicorn) -> None:
    """64 clients that send a whole header (Content-Length among the other headers, not last) and half
    of the body they declared: the event loop holds them, no thread waits on them."""
    host, port = served.base_url.removeprefix("http://").split(":")
    body = json.dumps(hook_request()).encode()
    head = (f"POST {SELECT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {served.token(SELECT)}\r\n\r\n").encode()
    held = []
    try:
        for _ in range(64):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(head + body[:len(body) // 2])
            held.append(sock)
        time.sleep(0.3)  # let both workers accept them
        started = time.monotonic()
        assert requests.get(served.base_url + "/healthz", timeout=5).status_code == 200
        response = requests.post(served.base_url + SELECT, json=hook_request(), headers=served.headers(SELECT),
                                 timeout=5)
        elapsed = time.monotonic() - started
        assert response.status_code == 200 and response.json()["cards"]
        assert elapsed < 1.0, f"healthz + hook call took {elapsed:.2f}s with 64 half-sent bodies"
        # and a held call completes when the rest of its body arrives
        held[0].sendall(body[len(body) // 2:])
        held[0].settimeout(10)
        assert held[0].recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()


def test_a_request_whose_header_never_ends_is_dropped(served: Gunicorn) -> None:
    (sock,) = _partial_connections(served.base_url, 1)
    with sock:
        sock.settimeout(10)
        started = time.monotonic()
        answer = sock.recv(4096)  # the 408 (or the close) after GUNICORN_HEADER_TIMEOUT=3 s
        assert time.monotonic() - started < 6
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


def test_slow_body_is_buffered_before_a_thread_sees_it(served: Gunicorn) -> None:
    """A body that arrives in pieces still reaches the app whole."""
    body = json.dumps(hook_request()).encode()
    host, port = served.base_url.removeprefix("http://").split(":")
    head = (f"POST {SELECT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {served.token(SELECT)}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        for start_at in range(0, len(body), len(body) // 5 + 1):
            sock.sendall(body[start_at:start_at + len(body) // 5 + 1])
            time.sleep(0.1)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_pipelined_requests_after_a_large_body_are_each_answered_in_order(served: Gunicorn) -> None:
    """A hook call (a body far larger than one read) with the next requests sent behind it in the same
    write: each is answered, in order, at once -- none waits for keep-alive to run out, none is lost."""
    body = json.dumps(hook_request()).encode()
    assert len(body) > 16 * 1024
    host, port = served.base_url.removeprefix("http://").split(":")
    first = (f"POST {SELECT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
             f"Authorization: Bearer {served.token(SELECT)}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    second = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    third = b"GET /cds-services/no-such-service HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(first + second)
        time.sleep(0.3)
        sock.sendall(third)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses[:2] == [b"200", b"200"] and statuses[2] in (b"404", b"405"), answer[:300]
    assert b'"cards"' in answer.split(b"HTTP/1.1 ")[1]
    assert time.monotonic() - started < 4  # not held until the keep-alive timeout (5 s)


def test_a_chunked_body_over_the_limit_is_413(served: Gunicorn) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"hook": "order-select", "pad": "'
        for _ in range(40):
            yield b"x" * 50_000  # 2 MB in all, the limit is 1 MB
        yield b'"}'

    response = requests.post(served.base_url + SELECT, data=chunks(), timeout=20,
                             headers={"Content-Type": "application/json", **served.headers(SELECT)})
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "payload_too_large"


def test_a_token_sent_to_both_workers_at_once_is_accepted_once(served: Gunicorn) -> None:
    token = served.token(SELECT)
    body = hook_request()
    barrier = threading.Barrier(8)

    def send(_: int) -> int:
        session = requests.Session()  # a connection each: spread over both workers
        barrier.wait(timeout=10)
        return session.post(served.base_url + SELECT, json=body, timeout=10,
                            headers={"Authorization": f"Bearer {token}"}).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert sorted(statuses) == [200] + [401] * 7, statuses


def test_sigterm_after_30_calls_leaves_30_audit_rows(tmp_path: Path) -> None:
    server = start(tmp_path, GUNICORN_WORKERS="2")
    try:
        for _ in range(30):
            response = requests.post(server.base_url + SELECT, json=hook_request(), headers=server.headers(SELECT),
                                     timeout=10)
            assert response.status_code == 200
    finally:
        stop(server.process)
    assert server.process.returncode == 0, server.log.read_text()[-3000:]
    engine = create_engine(f"sqlite:///{server.database}")
    with engine.connect() as conn:
        outcomes = [row.outcome for row in conn.execute(select(audit_table.c.outcome))]
    engine.dispose()
    assert outcomes.count("cards") == 30, (outcomes, server.log.read_text()[-3000:])
