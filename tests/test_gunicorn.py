"""The production image's command (issue 2 item 8), without Docker: the Dockerfile's CMD is parsed and
run as is on a loopback port, with production defaults (AUTH=jwt, the package's cards) and a trusted
issuer made here."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_service import cli
from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.protocol.schema import first_error

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
ISS = "https://ehr.example.org"
KID = "gunicorn-test-key"
START_TIMEOUT_S = 30.0


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def image_command() -> list[str]:
    """The CMD of the image, as an argv list (exec form or shell form)."""
    cmds = instruction("CMD")
    assert len(cmds) == 1, f"expected one CMD, found {cmds}"
    text = cmds[0]
    if text.startswith("["):
        argv: list[str] = json.loads(text)
        return argv
    return shlex.split(text)


def workdir() -> str:
    dirs = instruction("WORKDIR")
    assert dirs, "the Dockerfile sets no WORKDIR"
    return dirs[-1]


def local_path(arg: str) -> str:
    """An argument of the image's CMD with the image's WORKDIR mapped onto this checkout."""
    prefix = workdir().rstrip("/") + "/"
    return str(REPO / arg[len(prefix):]) if arg.startswith(prefix) else arg


def local_argv() -> list[str]:
    return [local_path(arg) for arg in image_command()]


# --- the Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile_cmd_is_gunicorn_with_the_packaged_config() -> None:
    argv = image_command()
    assert len(argv) == 4, argv
    assert argv[:2] == ["gunicorn", "--config"] and argv[3] == "cds_service.wsgi:app", argv
    # The configuration installed with the package, the one `cds-service serve` uses too.
    assert argv[2] == cli.GUNICORN_CONFIG == "python:cds_service.gunicorn_conf", argv
    config = importlib.import_module(argv[2].removeprefix("python:"))
    assert config.worker_class == "cds_service.gunicorn_worker.BufferingThreadWorker"
    assert config.wsgi_app == argv[3]


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = instruction("USER")
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    # USER comes after the last RUN (installing needs root; serving must not).
    keywords = [keyword for keyword, _ in dockerfile_instructions()]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:]


def test_dockerfile_has_a_healthcheck_on_healthz() -> None:
    checks = instruction("HEALTHCHECK")
    assert checks and "/healthz" in checks[-1]
    assert "NONE" not in checks[-1].split()


def test_dockerfile_base_is_slim_python_311() -> None:
    base = instruction("FROM")[0].split()[0]
    assert base.startswith("python:3.11") and "slim" in base


# --- the command, started --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Served:
    base_url: str
    private_pem: bytes
    process: subprocess.Popen[bytes]

    def token(self, path: str) -> str:
        return mint_token(self.private_pem, alg="ES384", kid=KID, iss=ISS, aud=self.base_url + path)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    private_pem, jwk = new_key_pair("ES384", KID)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "GUNICORN_"))}
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "CDS_TRUSTED_ISSUERS": json.dumps({ISS: {"jwks": {"keys": [jwk]}}}),
        "CDS_PUBLIC_BASE_URL": base_url,
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path_factory.mktemp('gunicorn') / 'ivig-cds.sqlite3'}",
        "CDS_AUDIT_KEY": "9c1f4e7a2b5d8036f1e4a7c0b3d6e9f2a5c8b1d4e7f0a3c6",
    })
    log_path = tmp_path_factory.mktemp("gunicorn-log") / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(local_argv(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    if requests.get(base_url + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:  # not listening yet, or workers still booting
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not answer /healthz in {START_TIMEOUT_S}s:\n{log_path.read_text()}")
                time.sleep(0.1)
            yield Served(base_url, private_pem, process)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=25)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)


def test_healthz_needs_no_token(served: Served) -> None:
    response = requests.get(served.base_url + "/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz(served: Served) -> None:
    response = requests.get(served.base_url + "/readyz", timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


def test_discovery_refuses_a_call_without_token(served: Served) -> None:
    response = requests.get(served.base_url + "/cds-services", timeout=5)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}


def test_discovery_with_a_minted_jwt(served: Served) -> None:
    response = requests.get(served.base_url + "/cds-services", timeout=5,
                            headers={"Authorization": f"Bearer {served.token('/cds-services')}"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert first_error("discovery.json", body) is None
    assert {s["id"] for s in body["services"]} == {"ivig-order-select", "ivig-order-sign"}


def test_hook_call_with_a_minted_jwt(served: Served) -> None:
    path = "/cds-services/ivig-order-select"
    request = {"hook": "order-select", "hookInstance": str(uuid.uuid4()),
               "context": {"userId": "Practitioner/1", "patientId": "p-1", "selections": ["MedicationRequest/d1"],
                           "draftOrders": {"resourceType": "Bundle", "entry": [
                               {"resource": {"resourceType": "MedicationRequest", "id": "d1", "status": "draft"}}]}}}
    response = requests.post(served.base_url + path, json=request, timeout=5,
                             headers={"Authorization": f"Bearer {served.token(path)}"})
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}
    wrong_audience = requests.post(served.base_url + path, json=request, timeout=5,
                                   headers={"Authorization": f"Bearer {served.token('/cds-services')}"})
    assert wrong_audience.status_code == 401


def test_terminates_cleanly_on_sigterm(served: Served) -> None:
    """Last in the module: stop the server the way a container runtime does."""
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=25) == 0
