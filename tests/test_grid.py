import json

import nbformat
import pytest

from facebench.grid import STATUS_FILE, load_grid, run_grid
from facebench.report import collect, main_table

from conftest import ROOT, copy_book_sources, write_grid


def test_cells_are_named_model__dataset_with_merged_parameters(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", base=str(ROOT), parameters={"batch_size": 4, "limit": 10},
                      models=["dlib", {"model": "dlib", "label": "dlib-b2", "parameters": {"batch_size": 2}}],
                      datasets=["demo"])
    cells = load_grid(grid)["cells"]
    assert [c["name"] for c in cells] == ["dlib__demo", "dlib-b2__demo"]
    assert cells[0]["parameters"] == {"batch_size": 4, "limit": 10, "model": "dlib", "dataset": "demo",
                                      "out": str(ROOT / "results")}
    assert cells[1]["parameters"]["batch_size"] == 2


def test_grid_file_errors_name_the_file_and_key(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("notebook: x.md\noutput_dir: out\nmodels: [dlib]\n")
    with pytest.raises(ValueError, match=r"g\.yaml.*'datasets'"):
        load_grid(grid)


def test_unknown_parameter_fails_before_any_cell_runs(tmp_path):
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "typo.yaml", parameters={"batch_sise": 4})
    with pytest.raises(ValueError, match=r"evaluate\.md.*batch_sise.*declares"):
        run_grid(grid, log=lambda *_: None)
    assert not (project / "book" / "runs").exists()


def test_demo_grid_executes_the_notebook(demo_project):
    project, status = demo_project
    by_name = {c["name"]: c["status"] for c in status["cells"]}
    assert by_name.pop("arcface-r50__demo") == "not available"  # its weights file is not in the checkout
    assert set(by_name.values()) == {"complete"} and "negative-control-fr__demo" in by_name
    nb = nbformat.read(project / "book" / "runs" / "negative-control-fr__demo.ipynb", as_version=4)
    assert nb.cells[0].source.startswith("# negative-control (prompt=fr-ouinon) on demo")
    assert not any("injected-parameters" in c.metadata.get("tags", []) and "remove-cell" not in c.metadata["tags"]
                   for c in nb.cells)  # papermill's cell of machine paths stays off the page
    nb = nbformat.read(project / "book" / "runs" / "dlib__demo.ipynb", as_version=4)
    assert nb.metadata.papermill.parameters["model"] == "dlib"
    assert not nb.metadata.papermill.get("exception")
    assert nb.cells[0].source.startswith("# dlib on demo")
    assert any(o.get("data", {}).get("image/svg+xml") for c in nb.cells for o in c.get("outputs", []))
    assert (project / "book" / "results.ipynb").exists()
    recorded = json.loads((project / "book" / "runs" / STATUS_FILE).read_text())
    assert recorded["cells"][0]["status"] == "complete"


def test_complete_cells_are_skipped_unless_forced(demo_project):
    project, _ = demo_project
    grid = project / "grids" / "demo.yaml"
    notebook = project / "book" / "runs" / "dlib__demo.ipynb"
    before = notebook.stat().st_mtime_ns
    lines = []
    run_grid(grid, log=lines.append)
    assert any("skipped" in line for line in lines)
    assert notebook.stat().st_mtime_ns == before


def test_failing_cell_is_recorded_and_others_still_run(tmp_path):
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "mixed.yaml", parameters={"limit": 6}, datasets=["dmeo", "demo"])
    status = run_grid(grid, log=lambda *_: None)
    by_name = {c["name"]: c for c in status["cells"]}
    assert by_name["dlib__demo"]["status"] == "complete"
    assert by_name["dlib__dmeo"]["status"] == "failed"
    assert "demo" in by_name["dlib__dmeo"]["error"]  # the error suggests the right name
    results = collect(grid).set_index("cell")
    assert results.loc["dlib__dmeo", "status"] == "failed"
    assert results.loc["dlib__demo", "n_pairs"] == 6
    table = main_table(results.reset_index())
    assert table.loc["dlib", "dmeo"] == "failed"


def test_model_this_machine_cannot_run_is_recorded_as_not_available(tmp_path, monkeypatch):
    from facebench.backends.dlib_resnet import DlibResNet

    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", summaries=[])
    monkeypatch.setattr(DlibResNet, "unavailable", classmethod(lambda cls, s: "place FILE under data/models/"))
    status = run_grid(grid, log=lambda *_: None)
    assert status["cells"][0]["status"] == "not available"
    assert not (project / "book" / "runs" / "dlib__demo.ipynb").exists()
    results = collect(grid).set_index("cell")
    assert results.loc["dlib__demo", "status"] == "not available"
    assert results.loc["dlib__demo", "error"] == "place FILE under data/models/"


def test_unknown_model_fails_before_any_cell_runs(tmp_path):
    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", models=["dlib", "dlbi"])
    with pytest.raises(ValueError, match="dlbi.*Did you mean 'dlib'"):
        run_grid(grid, log=lambda *_: None)
    assert not (project / "book" / "runs").exists()


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
