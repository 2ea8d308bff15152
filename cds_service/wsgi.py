"""WSGI entry point for gunicorn: settings come from CDS_* environment variables."""

from . import create_app

app = create_app()
