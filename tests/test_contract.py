"""The rules/cards contract lives in one module: no finding key, card id or template variable is
written as a string literal anywhere else in the service's Python."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

from cds_service.clinical import contract
from cds_service.clinical.contract import TEMPLATE_NAMES, CardId, Finding, RenderVariables, TemplateVariables

PACKAGE = Path(contract.__file__).resolve().parent.parent
CONTRACT = Path(contract.__file__).resolve()
NAMES = {str(f) for f in Finding} | {str(c) for c in CardId} | set(TEMPLATE_NAMES)


def _literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            and node.value in NAMES]


def test_no_contract_name_is_a_literal_outside_the_contract() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {value!r}"
                 for path in sorted(PACKAGE.rglob("*.py")) if path.resolve() != CONTRACT
                 for line, value in _literals(path)]
    assert not offenders, "contract names written as literals (use cds_service.clinical.contract):\n" + \
        "\n".join(offenders)


def test_the_scan_finds_a_literal_when_there_is_one(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""doc"""\nx = {"rp-ild", "weight_kg"}\ny = "ivig-safety"\nz = "not a name"\n')
    assert sorted(v for _, v in _literals(sample)) == ["ivig-safety", "rp-ild", "weight_kg"]


def test_every_card_file_is_a_card_id_and_every_card_id_has_a_file() -> None:
    cards_dir = PACKAGE.parent / "cards"
    files = {p.stem for p in cards_dir.glob("*.md") if p.name.upper() != "README.MD" and not p.name.startswith("_")}
    assert files == {str(c) for c in CardId}


def test_template_names_are_the_fields_of_the_typed_structures() -> None:
    names = {f.name for f in fields(TemplateVariables)} | {f.name for f in fields(RenderVariables)}
    assert names | {contract.LOOP_ITEM} == set(TEMPLATE_NAMES)


def test_findings_name_is_a_render_variable() -> None:
    assert contract.FINDINGS_NAME in {f.name for f in fields(RenderVariables)}


def test_no_module_of_the_service_is_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"split these modules by job (issue 11): {long}"
