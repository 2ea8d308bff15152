"""gunicorn settings for production, installed with the package: `cds-service serve` and the Docker image
run ``gunicorn --config python:cds_service.gunicorn_conf`` (the checkout's ``gunicorn.conf.py`` loads this).

2 workers x 8 threads suits a 2-core machine: the work per call is CPU-bound and short, the
threads absorb FHIR-fallback waits.  Everything is overridable by env (GUNICORN_*).
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
worker_class = "gthread"
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
