"""The text-assertion reader the engine passes into ``clinical``: medspaCy ConText.

A blank spaCy English pipeline (tokenizer + sentencizer, no model download) and medspaCy's ConText
with its default rules plus the cue list in ``cards/assertion-cues.yaml``.  The mention is found
from the phrases the caller passes (a value set's aliases); without one, every run of tokens that
is not a cue is a mention and the most restrictive assertion wins (negated > family > possible >
historical).  Results are cached per distinct (text, phrases) with a bound.  medspaCy's and spaCy's
own loggers are silenced: some log every input text at DEBUG, which would be PHI in the logs.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

with warnings.catch_warnings():  # spaCy and medspaCy warn about their own dependencies at import
    warnings.simplefilter("ignore")
    import medspacy.context  # noqa: F401 (registers the medspacy_context pipeline factory)
    import spacy
    from medspacy.context import ConTextRule
    from spacy.tokens import Span

from cds_service.clinical.assertion import Assertion

_CACHE_SIZE = 20_000
_PRIORITY = (Assertion.NEGATED, Assertion.FAMILY, Assertion.POSSIBLE, Assertion.HISTORICAL, Assertion.AFFIRMED)
_QUIET_LOGGERS = ("medspacy", "PyRuSH", "pyrush", "spacy", "quickumls", "medspacy_quickumls")


class AssertionCueError(ValueError):
    """The cue file is malformed."""


def _silence_libraries() -> None:
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    try:  # loguru (used by PyRuSH) writes to stderr on its own: switch it off for these packages
        from loguru import logger as loguru_logger

        for name in ("PyRuSH", "medspacy"):
            loguru_logger.disable(name)
    except ImportError:
        pass


def _cues_of(data: Any, source: str) -> list[dict[str, Any]]:
    cues = (data or {}).get("cues") or [] if isinstance(data, dict) or data is None else None
    if not isinstance(cues, list) or not all(isinstance(c, dict) and c.get("literal") and c.get("category")
                                              for c in cues):
        raise AssertionCueError(f"{source}: `cues` must be a list of {{literal, category, direction}}")
    return cues


def load_cues(path: Path) -> list[dict[str, Any]]:
    return _cues_of(yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else {}, path.name)


def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str] | None:
    words = [p for p in sorted({p.lower().strip() for p in phrases if p and p.strip()}, key=len, reverse=True)]
    if not words:
        return None
    parts = [r"[^0-9a-z]+".join(re.escape(w) for w in re.split(r"[^0-9a-z]+", phrase) if w) for phrase in words]
    parts = [p for p in parts if p]
    if not parts:
        return None
    return re.compile(r"(?<![0-9a-z])(?:" + "|".join(parts) + r")(?![0-9a-z])")


class ContextReader:
    """``AssertionReader`` backed by medspaCy ConText."""

    def __init__(self, cues: list[dict[str, Any]]) -> None:
        _silence_libraries()
        self._span = Span
        self._nlp = spacy.blank("en")
        # A question mark is a cue ("? myositis"), not the end of a sentence, in problem-list text.
        self._sentencizer = self._nlp.add_pipe("sentencizer", config={"punct_chars": [".", "!", ";", "\n"]})
        context: Any = self._nlp.add_pipe("medspacy_context", config={"rules": None})
        self._context = context
        ours = [ConTextRule(str(c["literal"]), str(c["category"]), direction=str(c.get("direction", "FORWARD")),
                            pattern=c.get("pattern")) for c in cues]
        # The cue file overrides a default rule with the same words (e.g. "ruled out" in both directions).
        overridden = {rule.literal.lower() for rule in ours}
        defaults = [rule for rule in ConTextRule.from_json(context.DEFAULT_RULES_FILEPATH)
                    if rule.literal.lower() not in overridden]
        context.add(defaults + ours)
        self._cached = functools.lru_cache(maxsize=_CACHE_SIZE)(self._read)
        self._patterns = functools.lru_cache(maxsize=1024)(_phrase_pattern)

    @classmethod
    def from_file(cls, path: Path) -> ContextReader:
        return cls(load_cues(path))

    def assertion(self, text: str, phrases: Sequence[str] = ()) -> Assertion:
        if not text or not text.strip():
            return Assertion.AFFIRMED
        result: Assertion = self._cached(text[:500], tuple(phrases))
        return result

    def _read(self, text: str, phrases: tuple[str, ...]) -> Assertion:
        doc = self._sentencizer(self._nlp.make_doc(text))
        doc = self._context(doc)  # first pass: where the cues are
        cue_tokens: set[int] = set()
        for modifier in doc._.context_graph.modifiers:
            cue_tokens.update(range(modifier.modifier_span[0], modifier.modifier_span[1]))
        if not cue_tokens:
            return Assertion.AFFIRMED
        targets = self._targets(doc, text, phrases, cue_tokens)
        if not targets:
            return Assertion.AFFIRMED
        doc.ents = targets
        doc = self._context(doc)
        found = {self._of(span) for span in doc.ents}
        return next(a for a in _PRIORITY if a in found or a is Assertion.AFFIRMED)

    def _targets(self, doc: Any, text: str, phrases: tuple[str, ...], cue_tokens: set[int]) -> list[Any]:
        pattern = self._patterns(phrases) if phrases else None
        if pattern is not None:
            match = pattern.search(text.lower())
            if match:
                span = doc.char_span(match.start(), match.end(), label="TARGET", alignment_mode="expand")
                if span is not None and not any(i in cue_tokens for i in range(span.start, span.end)):
                    return [span]
        spans = []
        start: int | None = None
        for i in range(len(doc) + 1):
            usable = i < len(doc) and i not in cue_tokens and not doc[i].is_punct and not doc[i].is_space
            if usable and start is None:
                start = i
            elif not usable and start is not None:
                spans.append(self._span(doc, start, i, label="TARGET"))
                start = None
        return spans

    @staticmethod
    def _of(span: Any) -> Assertion:
        if span._.is_negated:
            return Assertion.NEGATED
        if span._.is_family:
            return Assertion.FAMILY
        if span._.is_uncertain or span._.is_hypothetical:
            return Assertion.POSSIBLE
        if span._.is_historical:
            return Assertion.HISTORICAL
        return Assertion.AFFIRMED


@functools.lru_cache(maxsize=4)
def _reader_for(cues_text: str) -> ContextReader:
    return ContextReader(_cues_of(yaml.safe_load(cues_text) if cues_text else {}, "cues"))


def assertion_reader(path: Path) -> ContextReader:
    """The reader for a cue file.  One per distinct cue list in the process: the NLP pipeline costs
    about a second and ~100 MB to build and is immutable, so app instances (tests, the review
    packet, workers' re-creations) share it.  The file is read once and validated like ``load_cues``."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    _cues_of(yaml.safe_load(text) if text else {}, path.name)
    return _reader_for(text)
