# LAD Billing. `make run` starts the service, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: install run test bench token job migrate lint clean console vendor chromium poppler ha ha-tools

# requirements.txt is the service (the production image installs only it); requirements-dev.txt adds
# the local stack's embedded servers, the tests, the bench and the linters
$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

# the Python client library (clients/python), editable: its tests use its source
CLIENT_STAMP := $(VENV)/.installed-client
$(CLIENT_STAMP): clients/python/pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e ./clients/python
	@touch $(CLIENT_STAMP)

install: $(STAMP) $(CLIENT_STAMP)

# the SSRF guard is on everywhere; `make run` allows private webhook receivers (local development)
run: install
	WEBHOOK_ALLOW_PRIVATE_ADDRESSES=$${WEBHOOK_ALLOW_PRIVATE_ADDRESSES:-true} $(PY) -m devstack.run

test: lint node-toolchain chromium poppler ha-tools
	$(PY) -m pytest

# one level at a time (`make test` runs them all); locally, -m "not browser and not node" skips the
# Chromium and TypeScript suites: `make test-e2e PYTEST_ARGS='-m "not browser and not node"'`
.PHONY: test-unit test-integration test-e2e test-faults
test-unit: install node-toolchain poppler
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: install
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: install node-toolchain chromium poppler
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

test-faults: install ha-tools
	$(PY) -m pytest tests/faults $(PYTEST_ARGS)

# --- high availability (docs/high-availability.md) ---------------------------------------------------
# Patroni from PyPI (requirements-ha.txt), etcd from Debian (`etcd-server`) and `ip` (iproute2) for the
# hosts' network namespaces; CI is root on Debian. PostgreSQL and Redis are the embedded servers' binaries.
HA_STAMP := $(VENV)/.installed-ha-$(shell cksum < requirements-ha.txt | cut -d' ' -f1)
$(HA_STAMP): requirements-ha.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-ha.txt
	@rm -f $(VENV)/.installed-ha-* && touch $(HA_STAMP)

ha-tools: install $(HA_STAMP)
	@command -v etcd >/dev/null && command -v ip >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server iproute2; }

# the service against a PostgreSQL primary + synchronous standby (Patroni, 3 etcd members), each database
# host in its own network namespace, and Redis with a replica and 3 Sentinels; writes .data/ha/stack.env
ha: ha-tools
	WEBHOOK_ALLOW_PRIVATE_ADDRESSES=$${WEBHOOK_ALLOW_PRIVATE_ADDRESSES:-true} $(PY) -m devstack.ha

# Node.js 18+ and npm for the TypeScript client's tests (clients/node); CI is root on Debian
.PHONY: node-toolchain
node-toolchain:
	@command -v node >/dev/null && command -v npm >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm; }

bench: install
	$(PY) -m bench.run

token: install
	@$(PY) -m devstack.token --tenant "$(TENANT)" --caps "$(CAPS)"

job: install
	@$(PY) -m devstack.job $(NAME)

# distribute the tables by tenant on the Citus coordinator DATABASE_URL names (billing_core/sharding.py,
# docs/scaling.md); on plain PostgreSQL it says it needs Citus and exits non-zero, changing nothing
.PHONY: citus-distribute
citus-distribute: install
	$(PY) -m billing_core.sharding

# ruff, and mypy over the service's three layers (mypy.ini)
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

migrate: install
	$(VENV)/bin/alembic upgrade head

clean:
	rm -rf .data .pytest_cache

# --- pages (portal and console) ---------------------------------------------------------------------
# Chart.js (served by the app) and axe-core (injected by the browser tests), from the npm registry with
# their licences; the results are committed, so `make run` needs no network and no build step.
CHARTJS_VERSION := 4.6.1
AXE_CORE_VERSION := 4.14.1

vendor:
	@rm -rf .data/vendor && mkdir -p .data/vendor/chart.js .data/vendor/axe-core
	cd .data/vendor && npm pack --silent chart.js@$(CHARTJS_VERSION) axe-core@$(AXE_CORE_VERSION) >/dev/null
	tar -xzf .data/vendor/chart.js-$(CHARTJS_VERSION).tgz -C .data/vendor/chart.js
	tar -xzf .data/vendor/axe-core-$(AXE_CORE_VERSION).tgz -C .data/vendor/axe-core
	mkdir -p web/static/vendor/chart.js tests/vendor/axe-core
	cp .data/vendor/chart.js/package/dist/chart.umd.min.js .data/vendor/chart.js/package/LICENSE.md web/static/vendor/chart.js/
	echo "chart.js $(CHARTJS_VERSION) from the npm registry (make vendor)" > web/static/vendor/chart.js/VERSION
	cp .data/vendor/axe-core/package/axe.min.js .data/vendor/axe-core/package/LICENSE tests/vendor/axe-core/
	echo "axe-core $(AXE_CORE_VERSION) from the npm registry (make vendor)" > tests/vendor/axe-core/VERSION

# Debian's chromium for the browser tests (its own download does not work here); CI is root
chromium:
	@test -x /usr/bin/chromium || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# poppler-utils (pdftotext, pdftoppm) for the document tests, which read the PDFs; CI is root on Debian
poppler:
	@command -v pdftotext >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q poppler-utils; }

# a console link for the local stack started by `make run` (reads .data/stack.env)
console: install
	@$(PY) -m devstack.console $(if $(TENANT),--tenant "$(TENANT)")
