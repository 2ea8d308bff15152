"""WSGI entry point for gunicorn: settings come from CDS_* environment variables."""

from cds_service import create_app

app = create_app()
