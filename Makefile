# lstmad: two commands do all the set-up on a fresh Debian/Ubuntu machine.
#   make run   - local VictoriaMetrics + node_exporter, a demo fleet, training, the detector
#   make test  - the whole test suite (unit + integration against real processes)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := victoria-metrics prometheus-node-exporter prometheus
BENCH_APT_PACKAGES := wrk

.PHONY: run test lint typecheck bench eval deps venv clean

# Debian packages: install only what is missing, with no prompt.
deps:
	@missing=""; \
	command -v victoria-metrics >/dev/null 2>&1 || missing="$$missing victoria-metrics"; \
	command -v prometheus-node-exporter >/dev/null 2>&1 || missing="$$missing prometheus-node-exporter"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

bench-deps: deps
	@command -v wrk >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(BENCH_APT_PACKAGES); }

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

run: deps venv
	$(VENV)/bin/lstmad demo

test: deps venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/mypy

bench: bench-deps venv
	$(VENV)/bin/lstmad bench --write docs/benchmarks.md

eval: venv
	$(PY) -m lstmad.evalsuite --data ../shared/data --write docs/results.md

clean:
	rm -rf $(VENV) .demo .bench build *.egg-info
