VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LINT_STAMP := $(VENV)/.installed-lint
COMPAT_STAMP := $(VENV)/.installed-compat

# Stamps: npm gives installed files a fixed 1985 mtime, useless to make.
EXAMPLES_JS := examples/node_modules/.installed
CLIENT_JS := clients/js
CLIENT_JS_DEPS := $(CLIENT_JS)/node_modules/.installed
CLIENT_JS_BUILD := $(CLIENT_JS)/dist/rhizomorph-client.mjs

.PHONY: install examples serve lint test test-fast bench bench-full compat clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The example pages load rhizomorph-client's browser build (clients/js, API v4 on the released
# hypha-rpc from npm) and hypha-rpc itself, both served at /lib/ from examples/node_modules
# (examples/package.json links ../clients/js). The build is esbuild's WebAssembly package, from npm.
$(CLIENT_JS_DEPS): $(CLIENT_JS)/package.json
	@if command -v npm >/dev/null; then cd $(CLIENT_JS) && npm install --no-audit --no-fund --no-package-lock && touch node_modules/.installed; \
	else echo "npm not found: cannot build the rhizomorph-client JavaScript package (apt-get install npm)"; fi

$(CLIENT_JS_BUILD): $(CLIENT_JS_DEPS) $(wildcard $(CLIENT_JS)/src/*.js) $(CLIENT_JS)/build.mjs
	@if [ -f $(CLIENT_JS_DEPS) ]; then cd $(CLIENT_JS) && npm run --silent build; fi

$(EXAMPLES_JS): examples/package.json
	@if command -v npm >/dev/null; then cd examples && npm install --no-audit --no-fund --no-package-lock && touch node_modules/.installed; \
	else echo "npm not found: the example pages cannot load the hypha-rpc client (apt-get install npm)"; fi

examples: $(EXAMPLES_JS) $(CLIENT_JS_BUILD)

serve: $(STAMP) examples
	@echo "router console on the router's port, by default http://127.0.0.1:9527/ (examples/README.md)"
	$(BIN)/rhizomorph serve

$(LINT_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $(LINT_STAMP)

# Format check, lint, and types (strict on rhizomorph/protocol/); mypy reads the installed
# dependencies, so it runs from the project's venv. Settings are in pyproject.toml.
lint: $(LINT_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

# The JavaScript client and the pages are tested too (tests/test_js_client.py, test_examples_browser.py).
test: $(STAMP) examples
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) examples
	$(BIN)/python -m pytest -q -m 'not slow'

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Side-by-side benchmarks (benchmarks/README.md); both rewrite PERFORMANCE.md and benchmarks/plots/.
# Both start with the batching report's table (benchmarks/bench_claims.py). HYPHA_PYTHON=<venv>/bin/python
# runs the real Hypha server with that interpreter (a venv of its own keeps Hypha's pins out of this one).
HYPHA_FLAG := $(if $(HYPHA_PYTHON),--hypha-python $(HYPHA_PYTHON))

bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --suite quick $(HYPHA_FLAG)

bench-full: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --suite full $(HYPHA_FLAG)

$(COMPAT_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,compat]'
	touch $(COMPAT_STAMP)

# hypha-rpc's own test suite (from its PyPI sdist, downloaded at run time into build/compat/cache)
# against rhizomorph on 127.0.0.1:3828 with WORKERS gateway workers; writes
# build/compat/workers-$(WORKERS)/{summary.md,junit.xml,pytest.log} (compat/run.py).
# COMPAT_STRICT=1 (CI): fail on a failing test that compat/known_failures.toml does not list.
HYPHA_RPC_VERSION ?= 0.21.47
WORKERS ?= 1
COMPAT_MIN_PASSED ?= 0
COMPAT_STRICT ?= 0
compat: $(COMPAT_STAMP)
	$(BIN)/python -m compat.run --version $(HYPHA_RPC_VERSION) --workers $(WORKERS) --min-passed $(COMPAT_MIN_PASSED) \
		$(if $(filter 1,$(COMPAT_STRICT)),--fail-on-new)

clean:
	rm -rf $(VENV) build *.egg-info
