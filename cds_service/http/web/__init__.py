"""Web pages: the integrators' demo and the compliance review pages."""

from __future__ import annotations

from flask import Blueprint, Flask

from cds_service.settings import Settings


def register_web(app: Flask, settings: Settings) -> None:
    """Register the review pages when ``REVIEW_PAGES`` allows (development profile by default), the demo
    only when enabled."""
    from cds_service.http.web import review

    if settings.review_pages:
        app.register_blueprint(review.bp)
    elif settings.DEMO:
        # The pages' shared stylesheet only (base.html links review.static): no review route.
        app.register_blueprint(Blueprint("review", review.__name__, template_folder=review.bp.template_folder,
                                         static_folder=review.bp.static_folder,
                                         static_url_path=review.bp.static_url_path))
    if settings.DEMO:
        from cds_service.http.web import demo

        app.register_blueprint(demo.bp)
