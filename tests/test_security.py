"""ClientVerifier: CDS client JWTs (CDS Hooks 2.0 §Trusting CDS Clients, best-practices §JWT).

Real keys, real signatures; JWK Sets served by a loopback HTTP server that counts requests,
so "never fetched" and "fetched exactly once" are asserted, not assumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import requests
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from jwt_helpers import JwksServer, b64url, raw_token

from cds_service.devtools.keys import mint_token, new_key_pair
from cds_service.errors import Unauthorized
from cds_service.http.auth import (
    ANONYMOUS_CLIENT,
    Client,
    ClientVerifier,
    JwksCache,
    MemoryReplayCache,
    NoAuthVerifier,
    RedisReplayCache,
    RefusingVerifier,
    build_verifier,
    load_trusted_issuers,
)
from cds_service.settings import Settings, SettingsError, load_settings

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/ivig-order-select"
SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = 1_800_000_000.0


class Key:
    def __init__(self, alg: str, kid: str) -> None:
        self.alg, self.kid = alg, kid
        self.private_pem, self.jwk = new_key_pair(alg, kid)


@pytest.fixture(scope="module")
def keys() -> dict[str, Key]:
    return {
        "es": Key("ES384", "es-1"),
        "es2": Key("ES384", "es-2"),
        "rs": Key("RS384", "rs-1"),
        "forger": Key("ES384", "es-1"),  # same kid as "es", different key
    }


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with JwksServer().running() as running:
        yield running


VerifierFactory = Callable[..., ClientVerifier]


@pytest.fixture
def make_verifier(clock: FakeClock) -> VerifierFactory:
    def make(issuers: dict[str, Any], **config: Any) -> ClientVerifier:
        settings = load_settings({"TRUSTED_ISSUERS": json.dumps(issuers), **config}, environ={})
        return ClientVerifier(settings, clock=clock)

    return make


@pytest.fixture
def inline_verifier(keys: dict[str, Key], make_verifier: VerifierFactory) -> ClientVerifier:
    """Issuer ISS with the ES384 and RS384 keys given inline (no network at all)."""
    return make_verifier({ISS: {"jwks": {"keys": [keys["es"].jwk, keys["rs"].jwk]}}})


def token(key: Key, clock: FakeClock, **kwargs: Any) -> str:
    options: dict[str, Any] = {"iss": ISS, "aud": AUD, "now": clock.now}
    options.update(kwargs)
    return mint_token(key.private_pem, alg=key.alg, kid=key.kid, **options)


def bearer(jwt: str) -> str:
    return "Bearer " + jwt


def refused(verifier: ClientVerifier, authorization: str | None, audience: str = AUD) -> str:
    with pytest.raises(Unauthorized) as caught:
        verifier.verify(authorization, audience)
    assert caught.value.body() == {"error": "unauthorized"}
    return caught.value.detail


# -- accepted ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["es", "rs"])
def test_valid_token_passes_with_keys_from_jwks_url(name: str, keys: dict[str, Key], server: JwksServer,
                                                    make_verifier: VerifierFactory, clock: FakeClock) -> None:
    url = server.publish("/jwks.json", keys["es"].jwk, keys["rs"].jwk)
    verifier = make_verifier({ISS: {"jwks_url": url}})
    client = verifier.verify(bearer(token(keys[name], clock)), AUD)
    assert client == Client(iss=ISS, sub=None, tenant=None, kid=keys[name].kid)
    verifier.verify(bearer(token(keys[name], clock)), AUD)
    assert server.hits["/jwks.json"] == 1  # cached: not fetched per request


def test_epic_style_token_with_sub_nbf_and_lowercase_scheme_passes(keys: dict[str, Key],
                                                                   inline_verifier: ClientVerifier,
                                                                   clock: FakeClock) -> None:
    jwt = token(keys["rs"], clock, extra_claims={"sub": "epic-client-id", "nbf": int(clock.now) - 300,
                                                  "custom": {"x": 1}})
    client = inline_verifier.verify("bearer  " + jwt, AUD)
    assert client.sub == "epic-client-id" and client.kid == "rs-1"


def test_typ_is_case_insensitive(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                 clock: FakeClock) -> None:
    inline_verifier.verify(bearer(token(keys["es"], clock, extra_headers={"typ": "jwt"})), AUD)


@pytest.mark.parametrize("aud", [AUD + "/", [AUD], ["https://other.example.org", AUD]])
def test_aud_as_array_or_with_one_trailing_slash_passes(aud: Any, keys: dict[str, Key],
                                                        inline_verifier: ClientVerifier,
                                                        clock: FakeClock) -> None:
    inline_verifier.verify(bearer(token(keys["es"], clock, aud=aud)), AUD)
    inline_verifier.verify(bearer(token(keys["es"], clock, aud=aud)), AUD + "/")


def test_clock_skew_is_tolerated(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                 clock: FakeClock) -> None:
    inline_verifier.verify(bearer(token(keys["es"], clock, now=clock.now - 300 - 59)), AUD)  # exp 59 s ago
    inline_verifier.verify(bearer(token(keys["es"], clock, now=clock.now + 59)), AUD)  # iat 59 s ahead


def test_lifetime_at_the_cap_passes(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                    clock: FakeClock) -> None:
    inline_verifier.verify(bearer(token(keys["es"], clock, lifetime_s=3600)), AUD)


def test_sandbox_token_with_allowed_jku_and_inline_jwks_passes_without_fetching(
        keys: dict[str, Key], server: JwksServer, make_verifier: VerifierFactory, clock: FakeClock) -> None:
    # The sandbox's jku is an internet URL: if it were contacted this test would fail or hang.
    verifier = make_verifier({SANDBOX_ISS: {"jwks": {"keys": [keys["es"].jwk]},
                                            "jku_allow": [SANDBOX_JKU]}})
    jwt = mint_token(keys["es"].private_pem, alg="ES384", kid="es-1", iss=SANDBOX_ISS, aud=AUD,
                     jku=SANDBOX_JKU, now=clock.now)
    assert verifier.verify(bearer(jwt), AUD) == Client(iss=SANDBOX_ISS, sub=None, tenant=None, kid="es-1")
    assert server.total_hits() == 0


def test_allowed_jku_is_fetched_when_the_kid_is_not_configured(keys: dict[str, Key], server: JwksServer,
                                                               make_verifier: VerifierFactory,
                                                               clock: FakeClock) -> None:
    jku = server.publish("/keys/jwks.json", keys["rs"].jwk)
    verifier = make_verifier({ISS: {"jku_allow": [server.url("/keys/")]}})
    verifier.verify(bearer(token(keys["rs"], clock, jku=jku)), AUD)
    verifier.verify(bearer(token(keys["rs"], clock, jku=jku)), AUD)
    assert server.hits["/keys/jwks.json"] == 1


def test_tenant_on_the_issuer_list_passes(keys: dict[str, Key], make_verifier: VerifierFactory,
                                          clock: FakeClock) -> None:
    verifier = make_verifier({ISS: {"jwks": {"keys": [keys["es"].jwk]}, "tenants": ["hospital-a"]}})
    client = verifier.verify(bearer(token(keys["es"], clock, extra_claims={"tenant": "hospital-a"})), AUD)
    assert client.tenant == "hospital-a"


def test_auth_off_returns_the_anonymous_client_without_looking(keys: dict[str, Key]) -> None:
    issuers = json.dumps({ISS: {"jwks": {"keys": [keys["es"].jwk]}}})
    verifier = build_verifier(load_settings({"AUTH": "off", "TRUSTED_ISSUERS": issuers}, environ={}))
    assert isinstance(verifier, NoAuthVerifier) and verifier.security_scheme is None
    assert verifier.verify(None, AUD) is ANONYMOUS_CLIENT
    assert verifier.verify("Basic xyz", AUD) is ANONYMOUS_CLIENT


def test_the_verifier_is_chosen_once_from_auth_and_trusted_issuers(keys: dict[str, Key],
                                                                    clock: FakeClock) -> None:
    issuers = json.dumps({ISS: {"jwks": {"keys": [keys["es"].jwk]}}})
    checking = build_verifier(load_settings({"AUTH": "jwt", "TRUSTED_ISSUERS": issuers}, environ={}))
    assert isinstance(checking, ClientVerifier) and checking.security_scheme is not None
    assert refused(checking, None) == "no Authorization header"
    # AUTH=jwt and nobody trusted: every call refused, even one with a good token.
    nobody = build_verifier(load_settings({"AUTH": "jwt"}, environ={}))
    assert isinstance(nobody, RefusingVerifier) and nobody.security_scheme is not None
    good = bearer(mint_token(keys["es"].private_pem, alg="ES384", kid=keys["es"].kid, iss=ISS, aud=AUD))
    assert checking.verify(good, AUD).iss == ISS
    assert refused(nobody, good) == "no trusted issuers configured"


# -- refused: header and token shape ------------------------------------------------------

@pytest.mark.parametrize("authorization", [None, "", "   "])
def test_no_authorization_header_is_refused(authorization: str | None,
                                            inline_verifier: ClientVerifier) -> None:
    assert refused(inline_verifier, authorization) == "no Authorization header"


@pytest.mark.parametrize("authorization", [
    "Bearer", "Basic xyz", "Bearer a.b", "Bearer a.b.c.d", "Bearer a b", "Bearer a.b.c",
    "Bearer !!.??.**", "Token eyJ.eyJ.sig", "Bearer " + "a" * 20_000 + ".b.c",
])
def test_malformed_authorization_is_refused(authorization: str, inline_verifier: ClientVerifier) -> None:
    refused(inline_verifier, authorization)


def test_alg_none_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier, clock: FakeClock) -> None:
    claims = {"iss": ISS, "aud": AUD, "iat": int(clock.now), "exp": int(clock.now) + 300,
              "jti": str(uuid.uuid4())}
    jwt = raw_token({"alg": "none", "typ": "JWT", "kid": "es-1"}, claims)
    assert refused(inline_verifier, bearer(jwt)) == "alg refused (none or symmetric)"


def _hs256_with_public_key(key: Key, clock: FakeClock) -> str:
    """The classic key-confusion attack: HMAC keyed with the (public) verification key."""
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(key.private_pem, password=None)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"iss": ISS, "aud": AUD, "iat": int(clock.now), "exp": int(clock.now) + 300,
              "jti": str(uuid.uuid4())}
    unsigned = raw_token({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims).rsplit(".", 1)[0]
    signature = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + b64url(signature)


def test_hs256_signed_with_the_public_key_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                                     clock: FakeClock) -> None:
    assert refused(inline_verifier, bearer(_hs256_with_public_key(keys["rs"], clock))) == \
        "alg refused (none or symmetric)"


def test_hs256_is_refused_even_when_configured(keys: dict[str, Key], clock: FakeClock) -> None:
    issuers = json.dumps({ISS: {"jwks": {"keys": [keys["rs"].jwk]}}})
    # Settings built directly skip Settings.validate(), which would reject HS256 outright.
    verifier = ClientVerifier(Settings(TRUSTED_ISSUERS=issuers, JWT_ALGORITHMS="RS384,HS256,none"),
                              clock=clock)
    assert verifier.algorithms == ("RS384",)
    refused(verifier, bearer(_hs256_with_public_key(keys["rs"], clock)))


def test_alg_not_on_the_allow_list_is_refused_unless_configured(make_verifier: VerifierFactory,
                                                                 clock: FakeClock) -> None:
    es256 = Key("ES256", "es256-1")
    issuers = {ISS: {"jwks": {"keys": [es256.jwk]}}}
    jwt = token(es256, clock)
    assert refused(make_verifier(issuers), bearer(jwt)) == "alg not allowed"
    make_verifier(issuers, JWT_ALGORITHMS="ES256,ES384").verify(bearer(jwt), AUD)


def test_token_alg_must_fit_the_key(keys: dict[str, Key], make_verifier: VerifierFactory,
                                    clock: FakeClock) -> None:
    # An RS384 token naming the kid of an EC key: the key cannot verify RS384.
    verifier = make_verifier({ISS: {"jwks": {"keys": [keys["es"].jwk]}}})
    jwt = mint_token(keys["rs"].private_pem, alg="RS384", kid="es-1", iss=ISS, aud=AUD, now=clock.now)
    assert refused(verifier, bearer(jwt)) == "kid has no key usable with RS384"


def test_bad_signature_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                  clock: FakeClock) -> None:
    assert refused(inline_verifier, bearer(token(keys["forger"], clock))) == "bad signature"
    header, _, signature = token(keys["es"], clock).split(".")
    tampered_claims = {"iss": ISS, "aud": AUD, "iat": int(clock.now), "exp": int(clock.now) + 300,
                       "jti": "x", "tenant": "other"}
    tampered = ".".join([header, raw_token({}, tampered_claims).split(".")[1], signature])
    assert refused(inline_verifier, bearer(tampered)) == "bad signature"


def test_missing_kid_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, extra_headers={"kid": None})
    assert refused(inline_verifier, bearer(jwt)) == "kid missing"


@pytest.mark.parametrize("typ", [None, "JOSE", "at+jwt"])
def test_typ_other_than_jwt_is_refused(typ: str | None, keys: dict[str, Key], inline_verifier: ClientVerifier,
                                       clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, extra_headers={"typ": typ})
    assert refused(inline_verifier, bearer(jwt)) == "typ is not JWT"


# -- refused: issuer and keys ------------------------------------------------------------

def test_unknown_issuer_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                   clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, iss="https://attacker.example.net")
    assert refused(inline_verifier, bearer(jwt)) == "iss is not a trusted issuer"
    assert refused(inline_verifier, bearer(token(keys["es"], clock, iss=None))) == "iss missing"


def test_unknown_kid_is_refused_after_exactly_one_refresh(keys: dict[str, Key], server: JwksServer,
                                                          make_verifier: VerifierFactory,
                                                          clock: FakeClock) -> None:
    url = server.publish("/jwks.json", keys["es"].jwk)
    verifier = make_verifier({ISS: {"jwks_url": url}}, JWKS_REFRESH_INTERVAL_S=300)
    verifier.verify(bearer(token(keys["es"], clock)), AUD)
    assert server.hits["/jwks.json"] == 1

    clock.now += 301  # past the refresh window: one refresh is allowed
    assert refused(verifier, bearer(token(keys["es2"], clock))) == "unknown kid"
    assert server.hits["/jwks.json"] == 2
    for _ in range(5):  # no fetch storm
        assert refused(verifier, bearer(token(keys["es2"], clock))) == "unknown kid"
    assert server.hits["/jwks.json"] == 2


def test_key_rotation_is_picked_up_without_restart(keys: dict[str, Key], server: JwksServer,
                                                   make_verifier: VerifierFactory, clock: FakeClock) -> None:
    url = server.publish("/jwks.json", keys["es"].jwk)
    verifier = make_verifier({ISS: {"jwks_url": url}}, JWKS_REFRESH_INTERVAL_S=300)
    verifier.verify(bearer(token(keys["es"], clock)), AUD)

    server.publish("/jwks.json", keys["es"].jwk, keys["es2"].jwk)  # the client rotates
    clock.now += 100  # inside the refresh window: the cached set stands
    refused(verifier, bearer(token(keys["es2"], clock)))
    assert server.hits["/jwks.json"] == 1

    clock.now += 201  # window over: the unknown kid triggers one refresh
    assert verifier.verify(bearer(token(keys["es2"], clock)), AUD).kid == "es-2"
    verifier.verify(bearer(token(keys["es"], clock)), AUD)  # the old key still works
    assert server.hits["/jwks.json"] == 2


def test_unreachable_jwks_is_refused_and_not_retried_per_request(keys: dict[str, Key], server: JwksServer,
                                                                 make_verifier: VerifierFactory,
                                                                 clock: FakeClock) -> None:
    verifier = make_verifier({ISS: {"jwks_url": server.url("/missing.json")}})
    for _ in range(3):
        assert refused(verifier, bearer(token(keys["es"], clock))) == "unknown kid"
    assert server.hits["/missing.json"] == 1


def test_jku_outside_the_allow_list_is_refused_and_never_contacted(keys: dict[str, Key], server: JwksServer,
                                                                   make_verifier: VerifierFactory,
                                                                   clock: FakeClock) -> None:
    server.publish("/evil/jwks.json", keys["es2"].jwk)  # would verify, if it were ever fetched
    server.publish("/trusted/jwks.json", keys["es"].jwk)
    verifier = make_verifier({ISS: {"jwks": {"keys": [keys["es"].jwk]},
                                    "jku_allow": [server.url("/trusted/")]}})
    for jku in [server.url("/evil/jwks.json"), server.url("/trusted/../evil/jwks.json"),
                server.url("/trusted/%2e%2e/evil/jwks.json"), "file:///etc/passwd"]:
        assert refused(verifier, bearer(token(keys["es2"], clock, jku=jku))) == \
            "jku is not on the issuer's allow-list"
    assert server.total_hits() == 0


def test_jku_is_refused_when_the_issuer_allows_none(keys: dict[str, Key], server: JwksServer,
                                                    inline_verifier: ClientVerifier,
                                                    clock: FakeClock) -> None:
    jku = server.publish("/jwks.json", keys["es"].jwk)
    refused(inline_verifier, bearer(token(keys["es"], clock, jku=jku)))
    assert server.total_hits() == 0


def test_made_up_jku_urls_cannot_flood_the_cache_or_the_jwks_host(keys: dict[str, Key], server: JwksServer,
                                                                  clock: FakeClock) -> None:
    good = server.publish("/keys/good.json", keys["es"].jwk)
    cache = JwksCache(requests.Session(), timeout_s=1, refresh_interval_s=300, clock=clock, max_other_urls=3)
    assert cache.refresh(good) is not None
    assert cache.refresh(server.url("/keys/junk-1")) is None
    assert cache.refresh(server.url("/keys/junk-2")) is None
    assert cache.refresh(server.url("/keys/junk-3")) is None  # full: not fetched
    assert server.hits["/keys/junk-3"] == 0
    clock.now += 301  # dead entries may now make room, working ones stay
    assert cache.refresh(server.url("/keys/junk-3")) is None
    assert server.hits["/keys/junk-3"] == 1
    cached = cache.cached(good)
    assert cached is not None and "es-1" in cached


def test_keys_not_for_signatures_are_unusable(keys: dict[str, Key], server: JwksServer,
                                              make_verifier: VerifierFactory, clock: FakeClock) -> None:
    url = server.publish("/jwks.json", {**keys["es"].jwk, "use": "enc"})
    verifier = make_verifier({ISS: {"jwks_url": url}})
    assert refused(verifier, bearer(token(keys["es"], clock))) == "unknown kid"


# -- refused: claims ---------------------------------------------------------------------

@pytest.mark.parametrize("aud", [
    "https://cds.example.org/cds-services/ivig-order-sign",  # another service
    "https://cds.example.org/cds-services",                   # discovery
    AUD + "//",
    AUD.upper(),
    "http://cds.example.org/cds-services/ivig-order-select",
    [],
    ["https://other.example.org"],
    None,
])
def test_wrong_aud_is_refused(aud: Any, keys: dict[str, Key], inline_verifier: ClientVerifier,
                              clock: FakeClock) -> None:
    refused(inline_verifier, bearer(token(keys["es"], clock, aud=aud)))


def test_expired_token_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                  clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, now=clock.now - 300 - 61)
    assert refused(inline_verifier, bearer(jwt)) == "token expired"


def test_iat_in_the_future_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                      clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, now=clock.now + 61)
    assert refused(inline_verifier, bearer(jwt)) == "iat is in the future"


def test_nbf_in_the_future_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                      clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, extra_claims={"nbf": int(clock.now) + 120})
    assert refused(inline_verifier, bearer(jwt)) == "token not valid yet (nbf)"


@pytest.mark.parametrize("claim", ["exp", "iat"])
def test_missing_exp_or_iat_is_refused(claim: str, keys: dict[str, Key], inline_verifier: ClientVerifier,
                                       clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, extra_claims={claim: None})
    assert refused(inline_verifier, bearer(jwt)).startswith(f"{claim} missing")


def test_lifetime_over_the_cap_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                          clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, lifetime_s=3601)
    assert refused(inline_verifier, bearer(jwt)) == "token lifetime exceeds JWT_MAX_LIFETIME_S"


@pytest.mark.parametrize("jti", [None, "", "  ", 42])
def test_missing_or_empty_jti_is_refused(jti: Any, keys: dict[str, Key], inline_verifier: ClientVerifier,
                                         clock: FakeClock) -> None:
    jwt = token(keys["es"], clock, extra_claims={"jti": jti})
    assert refused(inline_verifier, bearer(jwt)) == "jti missing"


def test_replayed_jti_is_refused(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                 clock: FakeClock) -> None:
    jwt = token(keys["es"], clock)
    inline_verifier.verify(bearer(jwt), AUD)
    assert refused(inline_verifier, bearer(jwt)) == "jti replayed"
    # Same jti, new signature: still a replay.
    again = token(keys["es"], clock, extra_claims={"jti": "fixed"})
    inline_verifier.verify(bearer(again), AUD)
    assert refused(inline_verifier, bearer(token(keys["es"], clock, extra_claims={"jti": "fixed"}))) == \
        "jti replayed"


def test_a_refused_token_does_not_use_up_its_jti(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                                 clock: FakeClock) -> None:
    refused(inline_verifier, bearer(token(keys["es"], clock, aud="https://elsewhere.example.org",
                                          extra_claims={"jti": "j-1"})))
    inline_verifier.verify(bearer(token(keys["es"], clock, extra_claims={"jti": "j-1"})), AUD)


@pytest.mark.parametrize("tenant", [None, "hospital-b", ["hospital-a"]])
def test_wrong_or_missing_tenant_is_refused(tenant: Any, keys: dict[str, Key], make_verifier: VerifierFactory,
                                            clock: FakeClock) -> None:
    verifier = make_verifier({ISS: {"jwks": {"keys": [keys["es"].jwk]}, "tenants": ["hospital-a"]}})
    jwt = token(keys["es"], clock, extra_claims={"tenant": tenant})
    assert refused(verifier, bearer(jwt)) == "tenant missing or not allowed for this issuer"


# -- replay caches -----------------------------------------------------------------------

def test_memory_replay_cache_forgets_expired_entries() -> None:
    cache = MemoryReplayCache(prune_interval_s=10)
    assert cache.add("iss", "a", expires_at=T0 + 5, now=T0)
    assert not cache.add("iss", "a", expires_at=T0 + 5, now=T0 + 1)
    assert cache.add("other-iss", "a", expires_at=T0 + 5, now=T0 + 1)
    assert cache.add("iss", "a", expires_at=T0 + 50, now=T0 + 6)  # expired: may be remembered anew
    cache.add("iss", "b", expires_at=T0 + 7, now=T0 + 6)
    cache.add("iss", "c", expires_at=T0 + 100, now=T0 + 20)  # prunes "b" and the old other-iss entry
    assert len(cache) == 2


def test_concurrent_replays_let_exactly_one_through(keys: dict[str, Key], inline_verifier: ClientVerifier,
                                                    clock: FakeClock) -> None:
    jwt = bearer(token(keys["es"], clock))

    def attempt(_: int) -> bool:
        try:
            inline_verifier.verify(jwt, AUD)
            return True
        except Unauthorized:
            return False

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(attempt, range(16))) == 1


def test_concurrent_unknown_kids_cause_one_fetch(keys: dict[str, Key], server: JwksServer,
                                                 make_verifier: VerifierFactory, clock: FakeClock) -> None:
    url = server.publish("/jwks.json", keys["es"].jwk)
    verifier = make_verifier({ISS: {"jwks_url": url}})
    tokens = [bearer(token(keys["es"], clock)) for _ in range(16)]
    barrier = threading.Barrier(8)

    def attempt(jwt: str) -> Client:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=2)
        return verifier.verify(jwt, AUD)

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert len(list(pool.map(attempt, tokens))) == 16
    assert server.hits["/jwks.json"] == 1


def _redis_or_skip() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at 127.0.0.1:6379 is not reachable ({type(exc).__name__}); "
                    "the shared replay cache test needs it")
    return client


def test_redis_replay_cache_is_shared_by_two_verifiers(keys: dict[str, Key], clock: FakeClock) -> None:
    client = _redis_or_skip()
    prefix = f"test-ivig-cds-{uuid.uuid4()}:"
    settings = load_settings({"TRUSTED_ISSUERS": json.dumps({ISS: {"jwks": {"keys": [keys["es"].jwk]}}})},
                             environ={})
    first, second = (ClientVerifier(settings, clock=clock,
                                    replay_cache=RedisReplayCache(REDIS_URL, key_prefix=prefix))
                     for _ in range(2))
    try:
        jwt = bearer(token(keys["es"], clock, lifetime_s=120))
        first.verify(jwt, AUD)
        assert refused(second, jwt) == "jti replayed"
        created = client.keys(prefix + "*")
        assert len(created) == 1
        assert 0 < client.ttl(created[0]) <= 120 + 60  # exp + skew from now
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()


def test_redis_url_setting_selects_the_redis_cache(keys: dict[str, Key], clock: FakeClock) -> None:
    client = _redis_or_skip()
    config = {"TRUSTED_ISSUERS": json.dumps({ISS: {"jwks": {"keys": [keys["es"].jwk]}}}),
              "REDIS_URL": REDIS_URL}
    verifiers = [ClientVerifier(load_settings(config, environ={}), clock=clock) for _ in range(2)]
    jti = f"test-{uuid.uuid4()}"
    try:
        jwt = bearer(token(keys["es"], clock, extra_claims={"jti": jti}))
        verifiers[0].verify(jwt, AUD)
        assert refused(verifiers[1], jwt) == "jti replayed"
    finally:
        client.delete(RedisReplayCache(REDIS_URL).key(ISS, jti))
        client.close()


def test_unreachable_redis_fails_closed(keys: dict[str, Key], make_verifier: VerifierFactory,
                                        clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    verifier = make_verifier({ISS: {"jwks": {"keys": [keys["es"].jwk]}}}, REDIS_URL="redis://127.0.0.1:1/0")
    with caplog.at_level(logging.INFO, logger="cds_service.http.auth"):
        assert refused(verifier, bearer(token(keys["es"], clock))) == "replay cache unavailable"
    assert any(r.levelno == logging.WARNING and "replay cache unavailable" in r.getMessage()
               for r in caplog.records)


# -- logging -----------------------------------------------------------------------------

def test_refusals_are_logged_with_reason_issuer_and_kid_but_never_the_token(
        keys: dict[str, Key], server: JwksServer, make_verifier: VerifierFactory, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    url = server.publish("/jwks.json", keys["es"].jwk)
    verifier = make_verifier({ISS: {"jwks_url": url, "jwks": {"keys": [keys["rs"].jwk]}}})
    good = token(keys["es"], clock)
    tokens = [
        good, good,  # accepted, then replayed
        token(keys["forger"], clock),
        token(keys["es"], clock, aud="https://elsewhere.example.org"),
        token(keys["es"], clock, iss="https://attacker.example.net"),
        token(keys["es2"], clock),
        token(keys["es"], clock, now=clock.now - 10_000),
        _hs256_with_public_key(keys["rs"], clock),
    ]
    with caplog.at_level(logging.DEBUG):
        for jwt in tokens:
            with contextlib.suppress(Unauthorized):
                verifier.verify(bearer(jwt), AUD)
        for malformed in ["Bearer " + good[:-3], "Basic " + good, "Bearer " + good + ".x"]:
            with pytest.raises(Unauthorized):
                verifier.verify(malformed, AUD)

    refusals = [r for r in caplog.records if r.name == "cds_service.http.auth" and r.levelno == logging.INFO
                and r.getMessage().startswith("client JWT refused")]
    assert len(refusals) == len(tokens) - 1 + 3
    assert "client JWT refused: jti replayed (iss='https://ehr.example.org', kid='es-1')" in caplog.text
    for jwt in tokens:
        for part in [jwt, *jwt.split(".")]:
            assert part not in caplog.text


# -- configuration -----------------------------------------------------------------------

@pytest.mark.parametrize("issuers", [
    "{not json",
    "[]",
    '{"https://ehr.example.org": []}',
    '{"https://ehr.example.org": {}}',
    '{"https://ehr.example.org": {"jwks_url": "ftp://ehr.example.org/jwks"}}',
    '{"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks", "jwks_uri": "x"}}',
    '{"https://ehr.example.org": {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}}}',
    '{"https://ehr.example.org": {"jwks": {"keys": []}}}',
    '{"https://ehr.example.org": {"jku_allow": ["https://ehr.example.org"]}}',
    '{"https://ehr.example.org": {"jku_allow": "https://ehr.example.org/keys/"}}',
    '{"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks", "tenants": []}}',
    "/nonexistent/trusted-issuers.json",
])
def test_bad_trusted_issuers_raise_settings_error(issuers: str) -> None:
    with pytest.raises(SettingsError):
        ClientVerifier(Settings(TRUSTED_ISSUERS=issuers))


def test_auth_jwt_without_issuers_or_with_bad_settings_raises_settings_error() -> None:
    with pytest.raises(SettingsError, match="TRUSTED_ISSUERS"):
        ClientVerifier(Settings())
    issuers = '{"https://ehr.example.org": {"jwks_url": "https://ehr.example.org/jwks"}}'
    with pytest.raises(SettingsError, match="JWT_ALGORITHMS"):
        ClientVerifier(Settings(TRUSTED_ISSUERS=issuers, JWT_ALGORITHMS="ES999"))
    with pytest.raises(SettingsError, match="REDIS_URL"):
        ClientVerifier(Settings(TRUSTED_ISSUERS=issuers, REDIS_URL="notredis://x"))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("JWT_CLOCK_SKEW_S", -1, "may not be negative"),
    ("JWKS_REFRESH_INTERVAL_S", -1, "may not be negative"),
    ("JWT_MAX_LIFETIME_S", 0, "must be positive"),
    ("JWKS_TIMEOUT_S", 0, "must be positive"),
])
def test_jwt_timing_settings_are_validated_with_the_other_settings(name: str, value: int, message: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} {message}"):
        load_settings({name: value}, environ={})
    load_settings({name: 0 if "negative" in message else 1}, environ={})


def test_trusted_issuers_from_a_file(keys: dict[str, Key], tmp_path: Any, clock: FakeClock) -> None:
    path = tmp_path / "trusted-issuers.json"
    path.write_text(json.dumps({ISS: {"jwks": {"keys": [keys["es"].jwk]}, "tenants": ["t"],
                                      "jku_allow": ["https://ehr.example.org/keys/"]}}))
    issuer = load_trusted_issuers(str(path))[ISS]
    assert issuer.tenants == frozenset({"t"}) and issuer.jku_allow == ("https://ehr.example.org/keys/",)
    verifier = ClientVerifier(load_settings({"TRUSTED_ISSUERS": str(path)}, environ={}), clock=clock)
    verifier.verify(bearer(token(keys["es"], clock, extra_claims={"tenant": "t"})), AUD)


# -- robustness --------------------------------------------------------------------------

_b64_segment = st.binary(max_size=60).map(b64url)
_json_names = st.sampled_from(["alg", "kid", "typ", "jku", "iss", "aud", "exp", "iat", "jti"])
_json_values = st.one_of(st.none(), st.integers(), st.text(max_size=20),
                         st.lists(st.text(max_size=5), max_size=2))
_json_segment = st.dictionaries(_json_names, _json_values, max_size=6).map(
    lambda d: b64url(json.dumps(d).encode()))


@hypothesis_settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(authorization=st.one_of(
    st.text(max_size=80),
    st.tuples(_json_segment | _b64_segment, _json_segment | _b64_segment, _b64_segment)
    .map(lambda parts: "Bearer " + ".".join(parts)),
))
def test_arbitrary_authorization_values_only_ever_raise_unauthorized(authorization: str,
                                                                     inline_verifier: ClientVerifier) -> None:
    with pytest.raises(Unauthorized):
        inline_verifier.verify(authorization, AUD)
