"""``cds-service fire``: act as a CDS client against any CDS service (the options are in ``cli.py``).

``fire`` does what an EHR does: discovery (``GET BASE/cds-services``) to find the service for the
hook and its prefetch templates, then one hook call with a fixture patient's request (prefetch
filled from the fixture record for *that* service's templates), signed as a CDS client when a key
is given (``aud`` = the URL called, fresh ``jti``).  The response is checked against the CDS
Hooks response schema and the cards are printed for a person to read.

Exit codes: 0 the service answered a valid response; 1 protocol error (wrong status, not JSON,
schema violation, not a CDS service, no service for the hook); 2 usage error (bad arguments,
unreadable key, unknown fixture); 3 the service could not be reached (connection refused,
timeout, TLS error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_service.devtools import EXIT_OK, EXIT_PROTOCOL, EXIT_UNREACHABLE, EXIT_USAGE
from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.devtools.keys import mint_token
from cds_service.protocol import INDICATOR_ORDER
from cds_service.protocol.schema import first_error
from cds_service.settings import DEFAULT_FIXTURES_DIR, SettingsError, load_settings

__all__ = ["EXIT_OK", "EXIT_PROTOCOL", "EXIT_UNREACHABLE", "EXIT_USAGE", "FireError", "Signer", "fire"]

DEFAULT_TIMEOUT_S = 10.0
_COLOURS = {"critical": "\033[1;31m", "warning": "\033[1;33m", "info": "\033[1;34m", "bold": "\033[1m",
            "dim": "\033[2m", "red": "\033[31m", "green": "\033[32m"}
_RESET = "\033[0m"
# Text from the service is printed to a terminal: no control characters (escape sequences) pass.
_CONTROL = dict.fromkeys([*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f, *range(0x80, 0xa0)], "?")


class FireError(Exception):
    """A failure with a message for the user and the exit code to end with."""

    def __init__(self, message: str, exit_code: int = EXIT_PROTOCOL) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def clean(text: Any) -> str:
    """Untrusted text made safe to print (control characters replaced)."""
    return str(text).translate(_CONTROL)


# --------------------------------------------------------------------------------------
# Client JWTs
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Signer:
    """Signs each call as a CDS client: a fresh token per request, ``aud`` = the URL called."""

    private_pem: bytes
    alg: str
    kid: str
    iss: str
    jku: str | None = None

    def authorization(self, aud: str) -> dict[str, str]:
        token = mint_token(self.private_pem, alg=self.alg, kid=self.kid, iss=self.iss, aud=aud, jku=self.jku)
        return {"Authorization": f"Bearer {token}"}


def algorithm_for_key(private_pem: bytes, requested: str | None) -> str:
    """The JWS algorithm for a PEM private key: ES384 for P-384 EC keys, RS384 for RSA keys."""
    try:
        key = serialization.load_pem_private_key(private_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise FireError(f"the key is not an unencrypted PEM private key ({exc})", EXIT_USAGE) from None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.name != "secp384r1":
            raise FireError(f"EC key on curve {key.curve.name}: CDS Hooks recommends ES384, which needs a "
                            "P-384 key (make one with `cds-service keys new --alg ES384`)", EXIT_USAGE)
        found = "ES384"
    elif isinstance(key, rsa.RSAPrivateKey):
        found = "RS384"
    else:
        raise FireError(f"unsupported key type {type(key).__name__}: use an EC P-384 (ES384) or an RSA "
                        "(RS384) key", EXIT_USAGE)
    if requested is not None and requested != found:
        raise FireError(f"--alg {requested} does not fit this key (the key is for {found})", EXIT_USAGE)
    return found


def load_signer(args: argparse.Namespace) -> Signer | None:
    if args.jwt_key is None:
        for option in ("iss", "kid", "alg", "jku"):
            if getattr(args, option) is not None:
                raise FireError(f"--{option} only makes sense with --jwt-key", EXIT_USAGE)
        return None
    missing = [f"--{o}" for o in ("iss", "kid") if not getattr(args, o)]
    if missing:
        raise FireError(f"--jwt-key needs {' and '.join(missing)} (the issuer and key id the service trusts)",
                        EXIT_USAGE)
    try:
        private_pem = Path(args.jwt_key).read_bytes()
    except OSError as exc:
        raise FireError(f"cannot read --jwt-key {args.jwt_key}: {exc.strerror or exc}", EXIT_USAGE) from None
    alg = algorithm_for_key(private_pem, args.alg)
    return Signer(private_pem, alg, args.kid, args.iss, args.jku)


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------

def _content_type(response: requests.Response) -> str:
    return response.headers.get("Content-Type", "no Content-Type").split(";")[0].strip() or "no Content-Type"


def _error_detail(response: requests.Response) -> str:
    """What an error response says, briefly: the JSON error/detail, or its content type."""
    try:
        body = response.json()
    except ValueError:
        return f"{_content_type(response)} body"
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            issues = body.get("issue")
            texts = [str(i.get("diagnostics") or i.get("code"))
                     for i in (issues if isinstance(issues, list) else []) if isinstance(i, dict)]
            return "OperationOutcome: " + ("; ".join(texts) or "no diagnostics")
        parts = [str(body[k]) for k in ("error", "detail") if body.get(k)]
        if parts:
            return clean(": ".join(parts))[:300]
    return "JSON body"


def _request(session: requests.Session, method: str, url: str, timeout: float,
             **kwargs: Any) -> tuple[requests.Response, float]:
    started = time.perf_counter()
    try:
        response = session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.exceptions.SSLError as exc:
        raise FireError(f"TLS error talking to {url}: {exc}", EXIT_UNREACHABLE) from None
    except requests.exceptions.ConnectionError as exc:
        reason = "connection refused" if "refused" in str(exc).lower() else str(exc)
        raise FireError(f"cannot connect to {url}: {reason}", EXIT_UNREACHABLE) from None
    except requests.exceptions.Timeout:
        raise FireError(f"no answer from {url} within {timeout:g} s", EXIT_UNREACHABLE) from None
    except requests.exceptions.RequestException as exc:
        raise FireError(f"request to {url} failed: {exc}", EXIT_UNREACHABLE) from None
    return response, (time.perf_counter() - started) * 1000


def _unauthorized(method: str, url: str, signer: Signer | None) -> FireError:
    if signer is None:
        return FireError(f"{method} {url} answered 401 Unauthorized: the service wants a signed client JWT; "
                         "pass --jwt-key, --iss and --kid (make a key with `cds-service keys new`)")
    return FireError(f"{method} {url} answered 401 Unauthorized: the service refused the client JWT "
                     f"(iss {signer.iss!r}, kid {signer.kid!r}, {signer.alg}, aud {url!r}). Check its "
                     "TRUSTED_ISSUERS has this issuer with this key, its JWT_ALGORITHMS allows the "
                     "algorithm, and its PUBLIC_BASE_URL makes the same aud; the service log says which "
                     "check failed")


def _redirect(method: str, url: str, response: requests.Response) -> FireError:
    location = response.headers.get("Location", "?")
    return FireError(f"{method} {url} answered {response.status_code} redirect to {clean(location)}: "
                     "use the final URL as --url (redirects are not followed: the JWT aud names one URL)")


def discover(session: requests.Session, base: str, signer: Signer | None,
             timeout: float) -> list[dict[str, Any]]:
    """The services a CDS service offers (``GET BASE/cds-services``); FireError when it is not one."""
    url = f"{base}/cds-services"
    headers = {"Accept": "application/json"}
    if signer is not None:
        headers.update(signer.authorization(url))
    response, _ = _request(session, "GET", url, timeout, headers=headers)
    if response.status_code == 401:
        raise _unauthorized("GET", url, signer)
    if 300 <= response.status_code < 400:
        raise _redirect("GET", url, response)
    if response.status_code != 200:
        raise FireError(f"not a CDS service: GET {url} answered HTTP {response.status_code} "
                        f"({_error_detail(response)}); a CDS service answers 200 with its discovery document")
    try:
        body = response.json()
    except ValueError:
        raise FireError(f"not a CDS service: GET {url} answered {_content_type(response)}, "
                        "not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("services"), list):
        raise FireError(f"not a CDS service: GET {url} answered JSON without a 'services' array")
    services = [s for s in body["services"]
                if isinstance(s, dict) and isinstance(s.get("id"), str) and isinstance(s.get("hook"), str)]
    return services


def choose_service(services: list[dict[str, Any]], hook: str, service_id: str | None,
                   base: str) -> dict[str, Any]:
    offered = ", ".join(f"{clean(s['id'])} ({clean(s['hook'])})" for s in services) or "nothing"
    if service_id is not None:
        for service in services:
            if service["id"] == service_id:
                if service["hook"] != hook:
                    other = clean(service["hook"])
                    raise FireError(f"service {service_id!r} at {base} is for hook {other!r}, not {hook!r}; "
                                    f"pass --hook {other}", EXIT_USAGE)
                return service
        raise FireError(f"{base} has no service {service_id!r}; it offers: {offered}")
    for service in services:
        if service["hook"] == hook:
            return service
    raise FireError(f"{base} offers no service for hook {hook!r}; it offers: {offered}")


def _templates(service: Mapping[str, Any]) -> dict[str, str]:
    prefetch = service.get("prefetch")
    if not isinstance(prefetch, dict):
        return {}
    return {k: v for k, v in prefetch.items() if isinstance(k, str) and isinstance(v, str)}


def fixture_request(fixture: dict[str, Any], hook: str, templates: dict[str, str], *, prefetch: bool,
                    fhir_server: str | None, warn: Callable[[str], None]) -> dict[str, Any]:
    """The hook request, prefetch filled for the service's templates; templates that are not
    FHIR queries this client can run over the fixture are left out (as a real client would)."""
    try:
        return build_request(fixture, hook, templates=templates, prefetch=prefetch, fhir_server=fhir_server)
    except ValueError:
        pass
    usable: dict[str, str] = {}
    for key, template in templates.items():
        try:
            build_request(fixture, hook, templates={key: template}, prefetch=prefetch)
        except ValueError:
            warn(f"prefetch key {clean(key)!r} left out: its template is not a FHIR read or search")
            continue
        usable[key] = template
    return build_request(fixture, hook, templates=usable, prefetch=prefetch, fhir_server=fhir_server)


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------

class Printer:
    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream = stream
        self.colour = colour

    def paint(self, text: str, style: str) -> str:
        return f"{_COLOURS[style]}{text}{_RESET}" if self.colour and style in _COLOURS else text

    def line(self, text: str = "") -> None:
        print(text, file=self.stream)


def card_id(card: Mapping[str, Any]) -> str:
    source = card.get("source")
    topic = source.get("topic") if isinstance(source, dict) else None
    code = topic.get("code") if isinstance(topic, dict) else None
    return clean(code) if isinstance(code, str) else "(no source.topic.code)"


def sort_cards(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Critical, then warning, then info, as an EHR shows them (stable within one indicator)."""
    return sorted(cards, key=lambda c: INDICATOR_ORDER.get(str(c.get("indicator")), 3))


def print_cards(out: Printer, cards: list[dict[str, Any]]) -> None:
    for number, card in enumerate(sort_cards(cards), start=1):
        indicator = clean(card.get("indicator", "?"))
        badge = out.paint(indicator.upper().ljust(8), indicator)
        out.line(f"{number}. {badge} {out.paint(card_id(card), 'bold')}")
        out.line(f"   {clean(card.get('summary', ''))}")
        source = card.get("source") if isinstance(card.get("source"), dict) else {}
        if source:
            url = f" <{clean(source['url'])}>" if source.get("url") else ""
            out.line(out.paint(f"   source: {clean(source.get('label', ''))}{url}", "dim"))
        suggestions = [s for s in card.get("suggestions", []) if isinstance(s, dict)]
        if suggestions:
            out.line("   suggestions:")
            for suggestion in suggestions:
                flag = " (recommended)" if suggestion.get("isRecommended") else ""
                actions = ", ".join(
                    f"{clean(a.get('type', '?'))} {clean(a.get('resourceId') or a.get('description') or '')}"
                    .strip() for a in suggestion.get("actions", []) if isinstance(a, dict))
                shown = f"  [{actions}]" if actions else ""
                out.line(f"     - {clean(suggestion.get('label', ''))}{flag}{shown}")
        reasons = [r for r in card.get("overrideReasons", []) if isinstance(r, dict)]
        if reasons:
            out.line("   override reasons:")
            for reason in reasons:
                out.line(f"     - {clean(reason.get('display') or reason.get('code', ''))} "
                         + out.paint(f"({clean(reason.get('code', ''))})", "dim"))
        links = [link for link in card.get("links", []) if isinstance(link, dict)]
        if links:
            out.line("   links:")
            for link in links:
                out.line(f"     - {clean(link.get('label', ''))} <{clean(link.get('url', ''))}>")
        out.line()


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------

def _fixtures_dir(args: argparse.Namespace) -> Path:
    if args.fixtures_dir:
        return Path(args.fixtures_dir)
    try:
        return Path(load_settings().FIXTURES_DIR)
    except SettingsError:
        return DEFAULT_FIXTURES_DIR


def _list_fixtures(args: argparse.Namespace) -> int:
    directory = _fixtures_dir(args)
    names = list_fixtures(directory)
    if not names:
        print(f"no fixtures in {directory}", file=sys.stderr)
        return EXIT_USAGE
    width = max(len(n) for n in names)
    for name in names:
        try:
            description = str(load_fixture(name, directory).get("description", ""))
        except (OSError, ValueError, KeyError):
            description = "(unreadable)"
        print(f"{name.ljust(width)}  {description}")
    return EXIT_OK


def _use_colour(choice: str, stream: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return stream.isatty()


def fire(args: argparse.Namespace) -> int:
    try:
        if args.list:
            return _list_fixtures(args)
        return _fire(args)
    except FireError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:  # e.g. `cds-service fire ... | head`
        _silence_stdout()
        return EXIT_OK


def _silence_stdout() -> None:
    # Python's recommended handling: point stdout at devnull so the exit-time flush does not fail.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _fire(args: argparse.Namespace) -> int:
    if not args.url or not args.fixture:
        raise FireError("give --url BASE and --fixture NAME (or --list to see the fixtures)", EXIT_USAGE)
    base = args.url.rstrip("/").removesuffix("/cds-services")
    if not base.startswith(("http://", "https://")):
        raise FireError(f"--url must be an http(s) base URL, not {args.url!r}", EXIT_USAGE)
    if args.fhir_server is not None and not args.fhir_server.startswith(("http://", "https://")):
        raise FireError("--fhir-server must be an http(s) URL", EXIT_USAGE)
    try:
        fixture = load_fixture(args.fixture, _fixtures_dir(args))
    except (KeyError, ValueError) as exc:
        raise FireError(str(exc.args[0] if exc.args else exc), EXIT_USAGE) from None
    signer = load_signer(args)
    out = Printer(sys.stdout, _use_colour(args.color, sys.stdout))

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    if args.no_prefetch and args.fhir_server is None:
        warn("--no-prefetch without --fhir-server: the service has no way to get the data and should "
             "answer 412")

    with requests.Session() as session:
        services = discover(session, base, signer, args.timeout)
        service = choose_service(services, args.hook, args.service_id, base)
        body = fixture_request(fixture, args.hook, _templates(service), prefetch=not args.no_prefetch,
                               fhir_server=args.fhir_server, warn=warn)
        url = f"{base}/cds-services/{service['id']}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if signer is not None:
            headers.update(signer.authorization(url))
        response, elapsed_ms = _request(session, "POST", url, args.timeout, headers=headers,
                                        data=json.dumps(body).encode("utf-8"))
    return _report(out, args, fixture, service, url, response, elapsed_ms, signer)


def _report(out: Printer, args: argparse.Namespace, fixture: Mapping[str, Any], service: Mapping[str, Any],
            url: str, response: requests.Response, elapsed_ms: float, signer: Signer | None) -> int:
    status = response.status_code
    if status == 401:
        raise _unauthorized("POST", url, signer)
    if 300 <= status < 400:
        raise _redirect("POST", url, response)
    if status == 412:
        raise FireError(f"POST {url} answered 412 Precondition Failed: the service could not get the data it "
                        f"needs (prefetch missing and no usable fhirServer): {_error_detail(response)}")
    if status != 200:
        raise FireError(f"POST {url} answered HTTP {status} ({_error_detail(response)}); "
                        "expected 200 with cards")
    try:
        result = response.json()
    except ValueError:
        raise FireError(f"POST {url} answered 200 with {_content_type(response)}, not JSON") from None
    problem = first_error("response.json", result)
    if problem is not None:
        raise FireError(f"POST {url}: the response violates the CDS Hooks response schema: {problem}")

    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        cards = result["cards"]
        header = (f"{clean(service['id'])} ({args.hook}) · POST {url} → {status} in {elapsed_ms:.0f} ms · "
                  f"{len(cards)} card{'s' if len(cards) != 1 else ''}")
        out.line(out.paint(header, "bold"))
        out.line()
        print_cards(out, cards)
        ids = [card_id(c) for c in sort_cards(cards)]
        out.line(f"card ids: {', '.join(ids) if ids else '(none)'}")
        expected = _expected(fixture, args.hook)
        if expected is not None:
            same = expected == ids
            verdict = out.paint("matches", "green") if same else out.paint("differs", "red")
            out.line(f"fixture expects: {', '.join(expected) if expected else '(none)'} ({verdict})")
    if args.check:
        expected = _expected(fixture, args.hook)
        ids = [card_id(c) for c in sort_cards(result["cards"])]
        if expected != ids:
            raise FireError(f"--check: card ids {ids} differ from the fixture's expected {expected}")
    return EXIT_OK


def _expected(fixture: Mapping[str, Any], hook: str) -> list[str] | None:
    expected = fixture.get("expected")
    ids = expected.get(hook) if isinstance(expected, dict) else None
    return [str(i) for i in ids] if isinstance(ids, list) else None
