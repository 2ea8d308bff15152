"""The one URL check for every URL the service fetches: FHIR servers (``FHIR_SERVERS``), and the
JWKS locations of trusted issuers (``jku`` against ``jku_allow``).  A leaf: stdlib only.

Rules, in the order ``parse`` applies them (anything else is refused, never repaired):

1. printable ASCII only: no whitespace, control characters, backslashes or non-ASCII (parsers
   disagree on them);
2. scheme ``http`` or ``https``; no userinfo (``user@host``), no fragment;
3. host: a DNS name (letters, digits, ``-``; no empty label, no percent-encoding, no all-numeric
   last label such as ``2130706433`` or ``127.1``) or an IP literal (IPv6 in brackets, no zone);
   lower-cased; port 1-65535, the scheme's default port filled in;
4. path: every segment is decoded (repeatedly, so ``%252e`` counts as ``.``) and refused when a
   decoding is ``.`` or ``..`` (also before a ``;`` parameter, ``..;``), holds ``/`` or ``\\``
   (``%2f``, ``%5c``), a control character, or a broken escape; no empty segment (``//``) except
   the trailing slash.

``allowed(url, allow_list)``: an entry is ``*`` or a URL prefix.  A prefix admits a URL with the
same scheme, host and port whose decoded path segments start with the prefix's segments (whole
segments: ``/fhir`` does not admit ``/fhir-admin``).  Plain ``http`` only through an entry that
names that ``http://`` prefix.  ``*`` admits ``https`` URLs whose host is a name or a public IP
literal; internal addresses (``is_internal``) behind a name are refused where the connection is
made (after DNS resolution: see ``engine/fhir/client.py``).  The query string is not matched.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}
ANY = "*"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Origin = tuple[str, str, int]

_ALLOWED_CHARS = re.compile(r"[\x21-\x7e]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_BAD_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")
_DECODE_ROUNDS = 4  # %25252e... deeper than this is refused outright
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

# Special-purpose ranges (RFC 6890 and successors) spelt out, so the answer does not depend on
# which Python patch release's ``is_global`` is running; ``is_global`` then catches the rest.
_INTERNAL_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8",
))
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Cloud addresses outside the ranges above that answer only from inside a VM (Azure WireServer).
_METADATA = frozenset({ipaddress.ip_address("168.63.129.16")})


@dataclass(frozen=True)
class Url:
    """A URL that passed ``parse``: normalised scheme, host and port; decoded path segments."""

    scheme: str
    host: str  # lower-case name, or an IP address (IPv6 without brackets)
    port: int
    segments: tuple[str, ...]  # decoded, non-empty; a trailing slash adds nothing
    query: str
    ip: IPAddress | None  # the host when it is an IP literal

    @property
    def origin(self) -> Origin:
        return self.scheme, self.host, self.port


def parse(url: object) -> Url | None:
    """``url`` checked and normalised (the rules in the module docstring), or None."""
    if not isinstance(url, str) or not _ALLOWED_CHARS.fullmatch(url) or "#" in url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or "@" in parts.netloc or port == 0:
        return None
    host, ip = _host(parts.netloc)
    if host is None:
        return None
    segments = _segments(parts.path)
    if segments is None:
        return None
    return Url(scheme, host, port or DEFAULT_PORTS[scheme], segments, parts.query, ip)


def _host(netloc: str) -> tuple[str | None, IPAddress | None]:
    host = netloc.lower()
    if "%" in host:
        return None, None  # percent-encoded names and IPv6 zones ("fe80::1%25eth0")
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or host[end + 1:] and not re.fullmatch(r":[0-9]+", host[end + 1:]):
            return None, None
        try:
            ip6 = ipaddress.IPv6Address(host[1:end])  # a zone ("%eth0") is refused here
        except ValueError:
            return None, None
        return str(ip6), ip6
    host = host.rsplit(":", 1)[0] if ":" in host else host
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None, None
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # Only the canonical dotted quad: "127.1", "0x7f.0.0.1" or "2130706433" reach 127.0.0.1
        # through inet_aton while looking like names to a prefix match.
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            return None, None
        return str(ip4), ip4
    return host, None


def _segments(path: str) -> tuple[str, ...] | None:
    raw = path.split("/")
    if raw and raw[0] == "":
        raw = raw[1:]
    if raw and raw[-1] == "":
        raw = raw[:-1]  # the trailing slash
    decoded_segments = []
    for segment in raw:
        if not segment:
            return None  # "//": servers differ on whether it collapses
        decoded = _decoded(segment)
        if decoded is None:
            return None
        decoded_segments.append(decoded)
    return tuple(decoded_segments)


def _decoded(segment: str) -> str | None:
    """The segment decoded once, or None when any decoding of it is a dot segment or holds a
    separator, a control character or a broken escape."""
    current = segment
    first: str | None = None
    for _ in range(_DECODE_ROUNDS):
        if _BAD_ESCAPE.search(current):
            return None
        if current.split(";", 1)[0] in (".", ".."):
            return None
        try:
            decoded = unquote(current, errors="strict") if "%" in current else current
        except UnicodeDecodeError:
            return None
        if "/" in decoded or "\\" in decoded or any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in decoded):
            return None
        if first is None:
            first = decoded
        if decoded == current:
            return first
        current = decoded
    return None


def origin(url: str) -> Origin | None:
    """(scheme, host, port) of a URL that passes ``parse``; None otherwise."""
    parsed = parse(url)
    return parsed.origin if parsed is not None else None


def matches(url: Url, prefix: Url) -> bool:
    """Does ``prefix`` (an allow-list entry) admit ``url``?  Same origin, whole-segment path prefix;
    an entry with a query string is a configuration mistake and admits nothing."""
    if prefix.query or url.origin != prefix.origin:
        return False
    return url.segments[: len(prefix.segments)] == prefix.segments


def allowed_by(url: str, allow_list: Iterable[str]) -> str | None:
    """How ``url`` is admitted: the matching URL prefix entry (explicit entries win), ``"*"``, or
    None when refused."""
    target = parse(url)
    if target is None:
        return None
    wildcard = False
    for raw_entry in allow_list:
        entry = raw_entry.strip()
        if entry == ANY:
            wildcard = True
            continue
        prefix = parse(entry)
        if prefix is not None and matches(target, prefix):
            return entry
    if wildcard and target.scheme == "https" and not _internal_name(target):
        return ANY
    return None


def allowed(url: str, allow_list: Iterable[str], *, wildcard: bool = True) -> bool:
    """May ``url`` be fetched under ``allow_list``?  ``wildcard=False`` ignores ``*`` entries
    (``jku_allow``: keys come only from prefixes an operator wrote down)."""
    entries = list(allow_list) if wildcard else [e for e in allow_list if e.strip() != ANY]
    return allowed_by(url, entries) is not None


def _internal_name(url: Url) -> bool:
    if url.ip is not None:
        return is_internal(url.ip)
    return url.host in _LOCAL_NAMES or url.host.endswith(".localhost")


def is_internal(ip: IPAddress) -> bool:
    """Loopback, private, unique-local, link-local (metadata 169.254.169.254), CGNAT, multicast,
    unspecified, reserved or documentation addresses, also when embedded in IPv6 (IPv4-mapped,
    6to4, NAT64); anything that is not plainly a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_internal(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_internal(ip.sixtofour)
        if any(ip in net for net in _NAT64):
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if any(ip in net for net in _INTERNAL_NETWORKS if net.version == ip.version):
        return True
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
            or ip.is_unspecified or ip.is_reserved or ip in _METADATA)
