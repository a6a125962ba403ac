"""Run a grid of (model, dataset) cells, each a papermill execution of one notebook.

A grid file (YAML) holds everything: the template notebook, where executed
notebooks go, default parameters, the models, the datasets, and summary
notebooks run afterwards. Executed notebooks are named ``<model>__<dataset>``.
A cell whose notebook already ran without error with the same parameters is
skipped unless ``force``; a failing cell is recorded and the others still run.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import yaml

from facebench.provenance import now
from facebench.store import model_slug, write_json_atomic

STATUS_FILE = "_grid_status.json"


def load_grid(path) -> dict:
    """Read a grid file; relative paths in it resolve against its ``base`` folder."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    for key in ("notebook", "output_dir", "models", "datasets"):
        if key not in doc:
            raise ValueError(f"{path}: grid file lacks {key!r}")
    base = (path.parent / doc.get("base", ".")).resolve()
    doc["base"] = base
    for key in ("notebook", "output_dir", "results_dir"):
        if doc.get(key):
            doc[key] = base / doc[key]
    for s in doc.get("summaries", []):
        s["notebook"], s["output"] = base / s["notebook"], base / s["output"]
    doc["cells"] = list(_cells(doc, path))
    return doc


def _entry(item, what: str, path) -> tuple[str, dict]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and what in item:
        return item[what], dict(item.get("parameters") or {})
    raise ValueError(f"{path}: a {what}s entry must be a name or {{{what}: NAME, parameters: {{...}}}}, got {item!r}")


def _cells(doc: dict, path):
    defaults = dict(doc.get("parameters") or {})
    for m in doc["models"]:
        model, mparams = _entry(m, "model", path)
        for d in doc["datasets"]:
            dataset, dparams = _entry(d, "dataset", path)
            params = {**defaults, **mparams, **dparams, "model": model, "dataset": dataset}
            if doc.get("results_dir"):
                params["out"] = str(doc["results_dir"])
            yield {"name": f"{model_slug(model)}__{dataset}", "parameters": params}


def notebook_from_source(source: Path, tmpdir: Path) -> Path:
    """A jupytext ``.md`` as an ``.ipynb`` papermill can execute (``.ipynb`` passes through)."""
    if source.suffix == ".ipynb":
        return source
    import jupytext

    target = tmpdir / f"{source.stem}.ipynb"
    jupytext.write(jupytext.read(source), target)
    return target


def check_parameters(notebook: Path, params: dict, *, source: Path) -> None:
    """Refuse parameters the notebook does not declare (papermill would only warn)."""
    import papermill

    declared = set(papermill.inspect_notebook(str(notebook)))
    if not declared:
        raise ValueError(f"{source}: no cell tagged 'parameters'")
    unknown = sorted(set(params) - declared)
    if unknown:
        raise ValueError(f"{source}: unknown parameter(s) {unknown}; the notebook declares {sorted(declared)}")


def notebook_state(path: Path) -> dict | None:
    """Parameters and error flag papermill recorded in an executed notebook, or None."""
    import nbformat

    if not path.exists():
        return None
    meta = nbformat.read(path, as_version=4).metadata.get("papermill", {})
    return {"parameters": meta.get("parameters", {}), "exception": bool(meta.get("exception"))}


def execute(source: Path, output: Path, params: dict, *, cwd: Path, tmpdir: Path) -> None:
    import papermill

    notebook = notebook_from_source(source, tmpdir)
    check_parameters(notebook, params, source=source)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=params, cwd=str(cwd),
                                   kernel_name="python3", progress_bar=False)
    finally:
        _title(output, params)


def _title(path: Path, params: dict) -> None:
    """Fill the template's ``# {model} on {dataset}`` heading, so each run page has its own title."""
    import nbformat

    if not path.exists():
        return
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            title, _, rest = cell.source.partition("\n")
            cell.source = title.format_map({k: v for k, v in params.items()}) + _ + rest
            break
    nbformat.write(nb, path)


def run_grid(path, *, force: bool = False, log=print) -> dict:
    """Execute every cell of the grid file at ``path``, then its summaries; returns the status."""
    grid = load_grid(path)
    out_dir: Path = grid["output_dir"]
    status = {"grid": str(Path(path).resolve()), "started": now(), "cells": []}
    # Progress bars inside the notebooks would land in their outputs.
    os.environ.setdefault("FACEBENCH_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        cells = grid["cells"]
        # A misspelt parameter fails the grid before any cell runs.
        template = notebook_from_source(grid["notebook"], Path(tmp))
        for cell in cells:
            check_parameters(template, cell["parameters"], source=grid["notebook"])
        # An unknown model name also fails before any cell runs; a known model this
        # machine cannot run (no weights file, no package) is recorded, not failed.
        unavailable = {m: unavailable_reason(m) for m in dict.fromkeys(c["parameters"]["model"] for c in cells)}
        for i, cell in enumerate(cells, 1):
            output = out_dir / f"{cell['name']}.ipynb"
            state = notebook_state(output)
            entry = {"name": cell["name"], "notebook": str(output), "parameters": cell["parameters"]}
            why = unavailable[cell["parameters"]["model"]]
            if why:
                log(f"[{i}/{len(cells)}] {cell['name']}: not available: {why}")
                status["cells"].append({**entry, "status": "not available", "error": why, "seconds": 0.0})
                continue
            if not force and state and not state["exception"] and state["parameters"] == cell["parameters"]:
                log(f"[{i}/{len(cells)}] {cell['name']}: complete, skipped (--force re-runs it)")
                status["cells"].append({**entry, "status": "complete", "seconds": 0.0})
                continue
            log(f"[{i}/{len(cells)}] {cell['name']}: running")
            t0 = time.perf_counter()
            try:
                execute(grid["notebook"], output, cell["parameters"], cwd=grid["base"], tmpdir=Path(tmp))
                entry["status"], entry["error"] = "complete", None
            except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the grid
                entry["status"], entry["error"] = "failed", _short_error(exc)
                log(f"[{i}/{len(cells)}] {cell['name']}: FAILED: {entry['error']}")
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            status["cells"].append(entry)
            write_json_atomic(out_dir / STATUS_FILE, status)
        write_json_atomic(out_dir / STATUS_FILE, {**status, "finished": now()})
        for s in grid.get("summaries", []):
            log(f"summary {s['output'].name}: running")
            execute(s["notebook"], s["output"], {"grid": str(Path(path).resolve())}, cwd=grid["base"],
                    tmpdir=Path(tmp))
    return status


def unavailable_reason(model: str) -> str | None:
    """Why ``model`` cannot run on this machine, or None; an unknown name raises."""
    from facebench.models import resolve

    ok, why = resolve(model).availability()
    return None if ok else why


def _short_error(exc: Exception) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    return text.strip().splitlines()[0][:500] if text.strip() else type(exc).__name__
