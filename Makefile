# make demo: the whole pipeline on generated demo data.  make test: lint and the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[train,dev,bench]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dsprep demo demo-work

test: $(STAMP)
	$(BIN)/ruff check dsprep tests tools
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check dsprep tests tools

bench: $(STAMP)
	$(BIN)/python tools/bench/bench_split.py
	$(BIN)/python tools/bench/bench_images.py
	$(BIN)/python tools/bench/bench_build.py
	$(BIN)/python tools/bench/bench_generators.py
	$(BIN)/python tools/bench/bench_train.py

clean:
	rm -rf $(VENV) demo-work bench-work .pytest_cache .ruff_cache
