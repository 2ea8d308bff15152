"""Card content: the catalogue (load, hash, servable) and the renderer (decision -> card)."""

from cds_service.engine.content.catalog import (
    CITATION,
    EXPERT_OPINION,
    INDICATORS,
    MARKERS,
    ORIGIN,
    RATIONALE_MARKER,
    RECORD,
    SEVERITY,
    STATUSES,
    SUMMARY_MAX,
    CardContent,
    Catalog,
    ContentError,
    Withheld,
    bibliographic,
    cited_keys,
    normalise_body,
    split_front_matter,
    split_rationale,
)
from cds_service.engine.content.render import DETAIL_MAX, Renderer, RenderError, merge_facts
from cds_service.engine.content.text import escaped, make_environment, make_text_environment, md_escape

__all__ = ["CITATION", "DETAIL_MAX", "EXPERT_OPINION", "INDICATORS", "MARKERS", "ORIGIN", "RATIONALE_MARKER",
           "RECORD", "SEVERITY", "STATUSES", "SUMMARY_MAX", "CardContent", "Catalog", "ContentError",
           "RenderError", "Renderer", "Withheld", "bibliographic", "cited_keys", "escaped", "make_environment",
           "make_text_environment", "md_escape", "merge_facts", "normalise_body", "split_front_matter",
           "split_rationale"]
