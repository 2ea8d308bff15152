# ivig-cds — production image: gunicorn, non-root, settings by CDS_* env vars.
FROM python:3.11-slim

# Cards, value sets, fixtures and the gunicorn configuration are installed with the package.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    CDS_DATABASE_URL=sqlite:////app/var/ivig-cds.sqlite3

WORKDIR /app
RUN groupadd --system --gid 10001 cds && useradd --system --uid 10001 --gid cds --home-dir /app --shell /usr/sbin/nologin cds
COPY pyproject.toml README.md requirements.lock ./
# The locked dependencies first (the tested versions, pinned), then the package itself without resolving again.
RUN pip install -r requirements.lock
COPY cds_service ./cds_service
COPY cards ./cards
COPY fixtures ./fixtures
RUN pip install --no-deps '.[postgres]' && mkdir -p /app/var && chown -R cds:cds /app/var

USER cds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["gunicorn", "--config", "python:cds_service.gunicorn_conf", "cds_service.wsgi:app"]
