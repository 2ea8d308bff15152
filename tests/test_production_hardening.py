"""Issue 15, replayed in-process: the production profile, the audience, replay across app instances and
restarts, fail-closed replay stores, readiness, feedback bound to its client, field limits, /review,
refused-call audit rows and key URLs.  The real-gunicorn parts are in ``test_server_hardening.py``.

PostgreSQL and Redis variants run when ``CDS_TEST_DATABASE_URL`` / ``CDS_TEST_REDIS_URL`` are set.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from issued import issue_cards
from jsonschema import FormatChecker
from jwt_helpers import JwksServer
from loopback import unused_port

from cds_service import create_app
from cds_service.devtools.fixtures import build_request, load_fixture
from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.engine.services import default_services
from cds_service.settings import SettingsError

BASE = "https://cds.hardening.example.org"
ISS = "https://ehr-a.hardening.example.org"
OTHER_ISS = "https://ehr-b.hardening.example.org"
KID = "hardening-key"
AUDIT_KEY = "5d2a8c1f7e4b9036a1c5e8f2b7d4a9c6e3f0b5a8d1c4e7f2"
SELECT = "/cds-services/ivig-order-select"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, dict[str, Any]]]:
    return {iss: new_key_pair("ES384", KID) for iss in (ISS, OTHER_ISS)}


def trusted(keys: dict[str, tuple[bytes, dict[str, Any]]]) -> str:
    return json.dumps({iss: {"jwks": {"keys": [jwk]}} for iss, (_, jwk) in keys.items()})


def production(tmp_path: Path, keys: dict[str, tuple[bytes, dict[str, Any]]], **config: Any) -> Flask:
    """An app as production runs it (AUTH=jwt, PUBLIC_BASE_URL, AUDIT_KEY), the database under tmp_path."""
    settings = {"AUTH": "jwt", "PUBLIC_BASE_URL": BASE, "AUDIT_KEY": AUDIT_KEY, "TRUSTED_ISSUERS": trusted(keys),
                "CONTENT_POLICY": "all", "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}", **config}
    return create_app(settings)


@pytest.fixture
def apps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Flask]]:
    for name in list(os.environ):
        if name.startswith("CDS_") and not name.startswith("CDS_TEST_"):
            monkeypatch.delenv(name)
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["cds_runtime"].store.close()


def token(keys: dict[str, tuple[bytes, dict[str, Any]]], path: str, iss: str = ISS, **kwargs: Any) -> str:
    return mint_token(keys[iss][0], alg="ES384", kid=KID, iss=iss, aud=BASE + path, **kwargs)


def hook_request(name: str = "pl7-ro52-rpild") -> dict[str, Any]:
    service = default_services()["ivig-order-select"]
    return build_request(load_fixture(name), "order-select", templates=service.prefetch)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- the production profile -----------------------------------------------------------------------


def test_auth_off_is_refused_outside_the_development_profile(tmp_path: Path, apps: list[Flask]) -> None:
    with pytest.raises(SettingsError, match="AUTH=off is refused"):
        create_app({"AUTH": "off", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"})
    app = create_app({"AUTH": "off", "PROFILE": "development", "DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"})
    apps.append(app)
    assert app.test_client().post(SELECT, json=hook_request()).status_code == 200


@pytest.mark.parametrize(("change", "message"), [
    ({"PUBLIC_BASE_URL": ""}, "PUBLIC_BASE_URL is required"),
    ({"AUDIT_KEY": ""}, "AUDIT_KEY is required"),
    ({"AUDIT_KEY": "too-short-0123456789"}, "at least 32 characters"),
    ({"AUDIT_KEY": "CHANGE-ME-0123456789abcdef0123456789abcdef"}, "placeholder"),
    ({"AUDIT_KEY": "a" * 40}, "placeholder"),
])
def test_production_needs_base_url_and_a_real_audit_key(tmp_path: Path, keys: Any, apps: list[Flask],
                                                        change: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        production(tmp_path, keys, **change)


@pytest.mark.parametrize(("env", "refused"), [
    ({"CDS_AUTH": "off"}, True),
    ({"CDS_AUTH": "off", "CDS_PROFILE": "development"}, False),
])
def test_the_images_wsgi_module_refuses_auth_off(tmp_path: Path, env: dict[str, str], refused: bool) -> None:
    """The image runs gunicorn on ``cds_service.wsgi:app``: importing it is what each worker does."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    clean.update(env, CDS_DATABASE_URL=f"sqlite:///{tmp_path / 'w.sqlite3'}", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", "import cds_service.wsgi"], env=clean, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode != 0) == refused, result.stderr[-2000:]
    if refused:
        assert "AUTH=off is refused" in result.stderr


def test_serve_refuses_auth_off_without_dev(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    clean.update(CDS_AUTH="off", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "cds_service.cli", "serve", "--port", str(unused_port())],
                            env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "AUTH=off is refused" in result.stderr


# -- the audience ----------------------------------------------------------------------------------


def test_audience_never_follows_request_headers(tmp_path: Path, keys: Any, apps: list[Flask]) -> None:
    app = production(tmp_path, keys)
    apps.append(app)
    client = app.test_client()
    foreign = "https://other-cds.example.net"
    for headers in ({"Host": "other-cds.example.net"},
                    {"Host": "other-cds.example.net", "X-Forwarded-Proto": "https",
                     "X-Forwarded-Host": "other-cds.example.net"}):
        minted = mint_token(keys[ISS][0], alg="ES384", kid=KID, iss=ISS, aud=foreign + SELECT)
        response = client.post(SELECT, json=hook_request(), headers={**bearer(minted), **headers},
                               base_url="https://other-cds.example.net")
        assert response.status_code == 401, response.get_data(as_text=True)
    assert client.post(SELECT, json=hook_request(), headers=bearer(token(keys, SELECT))).status_code == 200


# -- replay: shared by app instances (workers, replicas) and kept across restarts ----------------------


def _replayed_concurrently(apps_: list[Flask], jwt: str, copies: int = 8) -> list[int]:
    barrier = threading.Barrier(copies)
    body = hook_request()

    def send(index: int) -> int:
        client = apps_[index % len(apps_)].test_client()
        barrier.wait(timeout=10)
        return int(client.post(SELECT, json=body, headers=bearer(jwt)).status_code)

    with ThreadPoolExecutor(max_workers=copies) as pool:
        return list(pool.map(send, range(copies)))


def _replay_case(make: Callable[[], Flask], keys: Any, apps: list[Flask]) -> None:
    first, second = make(), make()
    apps.extend([first, second])
    jwt = token(keys, SELECT)
    statuses = _replayed_concurrently([first, second], jwt)
    assert sorted(statuses) == [200] + [401] * 7, statuses
    restarted = make()  # a new process on the same database
    apps.append(restarted)
    assert restarted.test_client().post(SELECT, json=hook_request(), headers=bearer(jwt)).status_code == 401
    fresh = token(keys, SELECT)
    assert restarted.test_client().post(SELECT, json=hook_request(), headers=bearer(fresh)).status_code == 200


def test_a_token_is_accepted_once_across_instances_and_restarts_sqlite(tmp_path: Path, keys: Any,
                                                                         apps: list[Flask]) -> None:
    _replay_case(lambda: production(tmp_path, keys), keys, apps)


def test_a_token_is_accepted_once_across_instances_and_restarts_postgresql(tmp_path: Path, keys: Any,
                                                                             pg_url: str, apps: list[Flask]) -> None:
    _replay_case(lambda: production(tmp_path, keys, DATABASE_URL=pg_url), keys, apps)


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("CDS_TEST_REDIS_URL", "")
    if not url:
        pytest.skip("CDS_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379/0)")
    return url


def test_a_token_is_accepted_once_across_instances_and_restarts_redis(tmp_path: Path, keys: Any,
                                                                        apps: list[Flask], redis_url: str) -> None:
    _replay_case(lambda: production(tmp_path, keys, REDIS_URL=redis_url), keys, apps)


def _closed_database() -> str:
    return f"postgresql+psycopg://nobody@127.0.0.1:{unused_port()}/x"


def test_replay_store_down_fails_closed_fast_and_readyz_says_why(tmp_path: Path, keys: Any,
                                                                  apps: list[Flask]) -> None:
    app = production(tmp_path, keys, DATABASE_URL=_closed_database())
    apps.append(app)
    client = app.test_client()
    started = time.perf_counter()
    response = client.post(SELECT, json=hook_request(), headers=bearer(token(keys, SELECT)))
    assert response.status_code == 401
    assert time.perf_counter() - started < 2.0
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert any("replay store unreachable" in reason for reason in ready.get_json()["reasons"])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(timeout=2)
    for conn in held:
        conn.close()
    listener.close()


def test_a_hung_redis_costs_at_most_the_replay_timeout(tmp_path: Path, keys: Any, apps: list[Flask],
                                                       silent_server: int) -> None:
    app = production(tmp_path, keys, REDIS_URL=f"redis://127.0.0.1:{silent_server}/0", REPLAY_TIMEOUT_S=0.3)
    apps.append(app)
    client = app.test_client()
    started = time.perf_counter()
    response = client.post(SELECT, json=hook_request(), headers=bearer(token(keys, SELECT)))
    assert response.status_code == 401
    assert time.perf_counter() - started < 1.5
    started = time.perf_counter()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and time.perf_counter() - started < 1.5
    assert any("redis" in reason for reason in ready.get_json()["reasons"])


def test_with_redis_a_database_outage_keeps_hook_calls_and_readiness(tmp_path: Path, keys: Any,
                                                                      apps: list[Flask], redis_url: str) -> None:
    app = production(tmp_path, keys, REDIS_URL=redis_url, DATABASE_URL=_closed_database())
    apps.append(app)
    client = app.test_client()
    response = client.post(SELECT, json=hook_request(), headers=bearer(token(keys, SELECT)))
    assert response.status_code == 200 and response.get_json()["cards"]
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert any("store unreachable" in warning for warning in ready.get_json()["warnings"])


# -- feedback bound to its client --------------------------------------------------------------------


def _feedback(card_uuid: str, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": "2026-11-22T10:06:00Z"}
    item.update(overrides)
    return {"feedback": [item]}


def _feedback_binding(app: Flask, keys: Any) -> None:
    client = app.test_client()
    answer = client.post(SELECT, json=hook_request(), headers=bearer(token(keys, SELECT)))
    assert answer.status_code == 200
    card = answer.get_json()["cards"][0]["uuid"]
    path = SELECT + "/feedback"

    def send(body: dict[str, Any], iss: str = ISS, where: str = path) -> Any:
        return client.post(where, json=body, headers=bearer(token(keys, where, iss=iss)))

    refused = send(_feedback(card), iss=OTHER_ISS)  # a second trusted issuer may not touch it
    assert refused.status_code == 404 and refused.get_json()["error"] == "not_found"
    assert send(_feedback(str(uuid.uuid4()))).status_code == 404  # made up
    assert send(_feedback(card), where="/cds-services/ivig-order-sign/feedback").status_code == 404
    for field, value in (("card", "c" * 101), ("outcomeTimestamp", "2026-11-22T10:06:00." + "0" * 20 + "Z"),
                         ("overrideReason", {"reason": {"system": "https://x.example.org", "code": "c" * 201}}),
                         ("overrideReason", {"userComment": "x" * 1_000_000})):
        too_big = send(_feedback(card, **{field: value}))
        assert too_big.status_code == 400, (field, too_big.get_data(as_text=True))
        assert too_big.get_json()["error"] in ("feedback_field_too_long", "invalid_request")
    assert send(_feedback(card)).status_code == 200
    store = app.extensions["cds_runtime"].store
    assert [(r["card_uuid"], r["client_iss"]) for r in store.feedback_rows()] == [(card, ISS)]


def test_feedback_only_for_cards_issued_to_the_same_client_sqlite(tmp_path: Path, keys: Any,
                                                                  apps: list[Flask]) -> None:
    app = production(tmp_path, keys)
    apps.append(app)
    _feedback_binding(app, keys)


def test_feedback_only_for_cards_issued_to_the_same_client_postgresql(tmp_path: Path, keys: Any,
                                                                      pg_url: str, apps: list[Flask]) -> None:
    app = production(tmp_path, keys, DATABASE_URL=pg_url)
    apps.append(app)
    _feedback_binding(app, keys)


def test_feedback_window(tmp_path: Path, keys: Any, apps: list[Flask]) -> None:
    app = production(tmp_path, keys, FEEDBACK_WINDOW_HOURS=72)
    apps.append(app)
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    issue_cards(app, "ivig-order-select", old, iss=ISS, hours_ago=73)
    issue_cards(app, "ivig-order-select", recent, iss=ISS, hours_ago=71)
    client = app.test_client()
    path = SELECT + "/feedback"
    for card, status in ((old, 404), (recent, 200)):
        response = client.post(path, json=_feedback(card), headers=bearer(token(keys, path)))
        assert response.status_code == status, response.get_data(as_text=True)


def test_format_checkers_are_installed() -> None:
    """date-time and uri are checked (jsonschema[format-nongpl] is a declared dependency)."""
    checker = FormatChecker()
    assert {"date-time", "uri"} <= set(checker.checkers)
    assert not checker.conforms("2026-13-45T99:00:00Z", "date-time")
    assert not checker.conforms("not a uri", "uri")


# -- /review, refused-call audit, key URLs ----------------------------------------------------------


@pytest.mark.parametrize(("config", "status"), [({}, 404), ({"REVIEW_PAGES": "on"}, 200)])
def test_review_pages_are_off_in_production_unless_asked_for(tmp_path: Path, keys: Any, apps: list[Flask],
                                                            config: dict[str, str], status: int) -> None:
    app = production(tmp_path, keys, **config)
    apps.append(app)
    assert app.test_client().get("/review").status_code == status


def test_review_pages_are_on_in_the_development_profile(client: Any) -> None:
    assert client.get("/review").status_code == 200


def test_refused_calls_are_audited_up_to_a_rate_then_summarised(tmp_path: Path, keys: Any,
                                                                apps: list[Flask]) -> None:
    app = production(tmp_path, keys, AUDIT_4XX_PER_MINUTE=5)
    client = app.test_client()
    for _ in range(40):
        assert client.post(SELECT, json=hook_request()).status_code == 401
    store = app.extensions["cds_runtime"].store
    assert store.close(timeout=10)
    rows = [r for r in store.audit_rows() if r["outcome"].startswith("4xx")]
    assert [r["outcome"] for r in rows] == ["4xx"] * 5 + ["4xx-summary"]
    assert json.loads(rows[-1]["prefetch"]) == {"refusedNotItemised": 35}


@pytest.mark.parametrize(("entry", "message"), [
    ({"jwks_url": "http://keys.example.org/jwks.json"}, "must be https"),
    ({"jku_allow": ["http://keys.example.org/keys/"]}, "must be https"),
    ({"jku_allow": ["https://keys.example.org/keys/..%2f/"]}, "must be an absolute https URL"),
])
def test_key_urls_are_https_only(tmp_path: Path, keys: Any, apps: list[Flask], entry: dict[str, Any],
                                 message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        production(tmp_path, keys, TRUSTED_ISSUERS=json.dumps({ISS: entry}))


@pytest.mark.parametrize("suffix", ["..%2fuploads/jwks.json", "%2e%2e%2fuploads/jwks.json",
                                    "..%252fuploads/jwks.json", "x%2f..%2f..%2fuploads/jwks.json",
                                    "..%5cuploads/jwks.json"])
def test_an_encoded_slash_jku_is_refused_without_contacting_the_key_host(tmp_path: Path, keys: Any,
                                                                         apps: list[Flask], suffix: str) -> None:
    private_pem, jwk = keys[ISS]
    with JwksServer().running() as jwks:
        jwks.publish("/keys/jwks.json", jwk)
        prefix = f"{jwks.base_url}/keys/"
        app = production(tmp_path, keys, TRUSTED_ISSUERS=json.dumps({ISS: {"jku_allow": [prefix]}}))
        apps.append(app)
        client = app.test_client()
        bad = mint_token(private_pem, alg="ES384", kid=KID, iss=ISS, aud=BASE + SELECT, jku=prefix + suffix)
        assert client.post(SELECT, json=hook_request(), headers=bearer(bad)).status_code == 401
        assert jwks.total_hits() == 0, jwks.hits
        good = mint_token(private_pem, alg="ES384", kid=KID, iss=ISS, aud=BASE + SELECT, jku=prefix + "jwks.json")
        assert client.post(SELECT, json=hook_request(), headers=bearer(good)).status_code == 200
        assert jwks.hits == {"/keys/jwks.json": 1}


def test_the_demo_page_works_with_the_review_pages_off(tmp_path: Path, keys: Any, apps: list[Flask]) -> None:
    app = production(tmp_path, keys, DEMO=True)
    apps.append(app)
    client = app.test_client()
    assert client.get("/review").status_code == 404
    page = client.get("/demo")
    assert page.status_code == 200
    assert client.get("/static/review.css").status_code == 200  # the stylesheet base.html links
