"""The one strict URL check (issue 15, finding 1): FHIR servers and ``jku`` share ``cds_service.urls``."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds_service.http.auth import TrustedIssuer
from cds_service.urls import allowed, allowed_by, is_internal, origin, parse

KEYS = "https://ehr.example.org/keys/"
FHIR = "https://ehr.example.org/fhir"

# Every way of smuggling a separator or a dot segment past a prefix check that we know of.
TRAVERSALS = [
    "..", ".", "%2e%2e", "%2E%2E", "%2e%2E", "%2E%2e", ".%2e", "%2e.", "%2e", "%2E",
    "..%2f", "..%2F", "%2e%2e%2f", "%2e%2e%2F", "%2E%2E%2f", "..%5c", "..%5C", "%2e%2e%5c",
    "%252e%252e", "%252e%252e%252f", "%25252e%25252e", "..%252f", "%252e",
    "..;", "..;x=1", ".;", "%2e%2e;", "a%2fb", "a%2Fb", "a%5cb", "a%5Cb", "%2f", "%5c",
    "a%252fb", "a%00b", "%00", "%0a", "%ZZ", "%2", "%", "%ff", "%c0%ae%c0%ae",
]


# --------------------------------------------------------------------------------------------------
# parse
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("segment", TRAVERSALS)
@pytest.mark.parametrize("where", ["{s}/jwks.json", "sub/{s}/jwks.json", "sub/{s}", "{s}"])
def test_traversal_segments_are_refused_anywhere_in_the_path(segment: str, where: str) -> None:
    url = KEYS + where.format(s=segment)
    assert parse(url) is None, url
    assert not allowed(url, [KEYS])
    assert not allowed(url, ["*"])


@pytest.mark.parametrize("url", [
    "https://ehr.example.org/keys/..%2fuploads/jwks.json",  # the finding as reported
    "https://ehr.example.org/keys/%2e%2e%2fuploads/jwks.json",
    "https://ehr.example.org/keys/%2e%2e/uploads/jwks.json",
    "https://ehr.example.org/keys/..\\uploads/jwks.json",
    "https://ehr.example.org/keys//uploads/jwks.json",
    "https://ehr.example.org/keys/./jwks.json",
])
def test_reported_jku_escapes_are_refused(url: str) -> None:
    assert not allowed(url, [KEYS])
    assert not TrustedIssuer(iss="https://ehr.example.org", jku_allow=(KEYS,)).allows_jku(url)


@pytest.mark.parametrize(("url", "expected"), [
    ("https://EHR.Example.ORG/fhir/", ("https", "ehr.example.org", 443)),
    ("HTTPS://ehr.example.org:443/fhir", ("https", "ehr.example.org", 443)),
    ("http://127.0.0.1:8080/fhir", ("http", "127.0.0.1", 8080)),
    ("http://127.0.0.1:80/", ("http", "127.0.0.1", 80)),
    ("https://[::1]:8443/fhir", ("https", "::1", 8443)),
    ("https://[2001:DB8::1]/", ("https", "2001:db8::1", 443)),
    ("https://ehr.example.org:/fhir", ("https", "ehr.example.org", 443)),
])
def test_origin_is_normalised(url: str, expected: tuple[str, str, int]) -> None:
    assert origin(url) == expected


@pytest.mark.parametrize("url", [
    "", " https://ehr.example.org/", "https://ehr.example.org/ fhir", "https://ehr.example.org/\tfhir",
    "https://ehr.example.org/fhir\n", "https://ehr.example.org/fhir#x", "https://ehr.example.org/#",
    "https://user@ehr.example.org/", "https://user:pw@ehr.example.org/", "https://@ehr.example.org/",
    "https://ehr.example.org@evil.example.net/", "https://ehr.example.org\\@evil.example.net/",
    "https://ehr.example.org:0/", "https://ehr.example.org:65536/", "https://ehr.example.org:x/",
    "https://ehr.example.org:80:90/", "ftp://ehr.example.org/", "file:///etc/passwd", "//ehr.example.org/",
    "ehr.example.org/fhir", "https:///fhir", "https://", "https://ehr..example.org/", "https://.ehr.org/",
    "https://ehr.example.org./", "https://-ehr.example.org/", "https://ehr_x.example.org/",
    "https://ehr%2eexample.org/", "https://ehr.example.org%2f@evil/", "https://ehr.exämple.org/",
    "https://ehr.example.org/fhïr", "https://[::1/", "https://[::1]x/", "https://[fe80::1%25eth0]/",
    "https://[not-an-ip]/", "https://127.1/", "https://0x7f.0.0.1/", "https://0177.0.0.1/",
    "https://2130706433/", "https://0x7f000001/", "https://127.0.0.1.1/", "https://999.0.0.1/",
])
def test_malformed_or_ambiguous_urls_are_refused(url: str) -> None:
    assert parse(url) is None
    assert not allowed(url, ["*", "https://ehr.example.org/"])


@pytest.mark.parametrize("value", [None, 42, b"https://ehr.example.org/", ["https://ehr.example.org/"]])
def test_non_strings_are_refused(value: object) -> None:
    assert parse(value) is None


def test_percent_encoded_ordinary_characters_match_their_decoded_form() -> None:
    assert allowed("https://ehr.example.org/%66hir/Patient", [FHIR])
    assert allowed("https://ehr.example.org/fhir/Patient", ["https://ehr.example.org/%66hir"])
    assert allowed("https://ehr.example.org/fhir/caf%C3%A9", [FHIR])


# --------------------------------------------------------------------------------------------------
# allowed
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "allow_list", "expected"), [
    (FHIR, [FHIR], True),
    (FHIR + "/", [FHIR], True),
    (FHIR + "/Patient/p1", [FHIR + "/"], True),
    (FHIR + "/Observation?code=http://loinc.org|1&x=%2f..%2f", [FHIR], True),  # the query is not matched
    ("https://ehr.example.org:443/fhir", ["https://EHR.example.org/fhir"], True),
    (FHIR, ["https://ehr.example.org:8443/fhir"], False),
    ("https://ehr.example.org/fhir-admin", [FHIR], False),
    ("https://ehr.example.org/fhi", [FHIR], False),
    ("https://ehr.example.org", [FHIR], False),
    ("https://ehr.example.org.evil.example.net/fhir", ["https://ehr.example.org"], False),
    (FHIR, [FHIR + "?tenant=1"], False),  # an entry with a query is a mistake: matches nothing
    (FHIR, [FHIR + "/%2e%2e"], False),  # a broken entry matches nothing
    # https only, unless the entry itself names http
    ("http://ehr.example.org/fhir", ["https://ehr.example.org/fhir"], False),
    ("https://ehr.example.org/fhir", ["http://ehr.example.org/fhir"], False),
    ("http://127.0.0.1:8080/fhir/Patient", ["http://127.0.0.1:8080/fhir"], True),
    ("http://127.0.0.1:8080/fhir", ["*"], False),
    # * : any https name or public IP, never an internal IP literal or a local name
    ("https://fhir.example.net/r4", ["*"], True),
    ("https://8.8.8.8/r4", ["*"], True),
    ("https://[2606:4700:4700::1111]/r4", ["*"], True),
    ("https://127.0.0.1/fhir", ["*"], False),
    ("https://127.0.0.1:8443/fhir", ["*"], False),
    ("https://10.0.0.5/fhir", ["*"], False),
    ("https://169.254.169.254/latest/meta-data", ["*"], False),
    ("https://[::1]/fhir", ["*"], False),
    ("https://[fd00:ec2::254]/", ["*"], False),
    ("https://[::ffff:127.0.0.1]/", ["*"], False),
    ("https://[::ffff:7f00:1]/", ["*"], False),
    ("https://localhost/fhir", ["*"], False),
    ("https://LOCALHOST:8443/fhir", ["*"], False),
    ("https://api.localhost/fhir", ["*"], False),
    # an explicit entry may name loopback (test servers), even next to *
    ("https://127.0.0.1:8443/fhir", ["*", "https://127.0.0.1:8443/fhir"], True),
    ("https://localhost/fhir", ["https://localhost/"], True),
])
def test_allowed(url: str, allow_list: list[str], expected: bool) -> None:
    assert allowed(url, allow_list) is expected


def test_allowed_by_names_the_entry_and_prefers_explicit_ones() -> None:
    assert allowed_by(FHIR + "/Patient", ["*", FHIR]) == FHIR
    assert allowed_by(FHIR + "/Patient", [" * "]) == "*"
    assert allowed_by("http://fhir.example.net/", ["*"]) is None


def test_wildcard_can_be_ignored_for_jku() -> None:
    assert allowed("https://keys.example.net/jwks.json", ["*"])
    assert not allowed("https://keys.example.net/jwks.json", ["*"], wildcard=False)
    assert not TrustedIssuer(iss="https://ehr.example.org", jku_allow=("*",)).allows_jku(
        "https://keys.example.net/jwks.json")


def test_jku_prefix_is_matched_on_whole_segments() -> None:
    issuer = TrustedIssuer(iss="https://ehr.example.org", jku_allow=(KEYS,))
    assert issuer.allows_jku(KEYS + "jwks.json")
    assert issuer.allows_jku("https://EHR.example.org:443/keys/2024/jwks.json")
    assert not issuer.allows_jku("https://ehr.example.org/keys-evil/jwks.json")
    assert not issuer.allows_jku("https://ehr.example.org/uploads/jwks.json")
    assert not issuer.allows_jku("http://ehr.example.org/keys/jwks.json")


# --------------------------------------------------------------------------------------------------
# internal addresses
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.100.100.200", "168.63.129.16", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "192.0.0.8",
    "::1", "::", "fd00:ec2::254", "fc00::1", "fe80::1", "fec0::1", "ff02::1", "ff0e::1", "::ffff:127.0.0.1",
    "::ffff:169.254.169.254", "::ffff:10.0.0.1", "2002:7f00:1::", "2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe",
    "64:ff9b::7f00:1", "2001:db8::1", "2001::1", "::7f00:1", "100::1",
])
def test_internal_addresses(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111",
                                     "2a00:1450:4001:800::200e", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses(address: str) -> None:
    assert not is_internal(ipaddress.ip_address(address))


# --------------------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------------------

_segment_chars = st.sampled_from(list("abz09-_.~;=%/\\") + ["%2e", "%2E", "%2f", "%2F", "%5c", "%25", "..", "%00"])
_segments = st.lists(st.lists(_segment_chars, max_size=6).map("".join), max_size=5)


def _decodings(segment: str) -> list[str]:
    out = [segment]
    for _ in range(4):
        nxt = unquote(out[-1])
        if nxt == out[-1]:
            break
        out.append(nxt)
    return out


@given(_segments)
def test_an_admitted_url_never_decodes_to_a_separator_or_dot_segment(segments: list[str]) -> None:
    url = KEYS + "/".join(segments)
    if not allowed(url, [KEYS]):
        return
    for raw in urlsplit(url).path.split("/")[1:]:
        for decoded in _decodings(raw):
            assert decoded.split(";")[0] not in (".", "..")
            assert "/" not in decoded
            assert "\\" not in decoded


@given(st.lists(st.text(alphabet="abcdefxyz0129-_", min_size=1, max_size=8), max_size=4),
       st.sampled_from(TRAVERSALS))
def test_any_traversal_inserted_into_an_admitted_url_is_refused(segments: list[str], traversal: str) -> None:
    url = KEYS + "/".join([*segments, traversal, "jwks.json"])
    assert allowed(KEYS + "/".join([*segments, "jwks.json"]), [KEYS])
    assert not allowed(url, [KEYS])


@given(st.text(alphabet="abcxyz019-_.", min_size=1, max_size=10))
def test_encoding_ordinary_characters_changes_nothing(segment: str) -> None:
    if segment in (".", ".."):
        return
    plain = KEYS + segment + "/jwks.json"
    encoded = KEYS + quote(segment, safe="").replace("a", "%61") + "/jwks.json"
    assert allowed(plain, [KEYS]) == allowed(encoded, [KEYS])
