"""Other clients: JWT client authentication (issue 5) and CORS from the sandbox (issue 2 item 6).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask.testing import FlaskClient
from issued import issue_cards

from acceptance.support import SANDBOX, SELECT, SIGN, new_app, valid_request

BASE = "https://cds.acceptance.example.net"
ISS = "https://ehr.acceptance.example.net"


@pytest.fixture(scope="module")
def signing_key() -> Any:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def jwt_client(clean_env: None, tmp_path_factory: pytest.TempPathFactory, signing_key: Any) -> FlaskClient:
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(signing_key.public_key()))
    jwk.update(kid="acc-key-1", use="sig", alg="ES384")
    issuers = {ISS: {"jwks": {"keys": [jwk]}}}
    app = new_app(tmp_path_factory.mktemp("jwt"), AUTH="jwt", PUBLIC_BASE_URL=BASE,
                   TRUSTED_ISSUERS=json.dumps(issuers), CORS_ORIGINS=SANDBOX)
    return app.test_client()


def token(key: Any, aud: Any, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISS, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **claims}
    return jwt.encode(payload, key, algorithm="ES384", headers={"kid": "acc-key-1", "typ": "JWT"})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_jwt_each_endpoint_with_its_own_audience(jwt_client: FlaskClient, signing_key: Any) -> None:
    assert jwt_client.get("/cds-services", headers=bearer(token(signing_key, f"{BASE}/cds-services"))
                          ).status_code == 200
    body = valid_request()
    response = jwt_client.post(SIGN, json=body, headers=bearer(token(signing_key, f"{BASE}{SIGN}")))
    assert response.status_code == 200 and response.get_json() == {"cards": []}
    card = str(uuid.uuid4())
    issue_cards(jwt_client.application, SIGN.rsplit("/", 1)[-1], card, iss=ISS)
    feedback = {"feedback": [{"card": card, "outcome": "overridden",
                              "outcomeTimestamp": "2026-01-01T00:00:00Z"}]}
    response = jwt_client.post(f"{SIGN}/feedback", json=feedback,
                               headers=bearer(token(signing_key, f"{BASE}{SIGN}/feedback")))
    assert response.status_code == 200
    # aud as an array (the spec allows it); Epic-style extra claims nbf and sub
    response = jwt_client.post(SIGN, json=valid_request(), headers=bearer(token(
        signing_key, ["https://other.example.net/cds-services/x", f"{BASE}{SIGN}"],
        nbf=int(time.time()) - 300, sub="epic-client-id")))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_jwt_refusals_are_bare_401(jwt_client: FlaskClient, signing_key: Any) -> None:
    def refused(response: Any) -> None:
        assert response.status_code == 401
        assert response.get_json() == {"error": "unauthorized"}

    refused(jwt_client.get("/cds-services"))
    refused(jwt_client.post(SIGN, json=valid_request()))
    refused(jwt_client.post(SIGN, json=valid_request(), headers=bearer(token(signing_key, f"{BASE}{SELECT}"))))
    refused(jwt_client.post(SIGN, json=valid_request(), headers=bearer(token(signing_key, f"{BASE}{SIGN}/feedback"))))
    refused(jwt_client.post(SIGN, json=valid_request(), headers=bearer(token(
        signing_key, f"{BASE}{SIGN}", iat=int(time.time()) - 900, exp=int(time.time()) - 600))))
    refused(jwt_client.post(SIGN, json=valid_request(),
                            headers=bearer(token(signing_key, f"{BASE}{SIGN}", iss=SANDBOX))))
    replay = token(signing_key, f"{BASE}{SIGN}")
    assert jwt_client.post(SIGN, json=valid_request(), headers=bearer(replay)).status_code == 200
    refused(jwt_client.post(SIGN, json=valid_request(), headers=bearer(replay)))
    unsigned = jwt.encode({"iss": ISS, "aud": f"{BASE}{SIGN}", "iat": int(time.time()),
                           "exp": int(time.time()) + 60, "jti": "x"}, None, algorithm="none",
                          headers={"kid": "acc-key-1", "typ": "JWT"})
    refused(jwt_client.post(SIGN, json=valid_request(), headers=bearer(unsigned)))


@pytest.mark.parametrize("path, method, headers", [
    (SELECT, "POST", "authorization,content-type"),
    (SIGN, "POST", "authorization,content-type"),
    (f"{SELECT}/feedback", "POST", "authorization,content-type"),
    ("/cds-services", "GET", "authorization"),
])
def test_cors_preflight_from_the_sandbox_without_a_token(jwt_client: FlaskClient, path: str, method: str,
                                                         headers: str) -> None:
    response = jwt_client.options(path, headers={"Origin": SANDBOX, "Access-Control-Request-Method": method,
                                                 "Access-Control-Request-Headers": headers})
    assert response.status_code in (200, 204), response.status_code
    assert response.headers.get("Access-Control-Allow-Origin") == SANDBOX
    allowed_headers = response.headers.get("Access-Control-Allow-Headers", "").lower()
    for header in headers.split(","):
        assert header in allowed_headers, allowed_headers
    assert method in response.headers.get("Access-Control-Allow-Methods", "")


def test_cors_on_actual_responses_and_not_for_other_origins(jwt_client: FlaskClient, signing_key: Any) -> None:
    response = jwt_client.post(SIGN, json=valid_request(), headers={
        "Origin": SANDBOX, **bearer(token(signing_key, f"{BASE}{SIGN}"))})
    assert response.status_code == 200
    assert response.headers.get("Access-Control-Allow-Origin") == SANDBOX
    refused = jwt_client.post(SIGN, json=valid_request(), headers={"Origin": SANDBOX})
    assert refused.status_code == 401 and refused.headers.get("Access-Control-Allow-Origin") == SANDBOX
    other = jwt_client.options(SIGN, headers={"Origin": "https://evil.example.net",
                                              "Access-Control-Request-Method": "POST",
                                              "Access-Control-Request-Headers": "authorization,content-type"})
    assert other.headers.get("Access-Control-Allow-Origin") not in ("https://evil.example.net", "*")


def test_cors_on_other_routes(jwt_client: FlaskClient) -> None:
    for path in ("/healthz", "/openapi.json"):
        response = jwt_client.get(path, headers={"Origin": SANDBOX})
        assert response.status_code == 200
        assert response.headers.get("Access-Control-Allow-Origin") == SANDBOX
