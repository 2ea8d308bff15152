"""The README is what a new user reads first: it must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from cds_service.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_settings_table_matches_the_settings() -> None:
    block = re.search(r"<!-- settings-table:start -->\n(.*)\n<!-- settings-table:end -->", README, re.S)
    assert block, "README lost its settings table markers"
    assert block.group(1) == settings_table(), "regenerate the README settings table (cds_service.settings)"
    for name in Settings.__dataclass_fields__:
        assert f"CDS_{name}" in block.group(1)


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_code_map_names_every_package_and_only_what_exists() -> None:
    block = re.search(r"<!-- code-map:start -->\n(.*)\n<!-- code-map:end -->", README, re.S)
    assert block, "README lost its code map markers"
    named: set[str] = set()
    for row in block.group(1).splitlines()[2:]:
        first_cell = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", first_cell)
        directory = ""
        for path in paths:
            # `cds_service/cli.py`, `settings.py`: later names share the first one's folder.
            path = path if "/" in path.rstrip("/") or not directory else directory + path
            directory = path.rsplit("/", 1)[0] + "/" if "/" in path.rstrip("/") else ""
            assert (ROOT / path).exists(), f"the code map names {path}, which does not exist"
            named.add(path.rstrip("/"))
    packages = {f"cds_service/{p.name}" for p in (ROOT / "cds_service").iterdir()
                if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages <= named, f"packages missing from the README code map: {sorted(packages - named)}"
