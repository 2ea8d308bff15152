"""Web pages: the integrators' demo and the compliance review pages."""

from __future__ import annotations

from flask import Flask

from cds_service.settings import Settings


def register_web(app: Flask, settings: Settings) -> None:
    """Register the rationale pages (public, linked from every card) and the review pages always,
    the demo only when enabled."""
    from cds_service.http.web import rationale, review

    app.register_blueprint(rationale.bp)
    app.register_blueprint(review.bp)
    if settings.DEMO:
        from cds_service.http.web import demo

        app.register_blueprint(demo.bp)
