"""Web pages: the integrators' demo and the compliance review pages."""

from __future__ import annotations

from flask import Blueprint, Flask

from cds_service.settings import Settings


def register_web(app: Flask, settings: Settings) -> None:
    """Register the rationale pages (public, linked from every card) always; the review pages when
    ``REVIEW_PAGES`` allows (development profile by default), else only their stylesheet (the rationale
    and demo pages share it); the demo only when enabled."""
    from cds_service.http.web import rationale, review

    app.register_blueprint(rationale.bp)
    if settings.review_pages:
        app.register_blueprint(review.bp)
    else:
        # The pages' shared stylesheet only (base.html links review.static): no review route.
        app.register_blueprint(Blueprint("review", review.__name__, template_folder=review.bp.template_folder,
                                         static_folder=review.bp.static_folder,
                                         static_url_path=review.bp.static_url_path))
    if settings.DEMO:
        from cds_service.http.web import demo

        app.register_blueprint(demo.bp)
