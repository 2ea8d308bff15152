"""gunicorn settings for a checkout (``gunicorn -c gunicorn.conf.py``, the benchmarks): the installed
package's ``cds_service/gunicorn_conf.py``, which ``cds-service serve`` and the Docker image use."""

from cds_service.gunicorn_conf import *  # noqa: F403
