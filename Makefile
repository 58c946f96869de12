# LAD Billing. `make run` starts the service, `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install run test bench token job migrate lint clean

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
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

test: install node-toolchain
	$(PY) -m pytest

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

lint: install
	$(VENV)/bin/ruff check .

migrate: install
	$(VENV)/bin/alembic upgrade head

clean:
	rm -rf .data .pytest_cache
