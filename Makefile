# Two commands matter: `make run` and `make test`. Everything else is a helper for those.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8765
NODE_DIR := .cache/node22
INSPECTOR := @modelcontextprotocol/inspector@2.12.0
INSPECTOR_METHOD ?= tools/list

.PHONY: run test lint typecheck pytest browser postgres oidc-provider screenshot conformance inspector bench clean k8s-floor
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/mcp-autonomy serve --transport http --host $(HOST) --port $(PORT) --sandbox

test: $(VENV)/.installed-dev lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check mcp_autonomy tests benchmarks
	$(BIN)/ruff format --check mcp_autonomy tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev browser postgres oidc-provider
	$(BIN)/python -m pytest

# The browser tests drive Debian's Chromium (Playwright's own browser download is never used).
browser:
	@test -x $(CHROMIUM) || $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }
	@test -x $(CHROMIUM) || { echo "chromium is missing: install Debian's chromium package" >&2; exit 1; }

# The shared-store tests start a real PostgreSQL server from Debian's binaries (tests/postgres.py).
postgres:
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq postgresql >/dev/null 2>&1 \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql; }
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { echo "postgresql is missing: install Debian's postgresql package" >&2; exit 1; }

# The authorization tests run a real OpenID Connect server: npm oidc-provider (pinned in the script) on the
# pinned Node 22, both installed under .cache/ once (needs npm the first time).
oidc-provider:
	@bash scripts/oidc_provider.sh >/dev/null

# Refresh docs/dashboard.png from the browser test that injects a fault.
screenshot: $(VENV)/.installed-dev browser
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/dashboard.png $(BIN)/python -m pytest -q \
		tests/browser/test_dashboard_browser.py -k fault_is_injected

conformance: $(VENV)/.installed-dev
	bash scripts/conformance.sh

# The MCP Inspector's CLI against the server `make run` serves (same HOST/PORT), e.g.
# make inspector INSPECTOR_METHOD=resources/list. It wants Node >= 22.19 (make conformance leaves
# one in .cache/node22, used first).
inspector:
	@$(PYTHON) -c "import urllib.request as u; u.urlopen('http://$(HOST):$(PORT)/healthz', timeout=3)" 2>/dev/null \
		|| { echo "no server answers on http://$(HOST):$(PORT): run 'make run PORT=$(PORT)' in another terminal first" >&2; exit 1; }
	@PATH="$(CURDIR)/$(NODE_DIR)/node_modules/.bin:$$PATH"; command -v npx >/dev/null \
		|| { echo "make inspector needs Node >= 22.19 with npx (or run make conformance once, it installs one in $(NODE_DIR))" >&2; exit 1; }
	PATH="$(CURDIR)/$(NODE_DIR)/node_modules/.bin:$$PATH" npx -y $(INSPECTOR) --cli http://$(HOST):$(PORT)/mcp \
		--transport http --method $(INSPECTOR_METHOD)

bench: $(VENV)/.installed-dev
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

# The Kubernetes tests with the LOWEST kubernetes client pyproject.toml allows, in a throwaway venv
# (not part of `make test`: it downloads the dependencies, ~30 s). The project itself is not
# installed there: the tests import it from the checkout (pytest's pythonpath).
K8S_FLOOR_VENV ?= /tmp/mcp-autonomy-k8s-floor
k8s-floor:
	rm -rf $(K8S_FLOOR_VENV)
	$(PYTHON) -m venv $(K8S_FLOOR_VENV)
	$(K8S_FLOOR_VENV)/bin/python -c 'import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(re.sub(r"^kubernetes>=", "kubernetes==", d) for d in deps)); print("pytest\nhypothesis")' > $(K8S_FLOOR_VENV)/requirements.txt
	$(K8S_FLOOR_VENV)/bin/python -m pip install --quiet -r $(K8S_FLOOR_VENV)/requirements.txt
	$(K8S_FLOOR_VENV)/bin/python -c 'import kubernetes; print("kubernetes client", kubernetes.__version__)'
	$(K8S_FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider tests/kubernetes tests/autonomy/scaling
