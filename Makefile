# Two commands do all the set-up on a fresh machine (Python 3.10+ with venv):
#   make run    - install into .venv, then run the whole pipeline on the built-in synthetic data
#   make test   - install into .venv, then run the test suite
#   make smoke  - install into .venv, then a 2-minute run of 4 rows on a tiny synthetic cohort (in smoke/)
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
# jobs that may hold the `gpu` resource at once: on a CPU-only machine, as many as cores
GPU_JOBS ?= $(CORES)
PYTHON ?= python3

.PHONY: setup run smoke test lint clean

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=$(GPU_JOBS)

# The smoke run lives in smoke/ (its own data, results, logs); config/smoke.yaml is merged on top of config.yaml.
smoke: setup
	$(VENV)/bin/snakemake --directory smoke --configfile $(CURDIR)/config.yaml $(CURDIR)/config/smoke.yaml \
		--cores $(CORES) --resources gpu=$(GPU_JOBS)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/snakemake --lint

clean:
	rm -rf results/* logs benchmarks .snakemake data/synthetic smoke
