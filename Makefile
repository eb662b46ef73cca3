# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

LINTED := src tests experiments benchmarks

.PHONY: help demo test venv bench lint clean

help:  ## this list (the first target: plain `make` shows it)
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z]+):.*## /  make \1\t/' | expand -t 14

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch torchvision
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)  ## make .venv and install the package with its test dependencies

demo: $(STAMP)  ## train and report the synthetic demo
	$(VENV)/bin/contrastlab demo

test: $(STAMP)  ## the test suite (two processes: pytest-xdist)
	$(PY) -m pytest -n 2

bench: $(STAMP)  ## the training-step benchmark (installs lightly, the bench extra)
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(PY) benchmarks/train_step.py

lint: $(STAMP)  ## ruff format --check and ruff check on the Python sources (installs the lint extra)
	$(PIP) install -q -c constraints.txt -e '.[lint]'
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)

clean:  ## remove .venv and runs/demo
	rm -rf $(VENV) runs/demo
