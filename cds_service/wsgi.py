"""WSGI entry point for gunicorn: settings come from CDS_* environment variables."""

from cds_service import create_app
from cds_service.logs import write_in_background

app = create_app()
write_in_background()  # log lines are written by a background thread, not by the request threads
