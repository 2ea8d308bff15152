"""``cds-service``: serve, cards check/approve/export, report, fire, keys, fixtures."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from cds_service.settings import DEV_OVERRIDES, SettingsError, load_settings

log = logging.getLogger("cds_service.cli")


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

    from cds_service.settings import PROJECT_ROOT

    sys.argv = ["gunicorn", "--config", str(PROJECT_ROOT / "gunicorn.conf.py"), "--bind", f"{host}:{port}",
                "cds_service.wsgi:app"]
    print(f"ivig-cds: discovery at {base}/cds-services", flush=True)
    WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-service", description="ivig-cds: CDS Hooks 2.0 service for IVIG "
                                     "in antisynthetase-syndrome interstitial lung disease")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the CDS service")
    serve.add_argument("--dev", action="store_true",
                       help="development profile: no client auth, all content, CORS *, demo page, SQLite")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.set_defaults(func=_serve)

    from cds_service import authoring as governance

    governance.add_commands(sub)
    try:
        from cds_service.devtools import fire
    except ImportError:  # pragma: no cover - optional during development
        pass
    else:
        fire.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
