"""The authoring commands of ``cds-service``: ``cards check|approve|export``, ``report`` and
``fixtures build``.  ``add_commands`` adds them to the main parser (``cds_service/cli.py``)."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from cds_service.authoring import export as export_job
from cds_service.authoring import report as report_job
from cds_service.authoring.approve import approve
from cds_service.authoring.check import check, format_report
from cds_service.authoring.fixture_requests import build_fixture_requests, stale_requests
from cds_service.authoring.problems import ERROR, GovernanceError
from cds_service.engine.content import ContentError
from cds_service.settings import Settings, load_settings

Subparsers = argparse._SubParsersAction  # argparse's type for add_subparsers()' result
# What reading the store can raise: a down server or a bad URL (SQLAlchemy), a missing driver, a path.
_STORE_ERRORS = (SQLAlchemyError, ImportError, OSError)


def _settings() -> Settings:
    return load_settings()


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _cmd_check(args: argparse.Namespace) -> int:
    settings = _settings()
    cards = Path(args.cards_dir or settings.CARDS_DIR)
    fixtures = Path(args.fixtures_dir or settings.FIXTURES_DIR)
    problems = check(cards, fixtures)
    print(format_report(problems, cards, fixtures))
    return 1 if any(p.severity == ERROR for p in problems) else 0


def _cmd_approve(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        result = approve(args.cards_dir or settings.CARDS_DIR, args.card_id, args.reviewer,
                         fixtures_dir=args.fixtures_dir or settings.FIXTURES_DIR, role=args.role)
    except GovernanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"approved {result.card_id} by {result.reviewer} ({result.role}) on {result.date.isoformat()} "
          f"(content hash {result.content_hash}) -> {result.path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        path = export_job.export(args.cards_dir or settings.CARDS_DIR, args.fixtures_dir or settings.FIXTURES_DIR,
                                 args.out, args.format)
    except (GovernanceError, ContentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"review packet ({args.format}) written to {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    settings = _settings()
    try:
        rows = report_job.report_rows(args.database_url or settings.DATABASE_URL, args.since,
                                      args.cards_dir or settings.CARDS_DIR)
    except _STORE_ERRORS as exc:  # the store is down or the URL is wrong: say so, without the URL
        print(f"error: the report could not be read from the store ({type(exc).__name__})", file=sys.stderr)
        return 1
    sys.stdout.write(report_job.format_rows(rows, args.format))
    return 0


def _cmd_fixtures_build(args: argparse.Namespace) -> int:
    fixtures = Path(args.fixtures_dir or _settings().FIXTURES_DIR)
    out = Path(args.out_dir) if args.out_dir else fixtures / "requests"
    if args.check:
        stale = stale_requests(fixtures, out, args.cards_dir)
        for name in stale:
            print(f"out of date: {out / name}")
        return 1 if stale else 0
    written = build_fixture_requests(fixtures, out, args.cards_dir)
    print(f"{len(written)} request files in {out}")
    return 0


def add_cards_commands(subparsers: Subparsers) -> None:
    """``cards check|approve|export``."""
    cards = subparsers.add_parser("cards", help="check, approve and export the card content")
    cards_sub = cards.add_subparsers(dest="cards_command", required=True)

    check_p = cards_sub.add_parser("check", help="validate all content; non-zero exit on any error")
    check_p.add_argument("--cards-dir", help="content directory (default: CDS_CARDS_DIR or ./cards)")
    check_p.add_argument("--fixtures-dir",
                         help="fixtures directory (default: CDS_FIXTURES_DIR or ./fixtures)")
    check_p.set_defaults(func=_cmd_check)

    approve_p = cards_sub.add_parser("approve", help="record an approval of a card's current text")
    approve_p.add_argument("card_id", help="the card id, e.g. ivig-safety")
    approve_p.add_argument("--reviewer", required=True, help="the clinical reviewer's name")
    approve_p.add_argument("--role", required=True,
                           help="the reviewer's role, shown to clinicians (e.g. \"Consultant rheumatologist\")")
    approve_p.add_argument("--cards-dir", help="content directory (default: CDS_CARDS_DIR or ./cards)")
    approve_p.add_argument("--fixtures-dir", help="fixtures directory used by the check")
    approve_p.set_defaults(func=_cmd_approve)

    export_p = cards_sub.add_parser("export", help="write the review packet (one self-contained HTML file)")
    export_p.add_argument("--out", required=True, help="output file, e.g. review.html")
    export_p.add_argument("--format", choices=export_job.FORMATS, default="html")
    export_p.add_argument("--cards-dir", help="content directory (default: CDS_CARDS_DIR or ./cards)")
    export_p.add_argument("--fixtures-dir", help="fixtures directory (representative renderings)")
    export_p.set_defaults(func=_cmd_export)


def add_report_command(subparsers: Subparsers) -> None:
    """``report --since``."""
    report_p = subparsers.add_parser(
        "report", help="per card and content version: shown, shadow, suppressed, withheld, accepted, overridden",
        description="Per card and content version since --since: shown; shadow (would have been shown in "
                    "shadow mode); suppressed by decision memory; withheld (disabled, unapproved); accepted; "
                    "overridden, by reason (displays from the card's own override reasons when the client "
                    "sent only a code); override rate = overridden / shown.")
    report_p.add_argument("--since", required=True, type=_iso_date, help="YYYY-MM-DD (UTC)")
    report_p.add_argument("--format", choices=report_job.FORMATS, default="text")
    report_p.add_argument("--database-url", help="SQLAlchemy URL (default: CDS_DATABASE_URL)")
    report_p.add_argument("--cards-dir", help="card content, for override reason displays "
                          "(default: CDS_CARDS_DIR or the package's cards)")
    report_p.set_defaults(func=_cmd_report)


def add_fixtures_commands(subparsers: Subparsers) -> None:
    """``fixtures build [--check]``."""
    fixtures = subparsers.add_parser("fixtures", help="fixture tooling")
    fixtures_sub = fixtures.add_subparsers(dest="fixtures_command", required=True)
    build_p = fixtures_sub.add_parser("build",
                                      help="write fixtures/requests/<name>.<hook>.json (full requests)")
    build_p.add_argument("--fixtures-dir",
                         help="fixtures directory (default: CDS_FIXTURES_DIR or ./fixtures)")
    build_p.add_argument("--out-dir", help="output directory (default: <fixtures-dir>/requests)")
    build_p.add_argument("--cards-dir",
                         help="value sets for the prefetch templates (default: the shipped cards)")
    build_p.add_argument("--check", action="store_true", help="only report files that are out of date")
    build_p.set_defaults(func=_cmd_fixtures_build)


def add_commands(subparsers: Subparsers) -> None:
    """``cards check|approve|export``, ``report`` and ``fixtures build`` on the ``cds-service`` CLI."""
    add_cards_commands(subparsers)
    add_report_command(subparsers)
    add_fixtures_commands(subparsers)
