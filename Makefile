VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
COMPAT_STAMP := $(VENV)/.installed-compat

EXAMPLES_JS := examples/node_modules/hypha-rpc/package.json

.PHONY: install examples serve test test-fast bench bench-full compat clean

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

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Side-by-side benchmarks (benchmarks/README.md); both rewrite PERFORMANCE.md and benchmarks/plots/.
bench: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --suite quick

bench-full: $(BENCH_STAMP)
	$(BIN)/python -m benchmarks.run --suite full

$(COMPAT_STAMP): $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,compat]'
	touch $(COMPAT_STAMP)

# hypha-rpc's own test suite (from its PyPI sdist, downloaded at run time into build/compat/cache)
# against rhizomorph on 127.0.0.1:3828 with WORKERS gateway workers; writes
# build/compat/workers-$(WORKERS)/{summary.md,junit.xml,pytest.log} (compat/run.py).
HYPHA_RPC_VERSION ?= 0.21.47
WORKERS ?= 1
COMPAT_MIN_PASSED ?= 0
compat: $(COMPAT_STAMP)
	$(BIN)/python -m compat.run --version $(HYPHA_RPC_VERSION) --workers $(WORKERS) --min-passed $(COMPAT_MIN_PASSED)

clean:
	rm -rf $(VENV) build *.egg-info
