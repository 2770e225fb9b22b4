# cnn-apps: the two commands a newcomer needs are `make demo` and `make test`.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= pipelines/configs/shapes_classification.yaml
PORT   ?= 5000
PYTEST_ARGS ?=

.PHONY: install dev demo lint test test-fast docs mlflow-ui bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the package metadata changes (the stamp files are the record).
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# prepare -> train -> evaluate -> export on the embedded shapes dataset.
demo: install
	$(BIN)/cnn-apps all --config $(CONFIG)
	@echo
	@echo "Runs are in ./mlruns (SQLite). See them with: make mlflow-ui   ->  http://127.0.0.1:$(PORT)"
	@echo "The SavedModel for TF Serving is under ./exports/"

# ruff's lint rules and format check (pyproject.toml): a finding fails `make test`.
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Lint, then the docs site built strictly (a broken link or anchor, a page missing from the nav
# or a docstring mkdocstrings cannot render fails), then the whole suite, slow end-to-end checks
# included. pytest's exit code 5 ("no tests collected") is a failure: a run that tests nothing
# is not green.
test: lint
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@$(BIN)/python -m pytest -ra --durations=25 $(PYTEST_ARGS) tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS) tests

# The docs site (docs/, mkdocs.yml) on this machine only, rebuilt on every change.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve -a 127.0.0.1:8000

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port $(PORT)

bench: install
	$(BIN)/python benchmarks/data_pipeline.py --config $(CONFIG)

clean:
	rm -rf data mlruns exports site .pytest_cache
