"""Fixtures of the acceptance tests: one app and test client per module (AUTH off, every card
servable, a public base URL), the services' prefetch templates as discovery lists them, and no
CDS_* environment variable leaking in. Every app made here is closed when its module ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from acceptance.support import OPEN_APPS, new_app


@pytest.fixture(scope="module")
def clean_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CDS_"):
                mp.delenv(name)
        yield


@pytest.fixture(scope="module", autouse=True)
def _close_apps() -> Iterator[None]:
    yield
    for app in OPEN_APPS:
        runtime = app.extensions.get("cds_runtime")
        if runtime is not None:
            runtime.store.close()
    OPEN_APPS.clear()


@pytest.fixture(scope="module")
def app(clean_env: None, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return new_app(tmp_path_factory.mktemp("acc"), PUBLIC_BASE_URL="https://cds.acceptance.example.net")


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def templates(client: FlaskClient) -> dict[str, dict[str, str]]:
    services = client.get("/cds-services").get_json()["services"]
    return {s["hook"]: s["prefetch"] for s in services}
