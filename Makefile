# `make book` sets everything up and builds the report; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GRID ?= grids/demo.yaml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo grid book test clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("facebench needs Python >= 3.10" if sys.version_info < (3, 10) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: $(STAMP)
	$(BIN)/facebench demo build
	$(BIN)/facebench data check demo

grid: demo
	$(BIN)/facebench grid $(GRID)

book: grid
	$(BIN)/jupyter-book build . -n -W --keep-going
	@echo "open _build/html/index.html"

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf _build book/runs book/results.ipynb
