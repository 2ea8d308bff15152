"""A non-editable install works from any directory: the wheel carries the cards, value sets, fixtures
and the gunicorn configuration, so ``cds-service cards check``, ``fire --list`` and ``serve`` run in
``/tmp`` with no checkout in sight.

The wheel is built once from a copy of the project's sources (the declared build backend, no build
isolation: no network) and installed with pip, ``--no-deps``, into a fresh virtualenv whose only
view of the dependencies is the test environment's site-packages directory (a plain path entry: the
editable install of this checkout is not loaded, and the test checks that ``cds_service`` is the
installed copy).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from cds_service.devtools.keys import mint_token, new_key_pair

REPO = Path(__file__).resolve().parent.parent
ISS = "https://ehr.installed-test.example.org"
KID = "installed-test-key"
START_TIMEOUT_S = 30.0


@dataclass
class Installed:
    venv: Path
    workdir: Path  # an empty directory outside the checkout: the commands run here

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CDS_", "GUNICORN_", "PYTHON")) and k != "VIRTUAL_ENV"}
        env.update({"PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(self.venv),
                    "CDS_DATABASE_URL": f"sqlite:///{self.workdir / 'installed.sqlite3'}"})
        env.update(extra)
        return env

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / "cds-service"), *args], cwd=self.workdir, env=self.env(**env),
                              capture_output=True, text=True, timeout=60)


def _copy_sources(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, destination / name)
    for name in ("cds_service", "cards", "fixtures"):
        # symlinks=True: cds_service/_content/* stay links to ../../cards and ../../fixtures.
        shutil.copytree(REPO / name, destination / name, symlinks=True, ignore=ignore)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    sources = tmp_path_factory.mktemp("sources")
    _copy_sources(sources)
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--wheel-dir", str(wheels), str(sources)],
                   check=True, capture_output=True, timeout=120)
    wheel = next(wheels.glob("ivig_cds-*.whl"))

    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True, timeout=60)
    venv_python = venv / "bin" / "python"
    venv_site = Path(subprocess.run(
        [str(venv_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=30).stdout.strip())
    # The dependencies, from the test environment, as a plain path (its .pth files are not run).
    (venv_site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv_python), "install", "--quiet", "--no-deps",
                    "--no-index", f"{wheel}[postgres]"], check=True, capture_output=True, timeout=120)

    workdir = tmp_path_factory.mktemp("anywhere")
    located = subprocess.run([str(venv_python), "-c", "import cds_service; print(cds_service.__file__)"],
                             cwd=workdir, check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    assert Path(located).is_relative_to(venv_site), f"cds_service imported from {located}, not the install"
    return Installed(venv, workdir)


def test_cards_check_runs_from_the_installed_package(installed: Installed) -> None:
    result = installed.run("cards", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(REPO) not in result.stdout + result.stderr


def test_the_installed_package_carries_the_fixtures(installed: Installed) -> None:
    result = installed.run("fire", "--list")
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert "pl7-ro52-rpild" in names and len(names) == len(list((REPO / "fixtures").glob("*.json")))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def serving(installed: Installed) -> Iterator[tuple[str, bytes]]:
    """``cds-service serve`` (production profile: gunicorn, AUTH=jwt) from the install, in /tmp."""
    private_pem, jwk = new_key_pair("ES384", KID)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = installed.workdir / "serve.log"
    env = {"CDS_TRUSTED_ISSUERS": json.dumps({ISS: {"jwks": {"keys": [jwk]}}}), "CDS_PUBLIC_BASE_URL": base_url,
           "CDS_AUDIT_KEY": "4b7e0a3d6f9c2e5b8a1d4f7c0e3b6a9d2f5c8e1b4a7d0f3c",
           "GUNICORN_WORKERS": "1", "GUNICORN_ACCESSLOG": ""}
    with log_path.open("wb") as log:
        process = subprocess.Popen([str(installed.bin / "cds-service"), "serve", "--port", str(port)],
                                   cwd=installed.workdir, env=installed.env(**env), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"serve exited with {process.returncode}:\n{log_path.read_text()}")
                try:
                    if requests.get(base_url + "/healthz", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"serve did not answer /healthz in {START_TIMEOUT_S}s:\n{log_path.read_text()}")
                time.sleep(0.1)
            yield base_url, private_pem
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=25)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
    assert process.returncode == 0, log_path.read_text()


def test_serve_runs_from_the_installed_package(serving: tuple[str, bytes]) -> None:
    base_url, private_pem = serving
    ready = requests.get(base_url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["cards"] > 0 and ready.json()["valueSets"] > 0
    token = mint_token(private_pem, alg="ES384", kid=KID, iss=ISS, aud=base_url + "/cds-services")
    discovery = requests.get(base_url + "/cds-services", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert discovery.status_code == 200, discovery.text
    assert {s["id"] for s in discovery.json()["services"]} == {"ivig-order-select", "ivig-order-sign"}
