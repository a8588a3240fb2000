# nrinv: `make install && make demo`, `make test`
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lint test test-all demo bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch would pull the multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test,app]'

lint:
	$(BIN)/python -m ruff check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q

test-all:
	$(BIN)/python -m pytest -q -m ''

demo:
	$(BIN)/nrinv demo

bench:
	$(BIN)/nrinv bench --out benchmarks/latest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache nrinv-demo
