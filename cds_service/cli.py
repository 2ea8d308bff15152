"""``cds-service``: the whole command line — serve, fire, keys; and (registered by ``authoring``)
cards check/approve/export, report, fixtures build."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from cds_service.devtools import fire, keys
from cds_service.logs import configure_logging
from cds_service.protocol import HOOKS
from cds_service.settings import DEV_OVERRIDES, SettingsError, load_settings

log = logging.getLogger("cds_service.cli")

# The production server configuration, installed with the package (no checkout needed).
GUNICORN_CONFIG = "python:cds_service.gunicorn_conf"


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = dict(DEV_OVERRIDES) if args.dev else {}
    try:
        settings = load_settings(overrides)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.AUTH == "off" and not args.dev:
        print("error: AUTH=off is refused outside development; use `cds-service serve --dev` "
              "or configure CDS_TRUSTED_ISSUERS", file=sys.stderr)
        return 2
    host, port = args.host, args.port
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    base = f"http://{shown_host}:{port}"
    if args.dev:
        from cds_service import create_app

        app = create_app(overrides)
        print(f"ivig-cds (development profile: no client auth, all content, CORS *)\n"
              f"  discovery: {base}/cds-services\n  demo:      {base}/demo\n  review:    {base}/review\n",
              flush=True)
        from werkzeug.serving import run_simple

        run_simple(host, port, app, threaded=True, use_reloader=False, use_debugger=False)
        return 0
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["gunicorn", "--config", GUNICORN_CONFIG, "--bind", f"{host}:{port}", "cds_service.wsgi:app"]
    print(f"ivig-cds: discovery at {base}/cds-services", flush=True)
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
    return 0


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="serve the CDS service")
    serve.add_argument("--dev", action="store_true",
                       help="development profile: no client auth, all content, CORS *, demo page, SQLite")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=_serve)


def _add_fire(subparsers: Any) -> None:
    fire_parser = subparsers.add_parser(
        "fire", help="send a fixture patient's hook request to a CDS service and print the cards",
        description="Act as a CDS client: discover BASE/cds-services, send a fixture patient's request for "
                    "--hook (prefetch filled for the discovered templates), validate the response and print "
                    "the cards.",
        epilog="Exit codes: 0 valid response; 1 protocol error (wrong status, not JSON, schema violation, "
               "not a CDS service); 2 usage error; 3 service unreachable.")
    fire_parser.add_argument("--url", metavar="BASE", help="base URL of the CDS service (the part before "
                             "/cds-services), e.g. http://127.0.0.1:8080")
    fire_parser.add_argument("--fixture", metavar="NAME", help="fixture file name without .json (see --list)")
    fire_parser.add_argument("--list", action="store_true", help="list the fixtures and exit")
    fire_parser.add_argument("--hook", choices=HOOKS, default="order-select")
    fire_parser.add_argument("--service-id", metavar="ID", help="call this service id (default: the first "
                             "service discovered for --hook)")
    fire_parser.add_argument("--no-prefetch", action="store_true",
                             help="send no prefetch: the service must query --fhir-server itself")
    fire_parser.add_argument("--fhir-server", metavar="URL", help="fhirServer to put in the request")
    fire_parser.add_argument("--jwt-key", metavar="PEM", help="sign requests with this private key "
                             "(make one with `cds-service keys new`)")
    fire_parser.add_argument("--iss", help="JWT issuer (with --jwt-key)")
    fire_parser.add_argument("--kid", help="JWT key id (with --jwt-key)")
    fire_parser.add_argument("--alg", choices=keys.ALGORITHMS, help="JWT algorithm (default: from the key type)")
    fire_parser.add_argument("--jku", metavar="URL", help="jku header: where the service may fetch the JWKS")
    fire_parser.add_argument("--json", action="store_true", help="print the validated response JSON only")
    fire_parser.add_argument("--check", action="store_true",
                             help="exit 1 when the card ids differ from the fixture's expected ids")
    fire_parser.add_argument("--timeout", type=float, default=fire.DEFAULT_TIMEOUT_S, metavar="SECONDS",
                             help=f"per-request timeout (default {fire.DEFAULT_TIMEOUT_S:g})")
    fire_parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                             help="colour the cards (default: when stdout is a terminal)")
    fire_parser.add_argument("--fixtures-dir", metavar="DIR",
                             help="fixtures directory (default: CDS_FIXTURES_DIR or the package's fixtures)")
    fire_parser.set_defaults(func=fire.fire)


def _add_keys(subparsers: Any) -> None:
    keys_parser = subparsers.add_parser("keys", help="CDS client signing keys")
    keys_sub = keys_parser.add_subparsers(dest="keys_command", required=True)
    new_parser = keys_sub.add_parser(
        "new", help="make a client key pair; print its JWKS and a TRUSTED_ISSUERS entry",
        description="Write a new private key (mode 0600) and print the public JWKS and the TRUSTED_ISSUERS "
                    "entry a CDS service needs to trust requests signed with it.")
    new_parser.add_argument("--alg", choices=keys.ALGORITHMS, default="ES384")
    new_parser.add_argument("--kid", help="key id (default: a random one)")
    new_parser.add_argument("--out", default=keys.DEFAULT_KEY_FILE, metavar="PEM",
                            help=f"private key file to write (default {keys.DEFAULT_KEY_FILE})")
    new_parser.add_argument("--iss", default=keys.DEFAULT_ISS, help=f"issuer for the TRUSTED_ISSUERS entry "
                            f"(default {keys.DEFAULT_ISS}; use your client's own)")
    new_parser.add_argument("--jku", metavar="URL",
                            help="also allow this jku URL in the TRUSTED_ISSUERS entry")
    new_parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    new_parser.add_argument("--json", action="store_true", help="print one JSON object (key_file, alg, kid, "
                            "iss, jwks, trusted_issuers)")
    new_parser.set_defaults(func=keys.keys_new)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description="ivig-cds: CDS Hooks 2.0 service for IVIG "
                                     "in antisynthetase-syndrome interstitial lung disease")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)

    from cds_service import authoring as governance

    governance.add_commands(sub)
    _add_fire(sub)
    _add_keys(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # The service's own set-up (one redacting handler); ``serve`` raises the level from the settings.
    configure_logging("WARNING")
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
