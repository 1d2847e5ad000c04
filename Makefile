# Development tasks. `make run` starts the local stack, `make test` runs the test suite;
# both first create .venv and check for Mosquitto (`make test` and `make bench` also for
# nats-server), installing what is missing when root.

PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Reinstalled only when pyproject.toml is newer than this file.
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup venv mosquitto nats-server run test lint bench clean

setup: venv mosquitto

venv: $(STAMP)

# Debian ships `venv` without ensurepip (package python3-venv); a failed attempt leaves a
# half-made directory behind, so it is removed before trying again.
$(VPY):
	@if ! $(PY) -m venv $(VENV) >/dev/null 2>&1; then \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "python venv/ensurepip missing: installing python3-venv"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv && \
	    $(PY) -m venv $(VENV); \
	  else \
	    echo "cannot create $(VENV) with $(PY): install python3-venv (apt-get install python3-venv)" >&2; \
	    exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

# The binary only: a Mosquitto service installed by apt (port 1883) does not matter, the
# stack and the tests start their own brokers on other ports with their own config.
mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "mosquitto not found: installing it"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; \
	else \
	  echo "install mosquitto (apt-get install mosquitto)" >&2; \
	  exit 1; \
	fi

# The fleet tests and bench (issue [15]) start their own 3-node NATS cluster on loopback
# ports; Debian's package is NATS 2.9.
nats-server:
	@if command -v nats-server >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "nats-server not found: installing it"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server; \
	else \
	  echo "install nats-server (apt-get install nats-server)" >&2; \
	  exit 1; \
	fi

run: setup
	$(VPY) -m sepl_dev.stack

test: setup nats-server
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# ruff (SLF001: no private member access), mypy strict, import-linter's contracts in
# pyproject.toml, and .ci/public_api_check.py for what those cannot see (subclasses of a
# library's classes, getattr/setattr of private names).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VPY) .ci/public_api_check.py adapter sepl_dev bench

# Every scenario of issue [6] with real Mosquitto and adapter processes, bench.history and
# bench.match included; a table, and JSON in bench/results/. BENCH_ARGS=--quick for a smoke
# run, --profile to add py-spy profiles (.venv/bin/pip install py-spy), --only a,b to pick.
bench: venv mosquitto nats-server
	$(VPY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache .hypothesis .grimp_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
