# Two commands on a fresh machine:  make run  |  make test
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8080
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench bench-quick cards-check fixtures browser clean lock audit

# Installed from the lock file (requirements-dev.lock: every dependency pinned; `make lock` regenerates
# it and requirements.lock, which the Docker image installs).
$(STAMP): pyproject.toml requirements-dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-dev.lock -e '.[dev,postgres]'
	@touch $(STAMP)

# Regenerate the lock files from pyproject.toml (pip-tools in a throwaway virtualenv).
LOCKVENV ?= var/lockvenv
PIP_COMPILE_ARGS := --quiet --strip-extras --no-emit-index-url --no-emit-find-links --allow-unsafe
lock:
	@test -x $(LOCKVENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKVENV) && $(LOCKVENV)/bin/pip install --quiet pip-tools; }
	$(LOCKVENV)/bin/pip-compile $(PIP_COMPILE_ARGS) --upgrade --extra postgres -o requirements.lock pyproject.toml
	$(LOCKVENV)/bin/pip-compile $(PIP_COMPILE_ARGS) --upgrade --extra postgres --extra dev -o requirements-dev.lock pyproject.toml

# Known vulnerabilities in the locked production dependencies (pip-audit, in a throwaway virtualenv).
# Needs the advisory database online: says so and exits 0 when it cannot be reached.
AUDITVENV ?= var/auditvenv
audit:
	@test -x $(AUDITVENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDITVENV) && $(AUDITVENV)/bin/pip install --quiet pip-audit; } \
	  || { echo "pip-audit could not be installed (no package index reachable): audit NOT run"; exit 0; }
	@$(AUDITVENV)/bin/pip-audit --disable-pip --no-deps -r requirements.lock > var/pip-audit.txt 2>&1; status=$$?; \
	grep -v "could not be audited" var/pip-audit.txt | grep -v "^WARNING" ; \
	locked=$$(grep -c "==" requirements.lock); skipped=$$(grep -c "could not be audited" var/pip-audit.txt); \
	if [ "$$skipped" -ge "$$locked" ]; then \
	  echo "pip-audit reached no vulnerability database for any of the $$locked locked packages: audit NOT effective here"; \
	elif [ "$$skipped" -gt 0 ]; then echo "$$skipped of $$locked packages could not be audited (see var/pip-audit.txt)"; fi; \
	exit $$status

run: $(STAMP)
	$(VENV)/bin/cds-service serve --dev --host $(HOST) --port $(PORT)

test: $(STAMP) browser
	$(VENV)/bin/ruff check cds_service tests bench
	$(VENV)/bin/mypy cds_service
	$(VENV)/bin/lint-imports
	$(VENV)/bin/cds-service cards check
	$(VENV)/bin/pytest -n 2 --dist loadfile

# The browser test drives Debian's Chromium; install it when missing and permitted (root + apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian chromium for the browser test"; \
	    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
	      || echo "chromium could not be installed: the browser test will skip"; \
	  else echo "chromium not installed and apt not permitted: the browser test will skip"; fi; }

# The HTTP phase uses wrk when it is on PATH (installed here when missing and permitted: root + apt),
# else the Python asyncio + httpx load generator. Extra options: make bench BENCH_ARGS="--wait-idle 120".
bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian wrk for the HTTP benchmark"; \
	    apt-get install -y -q wrk >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1) || true; \
	  fi; }
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian wrk for the HTTP benchmark"; \
	    apt-get install -y -q wrk >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1) || true; \
	  fi; }
	$(PY) bench/run.py --quick $(BENCH_ARGS)

cards-check: $(STAMP)
	$(VENV)/bin/cds-service cards check

fixtures: $(STAMP)
	$(VENV)/bin/cds-service fixtures build

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
