# regzoo: `make demo` runs the main job, `make test` runs the test suite (CI runs it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.regzoo-installed
DEMO_DIR ?= runs/demo

.PHONY: install test lint docs demo clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check regzoo tests benchmarks plugins docs

test: install lint
	$(BIN)/pytest -q
	$(BIN)/mkdocs build --strict --quiet --site-dir /tmp/regzoo-site-$$$$

docs: install
	$(BIN)/mkdocs build --strict

demo: install
	$(BIN)/regzoo regularizers

clean:
	rm -rf $(VENV) site runs data report
