# regzoo: `make demo` runs the main job, `make test` runs the test suite (CI runs it).
PYTHON ?= python3
export NO_MKDOCS_2_WARNING := 1
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.regzoo-installed

.PHONY: install test lint docs demo clean dist wheel-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check regzoo tests benchmarks plugins docs
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q
	site=$$(mktemp -d) && $(BIN)/mkdocs build --strict --quiet --site-dir $$site && rm -rf $$site
	.ci/wheel-check $(BIN)/python

# the wheel and sdist that users install (dist/)
dist: install
	$(BIN)/python -m build --no-isolation --sdist --wheel --outdir dist .

# build the wheel, install it into a fresh venv outside the checkout, run the CLI from there
wheel-check: install
	.ci/wheel-check $(BIN)/python

docs: install
	$(BIN)/mkdocs build --strict

# build the phantom (on first use), train the quickstart model on CPU, sweep (lam, mu) over its
# two trained decades (log-spaced), each setting refined (an exact sweep) and scored by the
# network alone beside it; report identity / network / refined at the chosen setting
demo: install
	$(BIN)/regzoo regularizers
	$(BIN)/regzoo train configs/quickstart.yaml --overwrite
	$(BIN)/regzoo sweep --model runs/quickstart/checkpoints/last.ckpt --data data/phantom \
		--grid lam=0.1:10:5 --grid mu=0.1:10:5 --metric tre_mm --max-folding 0 \
		--refine 30 --refine-grid \
		--figure --out report
	@echo "demo finished: open report/summary.md (heat maps: report/heatmap.png, overlay: report/overlay.png)"

clean:
	rm -rf $(VENV) site runs data report
