VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
LINT_STAMP := $(VENV)/.installed-lint

EXAMPLES_JS := examples/node_modules/hypha-rpc/package.json

.PHONY: install examples serve lint test test-fast bench bench-full clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The example pages load the released hypha-rpc browser client from npm (served at /lib/).
$(EXAMPLES_JS): examples/package.json
	@if command -v npm >/dev/null; then cd examples && npm install --no-audit --no-fund --no-package-lock; \
	else echo "npm not found: the example pages cannot load the hypha-rpc client (apt-get install npm)"; fi

examples: $(EXAMPLES_JS)

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
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

clean:
	rm -rf $(VENV) build *.egg-info
