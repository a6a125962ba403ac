import json

import nbformat
import pytest

from facebench.grid import STATUS_FILE, Renderer, load_grid, notebook_state, run_grid, toc
from facebench.models import ModelSpec
from facebench.report import collect, main_table

from conftest import ROOT, copy_book_sources, write_grid

QUIET = dict(log=lambda *_: None)


def test_cells_are_named_model__dataset_with_merged_parameters(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", base=str(ROOT), parameters={"batch_size": 4, "limit": 10},
                      models=["dlib", {"model": "dlib", "label": "dlib-b2", "parameters": {"batch_size": 2}}],
                      datasets=["demo"])
    cells = load_grid(grid)["cells"]
    assert [c["name"] for c in cells] == ["dlib__demo", "dlib-b2__demo"]
    assert cells[0]["parameters"] == {"batch_size": 4, "limit": 10, "model": "dlib", "dataset": "demo",
                                      "out": str(ROOT / "results")}
    assert cells[1]["parameters"]["batch_size"] == 2


def test_a_grid_names_its_book_and_pages_after_itself(tmp_path):
    grid = load_grid(write_grid(tmp_path / "mine.yaml", base=str(tmp_path), name=None, book=None))
    assert grid["name"] == "mine" and grid["book"] == tmp_path / "studies" / "mine"
    assert grid["runs_dir"] == tmp_path / "studies" / "mine" / "book" / "runs"
    assert [s["output"] for s in grid["summaries"]][0] == tmp_path / "studies" / "mine" / "book" / "results.ipynb"
    demo = load_grid(ROOT / "grids" / "demo.yaml")
    assert demo["book"] == ROOT and (ROOT / "_toc.yml").read_text() == toc(demo)  # the checkout's toc is the demo's


@pytest.mark.parametrize("changes, message", [
    ({"paramters": {"limit": 4}}, r"g\.yaml: unknown top-level key\(s\) 'paramters' \(did you mean 'parameters'\?\)"),
    ({"parameters": {"batch_sise": 4}}, r"g\.yaml: parameters: unknown key\(s\) 'batch_sise' .*'batch_size'"),
    ({"models": [{"model": "dlib", "parameters": {"settings": {"num_jiters": 1}}}]},
     r"g\.yaml: model 'dlib': unknown setting\(s\) \['num_jiters'\]"),
    ({"models": ["dlbi"]}, r"g\.yaml: unknown model 'dlbi'\. Did you mean 'dlib'"),
    ({"datasets": ["dmeo"]}, r"g\.yaml: unknown dataset 'dmeo'\. Did you mean 'demo'"),
    ({"datasets": ["../demo"]}, r"g\.yaml: dataset '\.\./demo' must be a plain name"),
    ({"models": [{"model": "dlib", "label": "../../etc/x"}]}, r"g\.yaml: label '\.\./\.\./etc/x' must be a plain name"),
    ({"models": [{"model": "dlib", "label": "a/b"}]}, r"label 'a/b' must be a plain name"),
    ({"name": "x/..", "models": ["dlib"]}, r"g\.yaml: name 'x/\.\.' must be a plain name"),
    ({"headline": {"fr": "arcface-r50"}}, r"headline fr: 'arcface-r50' is not one of the grid's model labels"),
    ({"summaries": [{"notebook": "notebooks/results.md", "output": "x.ipynb"}]}, r"a summaries entry is"),
])
def test_bad_grid_files_are_refused_before_any_cell_runs(tmp_path, changes, message):
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", **changes)
    with pytest.raises(ValueError, match=message):
        run_grid(grid, **QUIET)
    assert not (project / "book" / "runs").exists() and not (project / "results").exists()


def test_a_missing_key_names_the_file_and_key(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("notebook: x.md\nmodels: [dlib]\n")
    with pytest.raises(ValueError, match=r"g\.yaml.*'datasets'"):
        load_grid(grid)


def test_demo_grid_scores_then_renders_every_page(demo_project):
    project, status = demo_project
    by_name = {c["name"]: c["status"] for c in status["cells"]}
    assert by_name.pop("arcface-r50__demo") == "not available"  # its weights file is not in the checkout
    assert set(by_name.values()) == {"complete"} and "negative-control-fr__demo" in by_name
    runs = project / "book" / "runs"
    nb = nbformat.read(runs / "negative-control-fr__demo.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# negative-control (prompt=fr-ouinon) on demo")
    assert not any("injected-parameters" in c.metadata.get("tags", []) and "remove-cell" not in c.metadata["tags"]
                   for c in nb.cells)  # papermill's cell of machine paths stays off the page
    nb = nbformat.read(runs / "dlib__demo.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters["model"] == "dlib" and "batch_size" not in nb.metadata.papermill.parameters
    assert not nb.metadata.papermill.get("exception") and nb.metadata.facebench.key
    assert nb.cells[0].source.startswith("# dlib on demo")
    assert any(o.get("data", {}).get("image/svg+xml") for c in nb.cells for o in c.get("outputs", []))
    unavailable = nbformat.read(runs / "arcface-r50__demo.ipynb", as_version=4)  # a page that says why
    assert "Not available" in unavailable.cells[1].source and "w600k_r50.onnx" in unavailable.cells[1].source
    assert (project / "book" / "results.ipynb").exists()
    assert (project / "_toc.yml").read_text() == toc(load_grid(project / "grids" / "demo.yaml"))
    recorded = json.loads((runs / STATUS_FILE).read_text())
    assert recorded["cells"][0]["status"] == "complete" and "finished" in recorded


def test_fresh_pages_are_skipped_and_nothing_is_scored_again(demo_project, monkeypatch):
    project, _ = demo_project
    grid = project / "grids" / "demo.yaml"
    notebook = project / "book" / "runs" / "dlib__demo.ipynb"
    before = notebook.stat().st_mtime_ns
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail(f"{self.spec} was loaded"))
    lines = []
    run_grid(grid, log=lines.append)
    assert any("dlib__demo: page is fresh, skipped" in line for line in lines)
    assert not [line for line in lines if "rendering" in line]
    assert notebook.stat().st_mtime_ns == before


def test_a_changed_run_or_template_renders_the_page_again(tmp_path, monkeypatch):
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", parameters={"limit": 6}, summaries=[])
    run_grid(grid, **QUIET)
    page = project / "book" / "runs" / "dlib__demo.ipynb"
    key = notebook_state(page)["key"]

    template = project / "notebooks" / "evaluate.md"
    template.write_text(template.read_text() + "\nA sentence added to the template.\n\n"
                        "```{code-cell} ipython3\nprint('a cell added in JupyterLab')\n```\n")
    lines = []
    run_grid(grid, log=lines.append)
    assert any("dlib__demo: rendering" in line for line in lines)
    assert "A sentence added to the template." in page.read_text() and notebook_state(page)["key"] != key
    added = nbformat.read(page, as_version=4).cells[-1]
    assert added.outputs[0]["text"] == "a cell added in JupyterLab\n" and added.metadata.tags == ["hide-input"]

    # The run changes (here: more pairs, as a later `facebench evaluate` stores them).
    key = notebook_state(page)["key"]
    write_grid(grid, parameters={"limit": 12}, summaries=[])
    lines.clear()
    run_grid(grid, log=lines.append)
    assert any("dlib__demo: rendering" in line for line in lines) and notebook_state(page)["key"] != key

    # Nothing changes, but force=True (`facebench grid --force`) renders the fresh page again, with its
    # own key, and scores nothing. (Rendering is recorded, not run: the page was just rendered for real.)
    rendered = []
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail(f"{self.spec} was loaded"))
    monkeypatch.setattr(Renderer, "render", lambda self, source, output, params, **kw: rendered.append((output, kw)))
    lines.clear()
    run_grid(grid, log=lines.append)
    assert any("dlib__demo: page is fresh, skipped" in line for line in lines) and not rendered
    run_grid(grid, force=True, log=lines.append)
    assert rendered == [(page, {"key": notebook_state(page)["key"], "title": rendered[0][1]["title"]})]

    # A render that fails outside any cell (the kernel died) leaves no stale page: it says so instead.
    def dies(self, *args, **kwargs):
        raise RuntimeError("Kernel died before replying to execute_request")
    monkeypatch.setattr(Renderer, "render", dies)
    status = run_grid(grid, force=True, **QUIET)
    assert status["cells"][0]["status"] == "failed" and "Kernel died" in status["cells"][0]["error"]
    assert "Rendering failed" in page.read_text() and notebook_state(page)["key"] is None


def test_a_cell_whose_scoring_fails_gets_a_failed_page_and_the_others_still_run(tmp_path):
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "mixed.yaml", parameters={"limit": 6}, summaries=[],
                      datasets=[{"dataset": "lfw", "parameters": {"root": str(tmp_path / "nowhere")}}, "demo"])
    status = run_grid(grid, **QUIET)
    by_name = {c["name"]: c for c in status["cells"]}
    assert by_name["dlib__demo"]["status"] == "complete"
    assert by_name["dlib__lfw"]["status"] == "failed"
    assert "nowhere/lfw does not exist" in by_name["dlib__lfw"]["error"]
    page = nbformat.read(project / "book" / "runs" / "dlib__lfw.ipynb", as_version=4)
    assert page.metadata.papermill.exception is True and page.metadata.facebench.status == "failed"
    assert page.cells[0].source == "# dlib on lfw" and "Scoring failed" in page.cells[1].source
    assert "DatasetError" in page.cells[2].source  # the traceback
    results = collect(grid).set_index("cell")
    assert results.loc["dlib__lfw", "status"] == "failed"
    assert results.loc["dlib__demo", "n_pairs"] == 6
    table = main_table(results.reset_index())
    assert table.loc[("dlib", "k-fold accuracy"), "lfw"] == "failed"


def test_model_this_machine_cannot_run_is_recorded_as_not_available(tmp_path, monkeypatch):
    from facebench.backends.dlib_resnet import DlibResNet

    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", summaries=[])
    monkeypatch.setattr(DlibResNet, "unavailable", classmethod(lambda cls, s: "place FILE under data/models/"))
    status = run_grid(grid, **QUIET)
    assert status["cells"][0]["status"] == "not available"
    assert notebook_state(project / "book" / "runs" / "dlib__demo.ipynb")["status"] == "not available"
    results = collect(grid).set_index("cell")
    assert results.loc["dlib__demo", "status"] == "not available"
    assert results.loc["dlib__demo", "error"] == "place FILE under data/models/"


def test_labelled_entries_name_their_cells_and_may_keep_to_some_datasets(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", base=str(ROOT), datasets=["demo", "lfw"], models=[
        "dlib", {"model": "dlib", "label": "dlib-jitter", "datasets": ["lfw"],
                 "parameters": {"settings": {"num_jitters": 1}}}])
    cells = {c["name"]: c for c in load_grid(grid)["cells"]}
    assert list(cells) == ["dlib__demo", "dlib__lfw", "dlib-jitter__lfw"]
    assert cells["dlib-jitter__lfw"]["parameters"]["settings"] == {"num_jitters": 1}
    with pytest.raises(ValueError, match=r"two cells are named 'dlib__demo'.*label"):
        load_grid(write_grid(tmp_path / "dup.yaml", models=["dlib", {"model": "dlib", "parameters": {}}]))
    with pytest.raises(ValueError, match=r"lists datasets \['cfp'\]"):
        load_grid(write_grid(tmp_path / "bad.yaml", models=[{"model": "dlib", "label": "x", "datasets": ["cfp"]}]))


def test_the_toc_lists_every_page_grouped_by_dataset_in_grid_order(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.yaml", base=str(ROOT), datasets=["lfw", "demo"],
                                models=["negative-control", "dlib"]))
    text = toc(grid)
    order = ["book/runs/lfw\n", "book/runs/negative-control__lfw", "book/runs/dlib__lfw", "book/runs/demo\n",
             "book/runs/negative-control__demo", "book/runs/dlib__demo"]
    positions = [text.index(f"file: {entry}") for entry in order]
    assert positions == sorted(positions)
    assert "glob" not in text


def test_only_some_cells_are_scored_and_rendered_by_name_or_glob(tmp_path, monkeypatch, capsys):
    from facebench import cli

    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", parameters={"limit": 6}, summaries=[],
                      models=["dlib", {"model": "dlib", "label": "dlib-up0", "parameters": {"settings": {"upsample": 0}}}])
    run_grid(grid, only=["dlib-*"], **QUIET)
    runs = project / "book" / "runs"
    assert (runs / "dlib-up0__demo.ipynb").exists() and not (runs / "dlib__demo.ipynb").exists()
    run_grid(grid, **QUIET)
    pages = {p: p.stat().st_mtime_ns for p in runs.glob("*__demo.ipynb")}
    # One page again from its stored run: no model, the other page untouched, the status of both kept.
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail(f"{self.spec} was loaded"))
    assert cli.main(["render", str(grid), "dlib__demo"]) == 0
    assert "2 cells: 2 complete" in capsys.readouterr().out
    assert (runs / "dlib__demo.ipynb").stat().st_mtime_ns != pages[runs / "dlib__demo.ipynb"]
    assert (runs / "dlib-up0__demo.ipynb").stat().st_mtime_ns == pages[runs / "dlib-up0__demo.ipynb"]
    assert nbformat.read(runs / "dlib__demo.ipynb", as_version=4).cells[0].source.startswith("# dlib on demo")
    assert cli.main(["render", str(grid), "dlbi__demo"]) == 2
    assert "unknown cell 'dlbi__demo'. Did you mean 'dlib__demo'" in capsys.readouterr().err


def test_a_moved_checkout_keeps_its_pages_fresh(demo_project, tmp_path):
    import shutil

    project, _ = demo_project
    run_grid(project / "grids" / "demo.yaml", **QUIET)  # fresh as of this code
    moved = tmp_path / "elsewhere"
    shutil.copytree(project, moved, ignore=shutil.ignore_patterns("_build"))
    lines = []
    run_grid(moved / "grids" / "demo.yaml", log=lines.append)
    assert not [line for line in lines if "rendering" in line]


def test_every_notebook_runs_from_the_notebooks_folder_as_jupyterlab_starts_it(tmp_path):
    """Lab starts a notebook's kernel in its folder: the templates' default paths must not depend on it."""
    import jupytext

    from facebench.grid import Renderer

    with Renderer(ROOT / "notebooks", tmp_path) as renderer:
        for source in sorted((ROOT / "notebooks").glob("*.md")):
            defaults = {}  # the parameters cell as written, run as is
            renderer.render(source, tmp_path / f"{source.stem}.ipynb", defaults)
            nb = jupytext.read(tmp_path / f"{source.stem}.ipynb")
            assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not list((ROOT / "notebooks").glob("*.ipynb"))


def test_sigterm_is_recorded_like_ctrl_c_and_a_failed_cell_fails_the_command(tmp_path):
    """`timeout` or SLURM's scancel: exit 143, the unfinished cell marked interrupted, and a rerun resumes."""
    import signal
    import subprocess
    import time

    from conftest import BIN

    project = copy_book_sources(tmp_path)
    # A server that never answers: each pair waits through its retries, long enough to be stopped.
    grid = write_grid(project / "grids" / "g.yaml", summaries=[], parameters={"limit": 4},
                      models=[{"model": "api:m@http://127.0.0.1:9/v1", "label": "stuck"}])
    proc = subprocess.Popen([str(BIN / "facebench"), "grid", str(grid)], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while "scoring" not in proc.stdout.readline() and time.monotonic() < deadline:
        pass
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    recorded = json.loads((project / "book" / "runs" / STATUS_FILE).read_text())
    assert recorded["cells"][0]["status"] == "interrupted" and "interrupted" in recorded
    from facebench import cli

    failing = write_grid(project / "grids" / "f.yaml", summaries=[], parameters={"limit": 4},
                         datasets=[{"dataset": "lfw", "parameters": {"root": str(tmp_path / "nowhere")}}])
    assert cli.main(["grid", str(failing)]) == 1
    assert cli.main(["grid", str(failing), "--allow-failures"]) == 0
