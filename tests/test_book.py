import ast
import re
import subprocess
from pathlib import Path

import jupytext
import pytest

from facebench.grid import load_grid, run_grid
from facebench.report import collect

from conftest import BIN, ROOT

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.md"))


def test_book_builds_with_warnings_as_errors_and_shows_the_results(demo_project):
    project, _ = demo_project
    build = subprocess.run([str(BIN / "jupyter-book"), "build", str(project), "-n", "-W", "--keep-going"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    pages = project / "_build" / "html" / "book"
    html = (pages / "results.html").read_text()
    m = collect(project / "grids" / "demo.yaml").set_index("cell").loc["dlib__demo"]
    cell = f"{100 * m['accuracy_mean']:.2f} ± {100 * m['accuracy_std']:.2f}"
    assert re.search(r"<table[^>]*>.*dlib.*" + re.escape(cell), html, re.S), "main table missing"
    intro = (pages / "intro.html").read_text()
    assert f"{m['accuracy_mean']:.1%}" in intro  # glued from the results notebook
    assert (pages / "runs" / "dlib__demo.html").exists()
    # every chapter is there; sections whose runs do not exist yet say so
    beyond = (pages / "beyond_the_paper.html").read_text()
    assert "facellm-8b vs internvl3-8b" in beyond  # not in the demo grid: says "not run"
    # the negative control's variants fill the order and prompt sections
    for shows in ("negative-control-both-orders", "fr-ouinon@v1", "zh-shifou@v1", "score-0-100@v1"):
        assert shows in beyond, shows
    assert "hardest-pairs" in beyond and "1000</span>" in beyond  # gallery, and the glued resample count
    protocol = (pages / "protocol.html").read_text()
    assert "Answer with yes or no." in protocol and "&lt;|image_pad|&gt;" in protocol  # the prompt, verbatim
    assert "no dataset whose pairs carry groups (RFW) is complete" in (pages / "rfw.html").read_text()
    reported = (pages / "reported_vs_reproduced.html").read_text()
    assert "99.38" in reported and "not run" in reported and "dnn_face_recognition_ex.cpp" in reported
    # MathJax comes from the book, not a CDN
    assert "_static/mathjax/tex-mml-chtml.js" in intro and "cdn.jsdelivr" not in intro


def test_editing_an_analysis_rerenders_it_without_model_inference(demo_project, monkeypatch):
    """The promise of `make book` after editing notebooks/*.md: that page renders again, nothing is scored."""
    from facebench.models import ModelSpec

    project, _ = demo_project
    grid_path = project / "grids" / "demo.yaml"
    source, output = project / "notebooks" / "results.md", project / "book" / "results.ipynb"
    cell_page = project / "book" / "runs" / "dlib__demo.ipynb"
    stores = sorted((project / "results").rglob("*.sqlite")) + sorted((project / "results").rglob("manifest.json"))
    before = {p: p.stat().st_mtime_ns for p in [cell_page, *stores]}
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail(f"{self.spec} was loaded"))
    original = source.read_text()
    marker = "An analysis edited after the runs."
    try:
        source.write_text(original + f"\n{marker}\n")
        log = []
        run_grid(grid_path, log=log.append)
        assert [line for line in log if "rendering" in line] == ["summary results.ipynb: rendering"]
        assert {p: p.stat().st_mtime_ns for p in before} == before  # no page of a cell, no stored pair rewritten
        assert marker in output.read_text()
    finally:
        source.write_text(original)
        run_grid(grid_path, log=lambda *_: None)
    assert marker not in output.read_text()


def test_every_summary_notebook_of_the_grid_is_a_page_of_the_book():
    grid = load_grid(ROOT / "grids" / "demo.yaml")
    toc = (ROOT / "_toc.yml").read_text()
    for s in grid["summaries"]:
        assert s["notebook"].exists()
        page = s["output"].relative_to(ROOT).with_suffix("").as_posix()
        assert f"file: {page}\n" in toc, page


def test_a_grid_of_your_own_becomes_its_own_book(demo_project, tmp_path):
    """Another layout, another data root, dlib and the control, a run imported from elsewhere:
    its own book, built with -W, in which the demo's pages neither appear nor get overwritten."""
    import numpy as np

    from facebench.importing import import_results
    from facebench.integrity import preflight
    from layout_fixtures import make_calfw

    project, _ = demo_project
    demo_pages = {p: p.stat().st_mtime_ns for p in (project / "book").rglob("*.ipynb")}
    root = tmp_path / "data"
    make_calfw(root / "calfw", n_pos=10, n_neg=10)
    grid = project / "grids" / "mine.yaml"
    grid.write_text(f"""
name: mine
base: ..
notebook: notebooks/evaluate.md
results_dir: {tmp_path / "results"}
parameters: {{root: {root}}}
models: [dlib, negative-control, hf:org/outside-model]
datasets: [calfw]
summaries: [notebooks/results.md, notebooks/rfw.md, notebooks/beyond_the_paper.md,
            notebooks/reported_vs_reproduced.md]
""")
    pairs = preflight("calfw", root).pairs  # an outside run of a model this machine cannot load
    scores = np.random.default_rng(0).normal(pairs["same"].to_numpy(float), 1.0)
    (tmp_path / "outside.csv").write_text("pair_id,score\n" + "".join(f"{i},{v}\n" for i, v in zip(pairs["pair_id"], scores)))
    import_results(tmp_path / "outside.csv", model="hf:org/outside-model", dataset="calfw", root=root,
                   out=tmp_path / "results")
    status = run_grid(grid, log=lambda *_: None)
    assert [c["status"] for c in status["cells"]] == ["complete"] * 3
    from facebench import cli

    assert cli.main(["book", str(grid)]) == 0  # jupyter-book's own messages are in the captured output
    book = project / "studies" / "mine"
    pages = book / "_build" / "html" / "book"
    assert sorted(p.name for p in (pages / "runs").glob("*.html")) == [
        "calfw.html", "dlib__calfw.html", "hf-org--outside-model__calfw.html", "negative-control__calfw.html"]
    intro = (pages / "intro.html").read_text()
    assert "study <strong>mine</strong>" in intro and "negative control" in intro
    assert "outside.csv" in (pages / "runs" / "hf-org--outside-model__calfw.html").read_text()
    assert "demo" not in (book / "_toc.yml").read_text()
    assert {p: p.stat().st_mtime_ns for p in demo_pages} == demo_pages


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_hold_no_logic_and_one_literal_parameters_cell(path):
    nb = jupytext.read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    parameters = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    for node in ast.parse(parameters[0].source).body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), \
            f"{path.name}: the parameters cell holds literals only, got {ast.dump(node)[:80]}"
    for cell in code:
        defined = [n for n in ast.walk(ast.parse(cell.source))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defined, f"{path.name}: logic belongs in facebench.report, not in a notebook"
    headings = [c.source for c in nb.cells if c.cell_type == "markdown" and re.search(r"^# ", c.source, re.M)]
    assert headings, f"{path.name}: no title"


def test_notebooks_open_in_jupyterlab_as_paired_notebooks():
    from jupytext.config import load_jupytext_configuration_file
    from jupytext.paired_paths import paired_paths

    config = load_jupytext_configuration_file(str(ROOT / "jupytext.toml"))
    for path in NOTEBOOKS:
        formats = config.default_formats(str(path))
        paths = [Path(p) for p, _ in paired_paths(str(path), "md:myst", formats)]
        assert paths == [path, ROOT / "_build" / "lab" / f"{path.stem}.ipynb"]
    assert config.default_formats(str(ROOT / "book" / "intro.md")) is None  # prose pages stay Markdown
    overrides = (ROOT / ".jupyter" / "lab-overrides.json").read_text()
    assert '"markdown": "Editor"' in overrides  # README.md and book/*.md; notebooks open through their pairs


def test_make_lab_installs_the_overrides_and_opens_the_checkout(tmp_path):
    """`make lab` run for real, with a stand-in `jupyter` that records where and how it was started."""
    bin_dir, called, settings = tmp_path / "bin", tmp_path / "called", tmp_path / "settings"
    bin_dir.mkdir()
    (bin_dir / "jupyter").write_text(f'#!/bin/sh\npwd > "{called}"\necho "$@" >> "{called}"\n')
    (bin_dir / "jupyter").chmod(0o755)
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "$@" > "{tmp_path / "pairs"}"\n')  # the pairs it would write
    (bin_dir / "python").chmod(0o755)
    stamp = tmp_path / "installed"
    stamp.touch()  # newer than requirements.txt: the install step has nothing to do
    subprocess.run(["make", "-C", str(ROOT), "lab", f"BIN={bin_dir}", f"STAMP={stamp}", f"LAB_SETTINGS={settings}",
                    "LAB_ARGS=--no-browser"], check=True, capture_output=True, text=True, timeout=60)
    cwd, args = called.read_text().splitlines()
    assert Path(cwd) == ROOT and args.split()[:2] == ["lab", "--notebook-dir=."] and args.endswith("--no-browser")
    assert (settings / "overrides.json").read_text() == (ROOT / ".jupyter" / "lab-overrides.json").read_text()
    assert (tmp_path / "pairs").read_text().split()[:3] == ["-m", "facebench.lab", "_build/lab"]


def test_ci_installs_chromium_when_missing():
    script = (ROOT / ".ci" / "run").read_text()
    assert "apt-get install -y -qq chromium" in script and "[ ! -x /usr/bin/chromium ]" in script
    assert script.index("chromium") < script.index("make test")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_a_save_from_jupyterlab_changes_nothing_the_user_did_not_change(path):
    """What Lab adds on open and save (jupytext's version, cell metadata from editing) stays out of the file."""
    from jupytext.config import load_jupytext_configuration_file

    config = load_jupytext_configuration_file(str(ROOT / "jupytext.toml"))
    nb = jupytext.read(path)
    nb.metadata["jupytext"]["text_representation"]["jupytext_version"] = "1.19.6"
    for cell in nb.cells:
        cell.metadata.update({"editable": True, "deletable": True, "slideshow": {"slide_type": ""}})
    saved = jupytext.writes(nb, fmt="md:myst", config=config)
    assert saved == path.read_text()
    assert any("parameters" in c.metadata.get("tags", []) for c in jupytext.reads(saved, fmt="md:myst").cells)
