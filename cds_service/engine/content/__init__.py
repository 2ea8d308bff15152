"""Card content: the catalogue (load, hash, servable) and the renderer (decision -> card)."""

from cds_service.engine.content.catalog import (
    CITATION,
    INDICATORS,
    SEVERITY,
    STATUSES,
    SUMMARY_MAX,
    CardContent,
    Catalog,
    ContentError,
    Withheld,
    normalise_body,
    split_front_matter,
)
from cds_service.engine.content.render import Renderer, RenderError, merge_facts
from cds_service.engine.content.text import escaped, make_environment, make_text_environment, md_escape

__all__ = ["CITATION", "INDICATORS", "SEVERITY", "STATUSES", "SUMMARY_MAX", "CardContent", "Catalog",
           "ContentError", "RenderError", "Renderer", "Withheld", "escaped", "make_environment",
           "make_text_environment", "md_escape", "merge_facts", "normalise_body", "split_front_matter"]
