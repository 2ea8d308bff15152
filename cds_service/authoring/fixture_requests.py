"""``cds-service fixtures build``: the full hook request (context and prefetch) of every fixture, one
``fixtures/requests/<name>.<hook>.json`` each, for integrators to replay with curl or their own client.

This builds requests from fixtures, so it belongs with ``devtools/`` (``devtools/fixtures.py`` holds
the request builder it calls); it sits here until it is moved.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path

from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.engine.services import build_services, default_services
from cds_service.protocol import HOOKS
from cds_service.terminology import Terminology


def fixture_requests(fixtures_dir: str | Path, cards_dir: str | Path | None = None) -> dict[str, str]:
    """``<name>.<hook>.json`` -> the full request (with prefetch) as JSON text, for every fixture.

    Deterministic: the hookInstance is derived from the name and hook, and dates are not shifted (each
    request is built as of the fixture's own ``today``).
    """
    services = (build_services(Terminology.load(Path(cards_dir) / "valuesets")) if cards_dir is not None
                else default_services())
    templates = {s.hook: dict(s.prefetch) for s in services.values()}
    files: dict[str, str] = {}
    for name in list_fixtures(Path(fixtures_dir)):
        fixture = load_fixture(name, Path(fixtures_dir))
        written = date.fromisoformat(str(fixture["today"]))
        for hook in HOOKS:
            instance = str(uuid.uuid5(uuid.NAMESPACE_URL,
                                      f"https://ivig-cds.example.org/fixtures/{name}/{hook}"))
            request = build_request(fixture, hook, templates=templates[hook], today=written,
                                    hook_instance=instance)
            files[f"{name}.{hook}.json"] = json.dumps(request, indent=2, ensure_ascii=False) + "\n"
    return files


def stale_requests(fixtures_dir: str | Path, out_dir: Path, cards_dir: str | Path | None = None) -> list[str]:
    """Names of the files in ``out_dir`` that a build would write or delete (sorted, written first)."""
    expected = fixture_requests(fixtures_dir, cards_dir)
    stale = sorted(n for n, text in expected.items()
                   if not (out_dir / n).is_file() or (out_dir / n).read_text(encoding="utf-8") != text)
    extra = sorted(p.name for p in out_dir.glob("*.json") if p.name not in expected)
    return stale + extra


def build_fixture_requests(fixtures_dir: str | Path, out_dir: str | Path | None = None,
                           cards_dir: str | Path | None = None) -> list[Path]:
    """Write every request file into ``out_dir`` (default ``<fixtures_dir>/requests``); delete stale ones."""
    out = Path(out_dir) if out_dir is not None else Path(fixtures_dir) / "requests"
    out.mkdir(parents=True, exist_ok=True)
    files = fixture_requests(fixtures_dir, cards_dir)
    for stale in out.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = out / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
