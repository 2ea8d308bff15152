"""gunicorn settings for production, installed with the package: `cds-service serve` and the Docker image
run ``gunicorn --config python:cds_service.gunicorn_conf`` (the checkout's ``gunicorn.conf.py`` loads this).

2 workers x 8 threads suits a 2-core machine: the work per call is CPU-bound and short, the
threads absorb FHIR-fallback waits.  Everything is overridable by env (GUNICORN_*).

The worker class is ``gthread`` with a buffering front (``cds_service/gunicorn_worker.py``): threads
see only complete requests, so slow or partial clients cannot starve them; requests whose header
(``GUNICORN_HEADER_TIMEOUT``, 5 s) or body (``GUNICORN_BODY_TIMEOUT``, 15 s) does not arrive in time
are dropped.  On SIGTERM each worker finishes its requests and flushes queued audit rows (bounded by
``AUDIT_FLUSH_TIMEOUT_S`` below, inside gunicorn's ``graceful_timeout``).
"""

import logging
import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "cds_service.gunicorn_worker.BufferingThreadWorker")
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
# Access log without query strings (no PHI in URLs here, but keep the habit) and no headers.
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-") or None  # empty = access log off
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
wsgi_app = "cds_service.wsgi:app"

AUDIT_FLUSH_TIMEOUT_S = 10.0


def worker_exit(server: Any, worker: Any) -> None:
    """Graceful shutdown (SIGTERM): write the audit rows still queued, waiting at most
    ``AUDIT_FLUSH_TIMEOUT_S``; what could not be written is logged with its count."""
    import sys

    wsgi = sys.modules.get("cds_service.wsgi")
    app = getattr(wsgi, "app", None)
    runtime = app.extensions.get("cds_runtime") if app is not None else None
    if runtime is None:
        return
    store = runtime.store
    if store.close(timeout=AUDIT_FLUSH_TIMEOUT_S):
        logging.getLogger("cds_service.gunicorn").info("audit flushed at shutdown: %d written, %d lost",
                                                       store.audit_written, store.audit_lost)
