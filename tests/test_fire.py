"""``cds-service fire`` and ``cds-service keys new`` against real loopback servers.

The service runs in werkzeug's server on 127.0.0.1 (the same WSGI app gunicorn serves); fake
servers stand in for things that are not (good) CDS services.  Nothing leaves the machine.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import jwt
import pytest
from fhir_server import FhirTestServer
from flask import Flask
from loopback import LoopbackServer, Request, Response, unused_port

from cds_service import cli
from cds_service.devtools.fixtures import list_fixtures, load_fixture, record_resources, shift_fixture
from cds_service.http.app import create_app

ISS = "https://ehr.fire-test.example.org"
THREE_FIXTURES = ("pl7-ro52-rpild", "safety-iga-low-critical", "mda5-dm-ild")


# --------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------

def run(argv: list[str]) -> int:
    """Run a ``cds-service`` subcommand as the command line parses it."""
    args = cli.build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


class LiveServer(LoopbackServer):
    """The service's WSGI app on the loopback server; closes the app's store when it stops."""

    def __init__(self, app: Flask) -> None:
        super().__init__(app=app, name="fire-live-service")
        self.url = self.origin

    def stop(self) -> None:
        super().stop()
        self.app.extensions["cds_runtime"].store.close()


@contextmanager
def live_service(tmp: Path, **config: Any) -> Iterator[LiveServer]:
    settings = {"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all", "LOG_LEVEL": "WARNING",
                "DATABASE_URL": f"sqlite:///{tmp / 'fire.sqlite3'}", **config}
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("CDS_"):
                mp.delenv(name)
        app = create_app(settings)
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_service(tmp_path_factory.mktemp("fire-open")) as server:
        yield server


Handler = Callable[[Request, str, bytes], tuple[int, str, bytes]]


class FakeServer(LoopbackServer):
    """Answers every request with ``handler(request, method, body) -> (status, content type, body)``;
    ``seen`` lists each request's method, path and Authorization header."""

    def __init__(self, handler: Handler) -> None:
        def answer(request: Request) -> Response:
            status, content_type, payload = handler(request, request.method, request.body)
            return Response(status, payload, content_type)

        super().__init__(answer, name="fire-fake-server")
        self.url = self.origin

    @property
    def seen(self) -> list[tuple[str, str, str | None]]:
        return [(r.method, r.path, r.authorization) for r in self.requests]


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


DISCOVERY = {"services": [{"hook": "order-select", "id": "fake-select", "description": "fake",
                           "prefetch": {"conditions": "Condition?patient={{context.patientId}}"}}]}


def fake_cds(service_answer: tuple[int, str, bytes]) -> FakeServer:
    """A server with a good discovery document whose one service answers ``service_answer``."""

    def handler(request: Request, method: str, body: bytes) -> tuple[int, str, bytes]:
        if method == "GET" and request.path == "/cds-services":
            return 200, "application/json", _json(DISCOVERY)
        return service_answer

    return FakeServer(handler)


def card_ids_line(output: str) -> list[str]:
    match = re.search(r"^card ids: (.*)$", output, re.M)
    assert match, output
    return [] if match.group(1) == "(none)" else match.group(1).split(", ")


def keys_new_json(out: Path, *extra: str) -> dict[str, Any]:
    """``cds-service keys new --json`` -> its JSON document (stdout captured without capsys)."""
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert run(["keys", "new", "--out", str(out), "--iss", ISS, "--json", *extra]) == 0
    document: dict[str, Any] = json.loads(buffer.getvalue())
    return document


# --------------------------------------------------------------------------------------
# fire against this service
# --------------------------------------------------------------------------------------

def test_list_lists_every_fixture(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fire", "--list"]) == 0
    out = capsys.readouterr().out
    for name in list_fixtures():
        assert re.search(rf"^{re.escape(name)}\s+\S", out, re.M), name


@pytest.mark.parametrize("name", THREE_FIXTURES)
def test_fire_prints_the_expected_cards(service: LiveServer, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fire", "--url", service.url, "--fixture", name, "--check"]) == 0
    out = capsys.readouterr().out
    expected = load_fixture(name)["expected"]["order-select"]
    assert card_ids_line(out) == expected
    assert f"POST {service.url}/cds-services/ivig-order-select → 200" in out
    assert "(matches)" in out
    for card_id in expected:
        assert re.search(rf"^\d+\. (CRITICAL|WARNING|INFO)\s+{card_id}$", out, re.M), out
    assert "\033[" not in out  # not a terminal: no colour


def test_fire_order_sign_shows_suggestions_and_override_reasons(
        service: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fire", "--url", service.url + "/cds-services/", "--fixture", "pl7-ro52-rpild",
                "--hook", "order-sign", "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "ivig-order-sign (order-sign)" in out
    assert "suggestions:" in out and "override reasons:" in out and "(inadequate-response)" in out
    assert "\033[1;33mWARNING" in out


def test_fire_json_prints_the_validated_response(service: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fire", "--url", service.url, "--fixture", "mda5-dm-ild", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["mda5-ild-ivig-adjunct", "ild-monitoring"]


def test_fire_without_prefetch_lets_the_service_query_the_fhir_server(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = load_fixture("pl7-ro52-rpild")
    with FhirTestServer(record_resources(shift_fixture(fixture))) as fhir, \
            live_service(tmp_path, FHIR_SERVERS=fhir.base_url) as server:
        assert run(["fire", "--url", server.url, "--fixture", "pl7-ro52-rpild", "--no-prefetch",
                    "--fhir-server", fhir.base_url]) == 0
        assert fhir.requests, "the service did not query the FHIR server"
    assert card_ids_line(capsys.readouterr().out) == fixture["expected"]["order-select"]


def test_no_prefetch_and_no_fhir_server_reports_412(service: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fire", "--url", service.url, "--fixture", "pl7-ro52-rpild", "--no-prefetch"]) == 1
    err = capsys.readouterr().err
    assert "412 Precondition Failed" in err and "myositisAntibodies" in err


def test_fire_usage_errors(service: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["fire", "--url", service.url]) == 2
    assert run(["fire", "--url", service.url, "--fixture", "no-such-patient"]) == 2
    assert "unknown fixture 'no-such-patient'" in capsys.readouterr().err
    assert run(["fire", "--url", "ftp://example.org", "--fixture", "pl7-ro52-rpild"]) == 2
    assert run(["fire", "--url", service.url, "--fixture", "pl7-ro52-rpild", "--iss", ISS]) == 2
    assert "--iss only makes sense with --jwt-key" in capsys.readouterr().err
    assert run(["fire", "--url", service.url, "--fixture", "pl7-ro52-rpild", "--jwt-key",
                str(tmp_path / "missing.pem"), "--iss", ISS, "--kid", "k"]) == 2
    assert "cannot read --jwt-key" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# keys new + signed requests (AUTH=jwt)
# --------------------------------------------------------------------------------------

def test_keys_new_writes_a_private_key_0600_and_prints_jwks(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "key.pem"
    assert run(["keys", "new", "--out", str(out), "--kid", "k-1", "--iss", ISS]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert '"kid": "k-1"' in printed and '"crv": "P-384"' in printed
    assert f'{{"{ISS}":{{"jwks":{{"keys":[' in printed
    assert "PRIVATE" not in printed and '"d"' not in printed  # the private part is never printed
    # An existing key is never overwritten silently.
    assert run(["keys", "new", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    out.chmod(0o644)
    assert run(["keys", "new", "--out", str(out), "--force", "--alg", "RS384", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert document["jwks"]["keys"][0]["kty"] == "RSA"
    assert document["alg"] == "RS384" and document["key_file"] == str(out)


@pytest.fixture(scope="module")
def jwt_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("fire-jwt")
    keys: dict[str, Any] = {}
    trusted: dict[str, Any] = {}
    for alg in ("ES384", "RS384"):
        document = keys_new_json(tmp / f"{alg}.pem", "--alg", alg, "--kid", f"kid-{alg}")
        keys[alg] = {"path": Path(document["key_file"]), "kid": document["kid"]}
        trusted.setdefault(ISS, {"jwks": {"keys": []}})["jwks"]["keys"] += document["jwks"]["keys"]
    with live_service(tmp, AUTH="jwt", TRUSTED_ISSUERS=json.dumps(trusted)) as server:
        yield server, keys


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_signed_fire_against_a_jwt_service(jwt_service: tuple[LiveServer, dict[str, Any]], alg: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    server, keys = jwt_service
    assert run(["fire", "--url", server.url, "--fixture", "pl7-ro52-rpild", "--jwt-key", str(keys[alg]["path"]),
                "--iss", ISS, "--kid", keys[alg]["kid"]]) == 0
    out = capsys.readouterr().out
    assert card_ids_line(out) == load_fixture("pl7-ro52-rpild")["expected"]["order-select"]


def test_unsigned_fire_against_a_jwt_service_says_what_to_do(
        jwt_service: tuple[LiveServer, dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = jwt_service
    assert run(["fire", "--url", server.url, "--fixture", "pl7-ro52-rpild"]) == 1
    err = capsys.readouterr().err
    assert "GET " + server.url + "/cds-services answered 401" in err and "--jwt-key" in err


def test_fire_with_an_untrusted_key_is_refused_clearly(
        jwt_service: tuple[LiveServer, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server, _ = jwt_service
    stranger = tmp_path / "stranger.pem"
    keys_new_json(stranger, "--kid", "kid-ES384")  # same kid as a trusted key, different key
    assert run(["fire", "--url", server.url, "--fixture", "pl7-ro52-rpild", "--jwt-key", str(stranger),
                "--iss", ISS, "--kid", "kid-ES384"]) == 1
    err = capsys.readouterr().err
    assert "refused the client JWT" in err and "TRUSTED_ISSUERS" in err


def test_alg_must_fit_the_key(jwt_service: tuple[LiveServer, dict[str, Any]],
                              capsys: pytest.CaptureFixture[str]) -> None:
    server, keys = jwt_service
    assert run(["fire", "--url", server.url, "--fixture", "pl7-ro52-rpild", "--jwt-key", str(keys["ES384"]["path"]),
                "--iss", ISS, "--kid", "kid-ES384", "--alg", "RS384"]) == 2
    assert "does not fit this key" in capsys.readouterr().err


def test_each_call_is_signed_for_its_own_url_with_a_fresh_jti(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    keys_new_json(key, "--kid", "k")
    cards = {"cards": []}
    with fake_cds((200, "application/json", _json(cards))) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild", "--jwt-key", str(key),
                    "--iss", ISS, "--kid", "k", "--jku", "https://ehr.example.org/jwks.json"]) == 0
    (_, discovery_path, discovery_auth), (_, call_path, call_auth) = fake.seen
    assert (discovery_path, call_path) == ("/cds-services", "/cds-services/fake-select")
    claims = []
    for path, auth in ((discovery_path, discovery_auth), (call_path, call_auth)):
        assert auth is not None and auth.startswith("Bearer ")
        token = auth.removeprefix("Bearer ")
        header = jwt.get_unverified_header(token)
        assert header["alg"] == "ES384" and header["kid"] == "k" and header["typ"] == "JWT"
        assert header["jku"] == "https://ehr.example.org/jwks.json"
        payload = jwt.decode(token, options={"verify_signature": False})
        assert payload["aud"] == fake.url + path and payload["iss"] == ISS
        assert payload["exp"] > payload["iat"]
        claims.append(payload)
    assert claims[0]["jti"] != claims[1]["jti"]


# --------------------------------------------------------------------------------------
# Things that are not (good) CDS services
# --------------------------------------------------------------------------------------

def _html(status: int) -> Handler:
    def handler(request: Request, method: str, body: bytes) -> tuple[int, str, bytes]:
        return status, "text/html; charset=utf-8", b"<!doctype html><title>Not here</title><h1>Nope</h1>"

    return handler


def test_a_web_server_answering_html_404_is_not_a_cds_service(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(_html(404)) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild"]) == 1
    err = capsys.readouterr().err
    assert f"not a CDS service: GET {fake.url}/cds-services answered HTTP 404 (text/html body)" in err


def test_a_web_server_answering_html_200_is_not_a_cds_service(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(_html(200)) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild"]) == 1
    err = capsys.readouterr().err
    assert f"not a CDS service: GET {fake.url}/cds-services answered text/html, not JSON" in err


def test_json_without_services_is_not_a_cds_service(capsys: pytest.CaptureFixture[str]) -> None:
    with FakeServer(lambda r, m, b: (200, "application/json", _json({"status": "ok"}))) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild"]) == 1
    assert "without a 'services' array" in capsys.readouterr().err


def test_connection_refused_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    assert run(["fire", "--url", url, "--fixture", "pl7-ro52-rpild", "--timeout", "2"]) == 3
    assert f"cannot connect to {url}/cds-services: connection refused" in capsys.readouterr().err


def test_no_service_for_the_hook(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_cds((200, "application/json", _json({"cards": []}))) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild", "--hook", "order-sign"]) == 1
    assert "offers no service for hook 'order-sign'; it offers: fake-select (order-select)" in capsys.readouterr().err


@pytest.mark.parametrize(("answer", "message"), [
    ((200, "text/plain", b"cards!"), "answered 200 with text/plain, not JSON"),
    ((200, "application/json", _json({"cards": [{"summary": "no indicator or source"}]})),
     "violates the CDS Hooks response schema: $.cards[0]: missing required"),
    ((200, "application/json", _json({"cards": [{"summary": "s", "indicator": "urgent",
                                                 "source": {"label": "x"}}]})),
     "violates the CDS Hooks response schema: $.cards[0].indicator"),
    ((500, "application/json", _json({"error": "internal_error", "detail": "boom"})),
     "answered HTTP 500 (internal_error: boom)"),
    ((302, "text/html", b""), "redirect"),
])
def test_protocol_errors_fail_clearly(answer: tuple[int, str, bytes], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with fake_cds(answer) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild"]) == 1
    err = capsys.readouterr().err
    assert message in err, err


def test_fire_sends_prefetch_for_the_discovered_templates_only() -> None:
    received: list[dict[str, Any]] = []

    def handler(request: Request, method: str, body: bytes) -> tuple[int, str, bytes]:
        if method == "GET":
            return 200, "application/json", _json(DISCOVERY)
        received.append(json.loads(body))
        return 200, "application/json", _json({"cards": []})

    with FakeServer(handler) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild"]) == 0
    assert list(received[0]["prefetch"]) == ["conditions"]
    assert received[0]["prefetch"]["conditions"]["resourceType"] == "Bundle"
    assert received[0]["hook"] == "order-select"


def test_untrusted_text_is_printed_without_control_characters(capsys: pytest.CaptureFixture[str]) -> None:
    card = {"summary": "\x1b[2J\x1b]0;pwned\x07 hidden", "indicator": "info", "source": {"label": "x\x1b[31m"}}
    with fake_cds((200, "application/json", _json({"cards": [card]}))) as fake:
        assert run(["fire", "--url", fake.url, "--fixture", "pl7-ro52-rpild", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "hidden" in out


def test_the_cds_service_cli_has_fire_and_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from cds_service import cli

    assert cli.main(["fire", "--list"]) == 0
    assert "pl7-ro52-rpild" in capsys.readouterr().out
