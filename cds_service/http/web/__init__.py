"""Web pages: the integrators' demo and the compliance review pages."""

from __future__ import annotations

from flask import Flask

from cds_service.settings import Settings


def register_web(app: Flask, settings: Settings) -> None:
    """Register the review pages when ``REVIEW_PAGES`` allows (development profile by default), the demo
    only when enabled."""
    from cds_service.http.web import review

    if settings.review_pages:
        app.register_blueprint(review.bp)
    if settings.DEMO:
        from cds_service.http.web import demo

        app.register_blueprint(demo.bp)
