# stargal — the two commands a fresh machine needs:
#   make experiments   (the full study; `make experiments QUICK=1` for a few-minute run)
#   make test          (the test suite)
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

# Offline here: when STARGAL_SAS_URL is unset and the SAS mirror ../shared/sdss exists
# beside the project, use it; elsewhere the code downloads from https://data.sdss.org/sas/.
SHARED_SDSS := $(abspath $(CURDIR)/../shared/sdss)
ifeq ($(strip $(STARGAL_SAS_URL)),)
  ifneq ($(wildcard $(SHARED_SDSS)/dr17),)
    export STARGAL_SAS_URL := file://$(SHARED_SDSS)
  endif
endif

PYTEST_ARGS ?=
QUICK ?=
EXPERIMENT_ARGS ?=

.PHONY: install test lint experiments bench demo clean-cache help

help:
	@echo "make experiments [QUICK=1]  run the study -> experiments/results/report.md"
	@echo "make test                   run the test suite"
	@echo "make lint                   style and pyflakes checks (ruff)"
	@echo "make bench                  speed ratios measured in one run"
	@echo "make demo                   fetch 8162-6-80 and classify a few coordinates"
	@echo "data source: STARGAL_SAS_URL=$(STARGAL_SAS_URL)"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "stargal needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check stargal experiments benchmarks tests

experiments: install
	$(PY) -m experiments.run $(if $(QUICK),--quick,) $(EXPERIMENT_ARGS)

bench: install
	$(PY) -m benchmarks.run

demo: install
	$(VENV)/bin/stargal fetch 8162-6-80
	$(PY) -m experiments.demo

clean-cache:
	rm -rf "$${STARGAL_CACHE:-$$HOME/.cache/stargal}"
