# Two entry points, both self-contained on a fresh machine:
#   make demo   set up .venv and run a local testnet with a demo workload
#   make test   set up .venv (+ dev tools) and run every check CI runs
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test setup lint typecheck protolint proto pytest bench clean

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

test: protolint lint typecheck pytest

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

bench: $(STAMP)
	$(PY) scripts/bench_auction.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
