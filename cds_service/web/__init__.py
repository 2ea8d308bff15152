"""Web pages: the integrators' demo and the compliance review pages."""

from __future__ import annotations

from flask import Flask

from ..settings import Settings


def register_web(app: Flask, settings: Settings) -> None:
    """Register the review pages always, the demo only when enabled."""
    try:
        from . import review
    except ImportError:  # governance lands in the same change set; until then no review pages
        pass
    else:
        app.register_blueprint(review.bp)
    if settings.DEMO:
        try:
            from . import demo  # type: ignore[attr-defined]
        except ImportError:
            pass
        else:
            app.register_blueprint(demo.bp)
