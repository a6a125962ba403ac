"""Run a grid of (model, dataset) cells, each a papermill execution of one notebook.

A grid file (YAML) holds everything: the template notebook, where executed
notebooks go, default parameters, the models, the datasets, and summary
notebooks run afterwards. Executed notebooks are named ``<model>__<dataset>``.
A cell whose notebook already ran without error with the same parameters is
skipped unless ``force``; a failing cell is recorded and the others still run.

A model entry may carry a ``label`` (the cell's name instead of the model's:
the same model under other settings, e.g. ``parameters: {settings: {prompt:
fr-ouinon}}``, needs one) and ``datasets`` (run it on these of the grid's
datasets only, e.g. an analysis on LFW).

Where cells run is the executor's business (:mod:`facebench.executors`): here,
one after another (``local``), or as Ray tasks on a cluster (``ray``). With Ray
a cell may be split into ``shards`` (:func:`facebench.scoring.shard_pairs`),
each its own task: ``shards: N`` at the top of the grid file, or in a model's or
a dataset's entry (``{model: NAME, shards: N}``); a model entry's value wins over
a dataset entry's, which wins over the grid's; the default is 1. Shards leave
the cells, their parameters and their pages as they are; the local executor
scores each cell in one process and ignores them.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from contextlib import contextmanager
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


def _entry(item, what: str, path) -> tuple[str, dict, int | None, str | None]:
    if isinstance(item, str):
        return item, {}, None, None
    keys = {what, "parameters", "shards"} | ({"label", "datasets"} if what == "model" else set())
    if isinstance(item, dict) and what in item:
        unknown = sorted(set(item) - keys)
        if unknown:
            raise ValueError(f"{path}: {what} entry {item[what]!r} has unknown key(s) {unknown}; "
                             f"it takes {', '.join(sorted(keys))}")
        return (item[what], dict(item.get("parameters") or {}), check_shards(item.get("shards"), path),
                item.get("label"))
    raise ValueError(f"{path}: a {what}s entry must be a name or {{{what}: NAME, parameters: {{...}}}}, got {item!r}")


def check_shards(value, source) -> int | None:
    """``value`` as a number of shards (a whole number >= 1, or None for unset); else ValueError naming ``source``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{source}: shards must be a whole number >= 1, got {value!r}")
    return value


def _cells(doc: dict, path):
    defaults = dict(doc.get("parameters") or {})
    grid_shards = check_shards(doc.get("shards"), path)
    names = set()
    known = {_entry(d, "dataset", path)[0] for d in doc["datasets"]}
    for m in doc["models"]:
        model, mparams, mshards, label = _entry(m, "model", path)
        only = m.get("datasets") if isinstance(m, dict) else None  # e.g. an analysis run on one dataset
        if only is not None and (not isinstance(only, list) or set(only) - known):
            raise ValueError(f"{path}: model entry {model!r} lists datasets {only!r}; each must be one of "
                             f"the grid's datasets {sorted(known)}")
        for d in doc["datasets"]:
            dataset, dparams, dshards, _ = _entry(d, "dataset", path)
            if only is not None and dataset not in only:
                continue
            params = {**defaults, **mparams, **dparams, "model": model, "dataset": dataset}
            if doc.get("results_dir"):
                params["out"] = str(doc["results_dir"])
            shards = next((n for n in (mshards, dshards, grid_shards) if n is not None), 1)
            # The same model under other settings (a prompt template, both orders)
            # needs a label of its own, or two cells would write one page.
            name = f"{model_slug(label or model)}__{dataset}"
            if name in names:
                raise ValueError(f"{path}: two cells are named {name!r}; give one of the {model!r} entries "
                                 "a label (e.g. {model: NAME, label: NAME-fr, parameters: {settings: {...}}})")
            names.add(name)
            yield {"name": name, "label": label or model, "parameters": params, "shards": shards}


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
        tags = cell.metadata.setdefault("tags", [])
        # papermill's injected cell holds machine paths; the page shows its parameters elsewhere
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("# "):
            title, _, rest = cell.source.partition("\n")
            values = dict(params)
            if params.get("settings"):  # e.g. "negative-control (prompt=fr-ouinon) on demo"
                values["model"] += " (" + ", ".join(f"{k}={v}" for k, v in params["settings"].items()) + ")"
            cell.source = title.format_map(values) + _ + rest
            break
    nbformat.write(nb, path)


def write_failed_notebook(source: Path, output: Path, params: dict, error: BaseException, trace: str, *,
                          tmpdir: Path) -> None:
    """The page of a cell whose scoring failed before its notebook could run (e.g. on a Ray worker).

    The template with its parameters filled in (papermill's ``prepare_only``),
    the error as the output of the scoring cell, and the notebook marked as
    failed the way papermill marks a failed execution, so the book and
    :func:`notebook_state` treat it as the local executor's failed notebooks.
    """
    import nbformat
    import papermill

    notebook = notebook_from_source(source, tmpdir)
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(output), parameters=params, prepare_only=True,
                               kernel_name="python3", progress_bar=False)
    nb = nbformat.read(output, as_version=4)
    skip = {"parameters", "injected-parameters"}
    cell = next(c for c in nb.cells if c.cell_type == "code" and not skip & set(c.metadata.get("tags", [])))
    trace = trace or "".join(traceback.format_exception(error))
    cell.outputs = [nbformat.v4.new_output("error", ename=type(error).__name__, evalue=str(error),
                                           traceback=trace.splitlines())]
    cell.metadata.setdefault("papermill", {})["exception"] = True
    nb.metadata.setdefault("papermill", {})["exception"] = True
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(
        f"**This cell failed before its results could be shown**: `{_short_error(error)}`"))
    nbformat.write(nb, output)
    _title(output, params)


@contextmanager
def _environment(changes: dict[str, str]):
    """Environment variables set for the block (a notebook's kernel inherits them), then restored."""
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_grid(path, *, force: bool = False, executor="local", address: str | None = None, shards: int | None = None,
             log=print) -> dict:
    """Execute every cell of the grid file at ``path``, then its summaries; returns the status.

    Parameters
    ----------
    path : path
        The grid file (see :func:`load_grid`).
    force : bool
        Run cells whose notebook already ran cleanly with the same parameters.
    executor : str or executor
        ``"local"`` or ``"ray"`` (:mod:`facebench.executors`), or an executor object.
    address : str, optional
        The Ray cluster to use (``executor="ray"``); None starts a local one.
    shards : int, optional
        Split every cell into this many shards, whatever the grid file says.
    log : callable
        Receives one line per event.

    The status (also in ``<output_dir>/_grid_status.json``, rewritten after each
    cell) lists every cell in grid order with ``status`` "complete", "failed",
    "not available" or, after Ctrl-C, "interrupted". Parameters and model names
    are checked before any cell runs; Ctrl-C records the status file and
    re-raises ``KeyboardInterrupt``.
    """
    from facebench.executors import Job, make_executor

    grid = load_grid(path)
    out_dir: Path = grid["output_dir"]
    cells = grid["cells"]
    if shards is not None:
        shards = check_shards(shards, "--shards")
        cells = [{**c, "shards": shards} for c in cells]
    runner = executor
    if isinstance(executor, str):
        runner = make_executor(executor, address=address, temp_dir=out_dir / ".ray")
    status = {"grid": str(Path(path).resolve()), "started": now(), "executor": runner.name, "cells": []}
    # Progress bars inside the notebooks would land in their outputs.
    os.environ.setdefault("FACEBENCH_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        # A misspelt parameter fails the grid before any cell runs.
        template = notebook_from_source(grid["notebook"], Path(tmp))
        for cell in cells:
            check_parameters(template, cell["parameters"], source=grid["notebook"])
        # An unknown model name also fails before any cell runs; a known model this
        # machine cannot run (no weights file, no package) is recorded, not failed.
        unavailable = {m: unavailable_reason(m) for m in dict.fromkeys(c["parameters"]["model"] for c in cells)}
        entries: list[dict | None] = [None] * len(cells)

        def record(i: int, entry: dict) -> None:
            entries[i] = entry
            status["cells"] = [e for e in entries if e]
            write_json_atomic(out_dir / STATUS_FILE, status)

        def base(job) -> dict:
            return {"name": job.name, "notebook": str(out_dir / f"{job.name}.ipynb"), "parameters": job.parameters}

        def render(job) -> None:
            log(f"{job.label}: running")
            entry = base(job)
            try:
                with _environment(runner.render_env):
                    execute(grid["notebook"], Path(entry["notebook"]), job.parameters, cwd=grid["base"],
                            tmpdir=Path(tmp))
                entry["status"], entry["error"] = "complete", None
            except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the grid
                entry["status"], entry["error"] = "failed", _short_error(exc)
                log(f"{job.label}: FAILED: {entry['error']}")
            entry["seconds"] = round(time.perf_counter() - job.started, 2)
            record(job.index, entry)

        def fail(job, error: BaseException, trace: str) -> None:
            entry = {**base(job), "status": "failed", "error": _short_error(error)}
            log(f"{job.label}: FAILED: {entry['error']}")
            write_failed_notebook(grid["notebook"], Path(entry["notebook"]), job.parameters, error, trace,
                                  tmpdir=Path(tmp))
            record(job.index, {**entry, "seconds": round(time.perf_counter() - job.started, 2)})

        with runner.session():
            jobs = []
            for i, cell in enumerate(cells):
                label = f"[{i + 1}/{len(cells)}] {cell['name']}"
                job = Job(i, label, cell["name"], cell["parameters"], cell.get("shards", 1))
                model = cell["parameters"]["model"]
                why = unavailable[model] or runner.unavailable(model)
                state = notebook_state(out_dir / f"{cell['name']}.ipynb")
                if why:
                    log(f"{label}: not available: {why}")
                    entries[i] = {**base(job), "status": "not available", "error": why, "seconds": 0.0}
                elif not force and state and not state["exception"] and state["parameters"] == cell["parameters"]:
                    log(f"{label}: complete, skipped (--force re-runs it)")
                    entries[i] = {**base(job), "status": "complete", "seconds": 0.0}
                else:
                    jobs.append(job)
            status["cells"] = [e for e in entries if e]
            try:
                runner.run(jobs, render=render, fail=fail, log=log)
            except KeyboardInterrupt:
                for job in jobs:
                    if entries[job.index] is None:
                        entries[job.index] = {**base(job), "status": "interrupted",
                                              "error": "stopped by Ctrl-C; stored pairs are kept and a rerun resumes",
                                              "seconds": round(time.perf_counter() - job.started, 2)}
                status["cells"] = [e for e in entries if e]
                write_json_atomic(out_dir / STATUS_FILE, {**status, "interrupted": now()})
                raise
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
