# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MINUTES ?= 15

.PHONY: install demo pretrain test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of PyTorch, pinned: an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded en-fr Bible (see README): a short MASS pre-training on en+fr.
demo: $(STAMP)
	$(BIN)/mass demo --minutes $(MINUTES)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/pip install --quiet -e ".[hf]"
	$(BIN)/python benchmarks/pretrain_speed.py

clean:
	rm -rf $(VENV) runs
