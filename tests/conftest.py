"""Shared test fixtures: an app factory (AUTH off, SQLite in tmp_path) and the services' prefetch templates.

Kept small on purpose: most test modules build what they need themselves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# The checkout first on sys.path: an editable install made before cds_service/__init__.py existed
# maps ``cds_service`` to a namespace package, where ``from cds_service import create_app`` fails.
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import pytest  # noqa: E402
from flask import Flask  # noqa: E402
from flask.testing import FlaskClient  # noqa: E402

from cds_service.engine.services import default_services  # noqa: E402

# Environment variables that are test switches, not service settings: never cleared.
_TEST_SWITCHES = ("CDS_TEST_DATABASE_URL",)


@pytest.fixture
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """``make_app(**config) -> Flask``: AUTH off, SQLite under tmp_path, no CDS_* env leaking in.

    Every app made is closed (its audit writer stopped) at teardown.
    """
    for name in list(os.environ):
        if name.startswith("CDS_") and name not in _TEST_SWITCHES:
            monkeypatch.delenv(name)
    made: list[Flask] = []

    def factory(**config: Any) -> Flask:
        from cds_service import create_app

        settings = {"AUTH": "off", "PROFILE": "development",
                    "DATABASE_URL": f"sqlite:///{tmp_path / 'ivig-cds.sqlite3'}", **config}
        app = create_app(settings)
        app.testing = True
        made.append(app)
        return app

    yield factory
    for app in made:
        app.extensions["cds_runtime"].store.close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def service_templates(hook: str) -> dict[str, str]:
    """The prefetch templates of the service registered for ``hook``."""
    for service in default_services().values():
        if service.hook == hook:
            return dict(service.prefetch)
    raise KeyError(f"no service for hook {hook!r}")


@pytest.fixture
def templates() -> Callable[[str], dict[str, str]]:
    """``templates(hook)``: the prefetch templates of the service for ``hook``."""
    return service_templates


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh schema of their own (dropped afterwards).

    Tests in several files run in parallel against the one ``test`` database; a schema each
    keeps them from dropping each other's tables.
    """
    base = os.environ.get("CDS_TEST_DATABASE_URL", "")
    if not base:
        pytest.skip("CDS_TEST_DATABASE_URL is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        _drop_schema(admin, schema)
        admin.dispose()


def _drop_schema(admin: Any, schema: str) -> None:
    """Drop a test schema, even while a connection the test left open (an app's audit writer,
    a pool not yet disposed) still holds locks in it: such sessions are ended first, and a
    deadlock with one that was mid-write is retried."""
    import time

    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    for attempt in range(5):
        try:
            with admin.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            return
        except OperationalError:
            if attempt == 4:
                raise
            with admin.begin() as conn:
                conn.execute(text(
                    "SELECT pg_terminate_backend(l.pid) FROM pg_locks l"
                    " JOIN pg_class c ON c.oid = l.relation"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = :schema AND l.pid <> pg_backend_pid()"), {"schema": schema})
            time.sleep(0.1 * (attempt + 1))
