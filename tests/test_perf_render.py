"""Rendering made fast (issue 16, item 4) renders the same bytes as before.

The reference is the renderer on stock Jinja: a fresh ``Renderer`` whose templates are plain
``jinja2.sandbox.SandboxedEnvironment`` templates escaping with the regular-expression ``md_escape``
written before the change.  Every card of every fixture patient (both hooks, through the Flask app with
CONTENT_POLICY all), the synthetic contexts of ``cards check`` and hostile values render the same, on a
first call and on repeated (cached) calls; cards differ when the facts differ; nothing a card carries
is shared with the next card; the caches stay bounded.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from cds_service.authoring.renderings import (
    _content_findings,
    _synthetic_facts,
    _synthetic_notes,
    synthetic_variables,
)
from cds_service.clinical.contract import FINDINGS, CardId, TemplateVariables
from cds_service.clinical.model import DataNote, Decision, Fact
from cds_service.devtools.fixtures import build_request, list_fixtures, load_fixture
from cds_service.engine.content import Catalog, Renderer, make_environment, make_text_environment, md_escape
from cds_service.engine.content import render as render_module
from cds_service.engine.content.compiled import CardTemplate
from cds_service.engine.services import default_services
from cds_service.protocol.card import Card
from cds_service.settings import DEFAULT_CARDS_DIR

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
BASE = "https://cds.example.org"

# -- the reference: escaping and templating as written before the change ------------------------------
_OLD_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_OLD_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def old_md_escape(value: Any) -> str:
    text = str(value)
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    text = _OLD_MD_SPECIAL.sub(r"\\\1", text)
    return " ".join(text.split())


def _old_finalize(value: Any) -> Any:
    if isinstance(value, Markup):
        return value
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return old_md_escape(value)


def _old_plain(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return " ".join(_OLD_CONTROL.sub(" ", str(value)).split())


def stock_environment(finalize: Callable[[Any], Any]) -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, finalize=finalize,
                                trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False)


def reference_renderer() -> Renderer:
    """A fresh renderer over the cards loaded again, every template a stock Jinja template."""
    catalog = Catalog.load(DEFAULT_CARDS_DIR)
    env, text_env = stock_environment(_old_finalize), stock_environment(_old_plain)
    for card in catalog.cards.values():
        card.summary_template = text_env.from_string(str(card.meta.get("summary", "")))
        card.body_template = env.from_string(card.body)
    catalog.env, catalog.text_env = env, text_env
    for key in list(catalog.shared_templates):
        catalog.shared_templates[key] = (text_env if key == "reviewed_label" else env).from_string(
            str(catalog.shared[key]))
    assert not any(isinstance(t, CardTemplate) for t in catalog.shared_templates.values())
    return Renderer(catalog)


def comparable(card: Card) -> dict[str, Any]:
    """The card's JSON and full summary without the uuids (fresh on every call)."""
    body = {k: v for k, v in card.to_json().items() if k != "uuid"}
    if "suggestions" in body:
        body["suggestions"] = [{k: v for k, v in s.items() if k != "uuid"} for s in body["suggestions"]]
    return {"json": body, "full_summary": card.full_summary}


Call = tuple[tuple[Any, ...], dict[str, Any]]


# -- every fixture patient through the app ------------------------------------------------------------
@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Flask, list[tuple[Call, Card]]]]:
    """Every card the app rendered for every fixture on both hooks: the render call and its card."""
    from cds_service import create_app

    app = create_app({"AUTH": "off", "PROFILE": "development", "CONTENT_POLICY": "all",
                      "DATABASE_URL": "sqlite://"})
    app.testing = True
    seen: list[tuple[Call, Card]] = []
    original = Renderer.render

    def spy(self: Renderer, *args: Any, **kwargs: Any) -> Card:
        card = original(self, *args, **kwargs)
        seen.append(((args, kwargs), card))
        return card

    Renderer.render = spy  # type: ignore[method-assign]
    try:
        client = app.test_client()
        services = {s.hook: s for s in default_services().values()}
        for name in list_fixtures(FIXTURES):
            fixture = load_fixture(name, FIXTURES)
            for hook, service in services.items():
                # once with full prefetch, once without the PFTs (a data note on most cards)
                for prefetch in (True, [k for k in service.prefetch if k != "pulmonaryFunction"]):
                    body = build_request(fixture, hook, templates=service.prefetch, prefetch=prefetch)
                    response = client.post(f"/cds-services/{service.id}", json=body)
                    assert response.status_code in (200, 412), (name, hook, response.status_code)
    finally:
        Renderer.render = original  # type: ignore[method-assign]
    assert len(seen) > 100
    yield app, seen
    app.extensions["cds_runtime"].store.close()


def test_every_fixture_card_renders_as_the_stock_renderer_does(
        served: tuple[Flask, list[tuple[Call, Card]]]) -> None:
    app, seen = served
    renderer: Renderer = app.extensions["cds_runtime"].renderer
    reference, fresh = reference_renderer(), Renderer(renderer.catalog)
    for (args, kwargs), card in seen:
        expected = comparable(reference.render(*args, **kwargs))
        assert comparable(card) == expected
        assert comparable(fresh.render(*args, **kwargs)) == expected
        again = renderer.render(*args, **kwargs)  # every cache of the app's renderer warm
        assert comparable(again) == expected
        assert again.uuid != card.uuid
        assert [s["uuid"] for s in again.suggestions] != [s["uuid"] for s in card.suggestions] \
            or not card.suggestions


def test_data_notes_and_detail_fitting_are_exercised(served: tuple[Flask, list[tuple[Call, Card]]]) -> None:
    _, seen = served
    details = [card.detail for _, card in seen]
    assert any("Could not be checked" in d for d in details)
    assert any(card.suggestions for _, card in seen)


# -- synthetic and hostile contexts ----------------------------------------------------------------
HOSTILE = ["a*b_c`d[e]f|g~h\\i", "<script>&amp;</script>", "  many   spaces\n\tand\x0btabs ", "\x00ctrl\x1f\x7f",
           "\u00a0nbsp\u2028ls\x85nel", "", "ÄÖÜ ünïcode — “quotes”", "[acr-chest-2024] [record]",
           "{{ not a template }}", "x" * 300, "Observation/a b", "1234.56 mL/min/{1.73_m2} (low)"]
STATUS_KEYS = [None, "strong-positive", "positive", "unknown", "flag-high", "not-a-key", ""]


def hostile_facts() -> list[Fact]:
    facts = []
    for i in range(len(HOSTILE) * len(STATUS_KEYS)):
        text = HOSTILE[i % len(HOSTILE)]
        facts.append(Fact(label=text or "L", value_key=STATUS_KEYS[i % len(STATUS_KEYS)],
                          value_text=HOSTILE[(i * 5) % len(HOSTILE)] if i % 2 else None,
                          date=None if i % 3 == 0 else f"2026-01-0{i % 9 + 1}",
                          reference=None if i % 4 == 0 else f"Observation/{text[:20]}"))
    facts += [Fact("Strongly positive", "strong-positive", "STRONGLY POSITIVE "), Fact("k", "positive", "positive")]
    facts += [Fact(label, reference="Condition/1", value_text="t") for label in ("dup", "dup2", "dup")]
    return facts


def synthetic_calls(catalog: Catalog) -> Iterator[Call]:
    """The contexts ``cards check`` renders, then hostile facts and notes in lists of every length."""
    maximal = synthetic_variables(catalog.terminology, True)
    empty = synthetic_variables(catalog.terminology, False)
    facts, notes = _synthetic_facts(catalog.terminology), _synthetic_notes(catalog)
    notes += [DataNote("skipped-resource", "unknown-reason", None), DataNote("failed-key", "not-a-key"),
              DataNote("skipped-resource", "not-a-resource", "Observation/a*b_c")]
    hostile = hostile_facts()
    for card_id, card in catalog.cards.items():
        tested = sorted(_content_findings(card))
        variants: list[tuple[TemplateVariables, set[str], list[Fact], list[DataNote]]] = [
            (maximal, set(FINDINGS) | set(tested), facts, notes), (empty, set(), [], []),
            (maximal, set(), facts, notes)]
        variants += [(maximal, {f}, facts[:2], notes[:1]) for f in tested]
        variants += [(empty, {f}, facts[:1], notes[-1:]) for f in tested]
        for size in (1, 3, 7, len(hostile)):
            variants += [(maximal if size % 2 else empty, {"rp-ild"} if start % 2 else set(),
                          hostile[start:start + size], notes[: start % 4]) for start in range(0, len(hostile), size)]
        for variables, findings, used, data_notes in variants:
            decision = Decision(CardId(card_id), list(used), set(findings))  # type: ignore[arg-type]
            yield ((decision, variables, list(data_notes), BASE, "all"),
                   {"patient_id": "x" * 64 if used else None, "fired": (card_id,) if data_notes else ()})


def test_synthetic_and_hostile_contexts_render_as_the_stock_renderer_does() -> None:
    reference = reference_renderer()
    renderer = Renderer(Catalog.load(DEFAULT_CARDS_DIR))
    calls = list(synthetic_calls(renderer.catalog))
    assert len(calls) > 500
    first = [comparable(renderer.render(*a, **k)) for a, k in calls]
    assert any("more on record" in c["json"]["detail"] for c in first)  # the detail was fitted
    assert [comparable(reference.render(*a, **k)) for a, k in calls] == first
    assert [comparable(renderer.render(*a, **k)) for a, k in reversed(calls)] == first[::-1]  # cached


def test_a_fact_that_differs_renders_differently() -> None:
    renderer, reference = Renderer(Catalog.load(DEFAULT_CARDS_DIR)), reference_renderer()
    base = Fact("Anti-PL-7 antibody", "strong-positive", "Strongly positive", "2026-11-09", "Observation/ab-1")
    variants = [base, Fact(base.label, "positive", base.value_text, base.date, base.reference),
                Fact(base.label, base.value_key, "Positive", base.date, base.reference),
                Fact(base.label, base.value_key, base.value_text, "2026-11-10", base.reference),
                Fact(base.label, base.value_key, base.value_text, None, base.reference),
                Fact(base.label, base.value_key, base.value_text, base.date, "Observation/ab-2"),
                Fact("Anti-PL-12 antibody", base.value_key, base.value_text, base.date, base.reference)]
    lines = set()
    for compact in (False, True):
        for fact in variants:
            line = renderer.render_fact(fact, compact=compact)
            assert line == renderer.render_fact(fact, compact=compact) == reference.render_fact(fact, compact=compact)
            lines.add(line)
    assert len(lines) == 2 * len(variants) - 1  # compact drops only the reference: two variants meet
    variables = synthetic_variables(renderer.catalog.terminology, True)
    details = {renderer.render(Decision(CardId.ILD_MONITORING, [fact]), variables, [], BASE, "all").detail
               for fact in variants}
    assert len(details) == len(variants)


def test_a_value_that_is_not_a_string_is_rendered_never_cached() -> None:
    renderer, reference = Renderer(Catalog.load(DEFAULT_CARDS_DIR)), reference_renderer()
    for value in (1, 1.0, True):  # equal as keys; rendered "1", "1.0", "True"
        fact = Fact("Count", None, value, None, None)  # type: ignore[arg-type]
        assert renderer.render_fact(fact) == reference.render_fact(fact)
    assert renderer._fact_lines == {}


# -- the pieces against their reference -----------------------------------------------------------
def random_texts(seed: int, count: int, alphabet: str) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(count)]


def test_md_escape_is_the_regular_expression_escape() -> None:
    texts = HOSTILE + random_texts(1, 3000, "ab &<>\\`*_[]|~#-+ \t\n\r\x0b\x0c\x1c\x85\xa0\u2028é—") + ["&amp;", "\\\\"]
    for text in texts:
        assert md_escape(text) == old_md_escape(text), repr(text)
    for value in (1, 2.5, None, True, Markup("<b>*x*</b>"), ["a_b"]):
        assert md_escape(value) == old_md_escape(value)


def test_citations_are_numbered_as_the_regular_expression_groups_them() -> None:
    renderer = Renderer(Catalog.load(DEFAULT_CARDS_DIR))
    numbers = renderer._numbers("ivig-not-first-line")
    keys = list(numbers)[:3] + ["expert-opinion", "record", "unknown-key", "A-B"]
    pieces = [f"[{k}]" for k in keys] + [" ", "\t", "  ", "\n", "(", ")", "x", "[", "]", "- ", "\\"]
    rng = random.Random(7)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 14))) for _ in range(4000)]
    expert = "(expert opinion)"

    def stock(text: str, expert: str) -> str:
        def replace(match: re.Match[str]) -> str:
            found = re.findall(r"\[([a-z0-9][a-z0-9-]*[a-z0-9])\]", match.group(0))
            shown = [str(numbers[k]) for k in dict.fromkeys(found) if k in numbers]
            out = f" [{', '.join(shown)}]" if shown else ""
            return out + (f" {expert}" if "expert-opinion" in found and expert else "")

        return render_module._CITATION_GROUP.sub(replace, text)

    for text in texts:
        for with_expert in (expert, ""):
            assert renderer.number_citations("ivig-not-first-line", text, with_expert) == stock(text, with_expert), \
                repr(text)


TINY_TEMPLATES = [
    "plain text", "", "{{ a }}", " {{ a }} ", "x{{ a }}y{{ b }}z", "{% if a %}A{% endif %}",
    "{% if a %}A{% elif b %}B{% else %}C{% endif %}", "{% if a %}{% if b %}AB{% else %}A{% endif %}{% endif %}",
    "- **{{ a }}**\n{% if b %}\n  {{ b }}\n{% endif %}\n", "{{ a | upper }}", "{% if not a %}n{% endif %}",
    "{{ a.b }}", "{{ self }}", "{% for x in c %}{{ x }}{% endfor %}", "{{ range }}", "{{ missing }}",
    "{% if missing %}m{% endif %}", "{% raw %}{{ a }}{% endraw %}", "{{ 'k' }}{{ 3 }}",
]
TINY_VALUES: list[dict[str, Any]] = [
    {"a": "v*_", "b": "", "c": [1, 2]}, {"a": None, "b": 0, "c": []}, {"a": 1.5, "b": Markup("<i>"), "c": ["<"]},
    {"a": False, "b": "  spaced\tout  ", "c": [None]}, {"a": True, "b": 3, "c": ["[x]"]}, {"b": "no a"},
]


def outcome(render: Callable[[dict[str, Any]], str], values: dict[str, Any]) -> Any:
    """What a template renders, or the error it raises."""
    try:
        return render(values)
    except TemplateError as exc:
        return (type(exc), str(exc))


@pytest.mark.parametrize("source", TINY_TEMPLATES)
def test_a_card_template_renders_as_jinja_does(source: str) -> None:
    for ours, stock in ((make_environment(), stock_environment(_old_finalize)),
                        (make_text_environment(), stock_environment(_old_plain))):
        fast, plain = ours.from_string(source), stock.from_string(source)
        assert isinstance(fast, CardTemplate)
        for values in TINY_VALUES:
            expected = outcome(plain.render, values)
            assert outcome(fast.render_values, values) == expected, (source, values)
            assert outcome(lambda v: fast.render(**v), values) == expected, (source, values)


# -- what a served card carries is its own -------------------------------------------------------
def test_a_served_card_shares_nothing_with_the_next(served: tuple[Flask, list[tuple[Call, Card]]]) -> None:
    app, seen = served
    renderer: Renderer = app.extensions["cds_runtime"].renderer
    call = next(call for call, card in seen if card.suggestions and any(
        "resource" in a for s in card.suggestions for a in s.get("actions", [])))
    first = renderer.render(*call[0], **call[1])
    expected = copy.deepcopy(comparable(renderer.render(*call[0], **call[1])))
    first.source["topic"]["display"] = "changed"
    first.links[0]["label"] = "changed"
    first.override_reasons.clear()
    for suggestion in first.suggestions:
        suggestion["label"] = "changed"
        for action in suggestion["actions"]:
            if "resource" in action:
                action["resource"]["code"]["text"] = "changed"
                action["resource"]["reasonCode"].append({"text": "changed"})
    assert comparable(renderer.render(*call[0], **call[1])) == expected


def test_the_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_module, "FACT_LINES_MAX", 8)
    monkeypatch.setattr(render_module, "LINKS_MAX", 4)
    renderer = Renderer(Catalog.load(DEFAULT_CARDS_DIR))
    variables = synthetic_variables(renderer.catalog.terminology, True)
    for i in range(50):
        fact = Fact("Label", None, f"value {i}", None, f"Observation/{i}")
        card = renderer.render(Decision(CardId.ILD_MONITORING, [fact]), variables, [], f"https://h{i}.example.org",
                               "all")
        assert f"Observation/{i}" in card.detail and card.links[0]["url"].startswith(f"https://h{i}.example.org/")
        assert len(renderer._fact_lines) <= 8 and len(renderer._links) <= 4
