# Two entry points, both self-contained on a fresh machine:
#   make demo   set up .venv and run a local testnet with a demo workload
#   make test   set up .venv (+ dev tools) and run every check CI runs
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup lint typecheck protolint proto pytest bench flamegraph clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

node_modules/.bin/buf: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/testnet.py

protolint: node_modules/.bin/buf
	cd protos && ../node_modules/.bin/buf lint

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -q

# Debian's prometheus for tests/system/test_prometheus.py (as root with apt-get; else that test skips)
prometheus:
	bash scripts/install_prometheus.sh

test: protolint lint typecheck prometheus pytest

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

bench: $(STAMP)
	$(PY) scripts/bench_auction.py

# Where the auction's CPU goes: sampled flame graphs of the requester and the peers' process (py-spy
# follows the child), for batched rounds (bench_batching) and single rounds (bench_auction).
flamegraph: $(STAMP)
	mkdir -p out
	$(VENV)/bin/py-spy record --subprocesses --rate 250 --output out/flame_batching.svg -- \
		$(PY) scripts/bench_batching.py --mode batched --repeats 1 --auctions 800
	$(VENV)/bin/py-spy record --subprocesses --rate 250 --output out/flame_auction.svg -- \
		$(PY) scripts/bench_auction.py --rounds 300 --json out/flame_auction.json

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
