"""A full-scale rehearsal of the study of grids/full.yaml: render, summaries and book, timed.

    python benchmarks/study_rehearsal.py                       # every model of grids/full.yaml, full-size sets
    python benchmarks/study_rehearsal.py --models 3 --json     # the first 3 models only
    python benchmarks/study_rehearsal.py --scale 0.01 --keep /tmp/rehearsal   # 1% of the pairs, folder kept
    python benchmarks/study_rehearsal.py --datasets lfw,rfw    # two of its datasets only
    python benchmarks/study_rehearsal.py --no-book             # stop before the book build

What it rehearses, in a temp folder (or ``--keep DIR``):

1. **fixtures**: every dataset of grids/full.yaml in a published on-disk layout
   (``tests/layout_fixtures.py``) at full size: LFW, CALFW and CPLFW 6,000 pairs,
   CFP-FF and CFP-FP 7,000, AgeDB-30 6,000, RFW 4 × 6,000. Images are small
   noise JPEGs, reused across pairs: nothing is scored, so what matters is the
   pair lists, the number of images and the number of people (the identity
   bootstrap resamples them); all three are printed.
2. **import**: for every cell of a grid like grids/full.yaml (same models,
   datasets, labelled analyses on LFW and summaries; its own book and results
   folder), synthetic per-pair results (seeded; score ~ N(gap · label, 1) with a
   gap per model; MLLM cells also get decisions, a few invalid answers and
   missing scores, and answer texts, three distinct ones) stored with
   :func:`facebench.importing.import_results`, as results made on a cluster would be.
3. **score / render / summaries**: :func:`facebench.grid.run_grid` (no model is
   loaded: cells with stored rows are shown even where their model is "not
   available"); the phases are timed by wrapping the executor's ``score`` and
   :func:`facebench.grid.write_book`, which opens the summaries phase.
4. **book**: :func:`facebench.grid.build_book` (``jupyter-book build -n -W --keep-going``).

Each phase is reported in wall seconds and in CPU seconds (this process, its
children and theirs): on a machine that runs other work meanwhile (the load
average is printed) the CPU seconds are the steadier figure. Peak memory: a
thread samples, every 0.2 s, the summed RSS of this process and all its
descendants (the papermill kernel, jupyter-book and its workers), per phase;
``ru_maxrss`` of this process and of its waited-for children (the largest
single one; a child forked from this process starts with its RSS) is reported
beside it.

Targets (printed with PASS/FAIL): render + summaries + book ≤ 15 minutes on a
2-core machine, peak RSS (sampled sum) ≤ 4 GB. The table goes to stdout, the
grid's and jupyter-book's messages to stderr; with ``--json`` the last stdout
line is strict JSON. Exit status: 0 measured (whatever the targets say), 1 when
a cell, a summary or the book failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a rehearsal never asks the hub; absent models are "not available"
os.environ.setdefault("FACEBENCH_PROGRESS", "0")

import layout_fixtures as fx  # noqa: E402

TARGET_SECONDS = 15 * 60  # render + summaries + book
TARGET_RSS_MB = 4 * 1024
PHASES = ("fixtures", "import", "score", "render", "summaries", "book")


def build_fixtures(root: Path, scale: float = 1.0, only: set[str] | None = None) -> dict[str, int]:
    """Every dataset of grids/full.yaml (or those in ``only``) under ``root`` in a published layout;
    returns pairs per dataset.

    ``scale`` shrinks every pair list (1.0: the published sizes), keeping 10
    folds with both classes in each. People matter as well as pairs (the
    identity bootstrap resamples them), so each set has hundreds to thousands
    of them (see :func:`people`), not the handful the tests' fixtures use.
    """
    def n(full: int, least: int = 1) -> int:
        return max(least, round(full * scale))

    def wanted(name: str) -> bool:
        return only is None or name in only

    per_kind = n(300)  # LFW, AgeDB: 10 folds × (300 matched + 300 mismatched)
    names = tuple(f"Person_{k:04d}" for k in range(n(400, 4)))
    sizes = {}
    if wanted("lfw"):
        sizes["lfw"] = len(fx.make_lfw(root / "lfw", n_sets=10, per_kind=per_kind, names=names))
    for name in filter(wanted, ("calfw", "cplfw")):  # 3,000 matched then 3,000 mismatched, two lines per pair
        rows = fx.make_calfw(root / name, f"pairs_{name.upper()}.txt", n_pos=10 * n(300), n_neg=10 * n(300))
        sizes[name] = len(rows)
    for name, protocol in (("cfp_ff", "FF"), ("cfp_fp", "FP")):  # 10 folds × (350 same + 350 diff), 500 people
        if wanted(name):
            sizes[name] = len(fx.make_cfp(root / name, protocol, n_ids=n(500, 4), per_kind=n(350)))
    if wanted("agedb_30"):
        sizes["agedb_30"] = len(fx.make_agedb(root / "agedb_30", per_kind=per_kind, n_people=n(568, 4)))
    if wanted("rfw"):  # 4 races × 6,000
        sizes["rfw"] = len(fx.make_rfw(root / "rfw", per_race=10 * n(600, 2), n_ids=n(3000, 3)))
    return sizes


def people(root: Path, dataset: str) -> dict[str, int]:
    """Images and people (inferred from the genuine pairs, as the identity bootstrap does) of a fixture."""
    from facebench.datasets import load_dataset
    from facebench.metrics import identity_clusters

    pairs = load_dataset(dataset, root).pairs
    clusters = identity_clusters(pairs["image_a"], pairs["image_b"], pairs["same"].to_numpy())
    return {"images": len(set(pairs["image_a"]) | set(pairs["image_b"])), "people": len(set(clusters.ravel()))}


def write_grid(folder: Path, data_root: Path, n_models: int | None, datasets: list[str] | None = None) -> Path:
    """grids/full.yaml with its own book, results and data root under ``folder``, its first ``n_models``
    models (labelled entries kept when their base model is) and its ``datasets`` (default: all)."""
    doc = yaml.safe_load((ROOT / "grids" / "full.yaml").read_text())
    plain = [m for m in doc["models"] if isinstance(m, str)]
    kept = set(plain[:n_models] if n_models else plain)
    doc.update(name="rehearsal", base=str(ROOT), book=str(folder / "book"), results_dir=str(folder / "results"),
               parameters={**(doc.get("parameters") or {}), "root": str(data_root)},
               models=[m for m in doc["models"] if (m if isinstance(m, str) else m["model"]) in kept])
    if datasets:
        doc["datasets"] = [d for d in doc["datasets"] if d in datasets]
    path = folder / "rehearsal.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def synthetic_results(cell: dict, pairs, mllm: bool):
    """Per-pair results of one cell, seeded by its name: score ~ N(gap · label, 1), the gap drawn per model;
    an MLLM also answers (yes when its score is positive, about 1% invalid, 0.2% without a score)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(zlib.crc32(cell["name"].encode()))
    gap = rng.uniform(0.5, 2.5) if mllm else rng.uniform(2.5, 4.5)
    same = pairs["same"].to_numpy()
    score = rng.normal(gap * same, 1.0)
    out = pd.DataFrame({"pair_id": pairs["pair_id"].to_numpy(), "score": score})
    if not mllm:
        return out
    decision = (score > 0).astype(int)
    decision[rng.random(len(score)) < 0.01] = -1
    answers = np.array(["No", "Yes", "I cannot determine"])[np.where(decision < 0, 2, decision)]
    raw = [{"answer": a} for a in answers]
    if (cell["parameters"].get("settings") or {}).get("both_orders"):
        ba = score + rng.normal(0, 0.5, len(score))
        for r, s in zip(raw, ba):
            r["ba"] = {"score": float(s), "decision": int(s > 0), "answer": "Yes" if s > 0 else "No"}
    out["score"] = np.where(rng.random(len(score)) < 0.002, np.nan, score)
    out["decision"] = decision
    out["raw_output"] = [json.dumps(r) for r in raw]
    return out


def import_cells(grid: dict, folder: Path) -> int:
    """Synthetic results for every cell of ``grid``, imported into its results folder; returns the pairs stored."""
    from facebench.importing import import_results
    from facebench.integrity import preflight
    from facebench.report import model_family

    datasets, total = {}, 0
    for cell in grid["cells"]:
        p = cell["parameters"]
        if p["dataset"] not in datasets:  # loaded and checked once, whatever the number of models
            datasets[p["dataset"]] = preflight(p["dataset"], p["root"])
        ds = datasets[p["dataset"]]
        csv = folder / "imports" / f"{cell['name']}.csv"
        csv.parent.mkdir(parents=True, exist_ok=True)
        synthetic_results(cell, ds.pairs, "MLLM" in model_family(p["model"])).to_csv(csv, index=False)
        import_results(csv, model=p["model"], dataset=ds, root=p["root"], out=p["out"], settings=p.get("settings"))
        total += len(ds.pairs)
    return total


class Phases(threading.Thread):
    """Wall and CPU seconds of each phase, and its peak memory: every ``interval`` s, the summed RSS of
    this process and its descendants.

    CPU seconds (user + system of this process, its reaped children and its live
    descendants) show the work done whatever else the machine runs meanwhile.
    """

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.phase, self.peak_mb, self._done = interval, None, {}, threading.Event()
        self.wall, self.cpu, self._t0 = {}, {}, None

    def begin(self, phase: str) -> None:
        """End the current phase (if any) and start ``phase``; None ends the last one."""
        wall, cpu = time.perf_counter(), cpu_seconds()
        if self.phase:
            self.wall[self.phase], self.cpu[self.phase] = round(wall - self._t0[0], 1), round(cpu - self._t0[1], 1)
        self.phase, self._t0 = phase, (wall, cpu)

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(self.interval):
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            if self.phase:
                self.peak_mb[self.phase] = max(self.peak_mb.get(self.phase, 0), round(total / 2**20))

    def stop(self) -> None:
        self.begin(None)
        self._done.set()
        self.join()


def cpu_seconds() -> float:
    """User + system seconds of this process, its reaped children and its live descendants (theirs included)."""
    import psutil

    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = proc.cpu_times()
            total += c.user + c.system + c.children_user + c.children_system
    return total


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what the grid and jupyter-book print (subprocesses included) to stderr, keeping stdout for the report."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_study(grid_path: Path, phases: Phases, *, book: bool = True) -> dict:
    """:func:`~facebench.grid.run_grid` then (with ``book``) :func:`~facebench.grid.build_book`, timed in
    ``phases``; returns the grid's status (``book_error`` added where the book failed)."""
    import facebench.grid as fg
    from facebench.executors import make_executor

    start = time.perf_counter()
    runner, write_book = make_executor("local"), fg.write_book

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {line}", file=sys.stderr, flush=True)

    def score(jobs, **kw):
        try:
            return type(runner).score(runner, jobs, **kw)
        finally:
            phases.begin("render")

    def book_then_summaries(grid):  # run_grid calls write_book once, when the render phase is over
        phases.begin("summaries")
        return write_book(grid)

    runner.score, fg.write_book = score, book_then_summaries
    phases.begin("score")
    try:
        with stdout_to_stderr():
            status = fg.run_grid(grid_path, executor=runner, log=log)
            phases.begin("book")
            try:
                if book:
                    fg.build_book(grid_path, log=log)
            except RuntimeError as exc:
                status["book_error"] = str(exc)
    finally:
        fg.write_book = write_book
    return status


def machine() -> dict:
    """Cores, RAM, CPU model and Python of this machine."""
    import psutil

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"cores": os.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "cpu": cpu,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, help="keep the first N models of grids/full.yaml (default: all)")
    p.add_argument("--scale", type=float, default=1.0, help="share of every dataset's pairs (default 1: full size)")
    p.add_argument("--datasets", help="keep only these datasets of grids/full.yaml, comma-separated (default: all)")
    p.add_argument("--no-book", action="store_true", help="stop before the book build (its target is then "
                   "not measured)")
    p.add_argument("--keep", type=Path, help="work in this (new or empty) folder and keep it")
    p.add_argument("--json", action="store_true", help="end with one strict-JSON line")
    args = p.parse_args(argv)
    if args.models is not None and args.models < 1 or not 0 < args.scale <= 1:
        p.error("--models must be at least 1 and --scale in (0, 1]")
    full = yaml.safe_load((ROOT / "grids" / "full.yaml").read_text())["datasets"]
    datasets = args.datasets.split(",") if args.datasets else None
    if datasets and not set(datasets) <= set(full):
        p.error(f"--datasets {args.datasets}: grids/full.yaml has {', '.join(full)}")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        p.error(f"--keep {args.keep}: not empty; give a new or empty folder")

    with contextlib.ExitStack() as stack:
        if args.keep:
            folder = args.keep.resolve()
            folder.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="facebench-rehearsal-")))
        phases = Phases()
        phases.start()
        phases.begin("fixtures")
        sizes = build_fixtures(folder / "data", args.scale, set(datasets) if datasets else None)
        census = {d: people(folder / "data", d) for d in sizes}
        phases.begin("import")

        from facebench.grid import load_grid

        grid_path = write_grid(folder, folder / "data", args.models, datasets)
        grid = load_grid(grid_path)
        pairs = import_cells(grid, folder)
        status = run_study(grid_path, phases, book=not args.no_book)
        phases.stop()
        html = grid["book"] / "_build" / "html"
        pages = {"run_pages": len(list(grid["runs_dir"].glob("*.ipynb"))),
                 "summaries": sum(s["output"].exists() for s in grid["summaries"]),
                 "html_pages": len(list(html.rglob("*.html"))) if html.exists() else 0}
        summary_seconds = {}  # not in the status: read from each page's papermill metadata
        for s in grid["summaries"]:
            if s["output"].exists():
                summary_seconds[s["output"].stem] = round(json.loads(s["output"].read_text())["metadata"]
                                                          .get("papermill", {}).get("duration") or 0, 1)

    seconds, peak = phases.wall, phases.peak_mb
    failed = [c["name"] for c in status["cells"] if c["status"] not in ("complete", "partial")]
    rss = {"sampled_sum_mb": max(peak.values()), "per_phase_mb": peak,
           "ru_maxrss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "ru_maxrss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}
    study = None if args.no_book else round(seconds["render"] + seconds["summaries"] + seconds["book"], 1)
    targets = {"render_summaries_book_s": {"value": study, "target": TARGET_SECONDS,
                                           "pass": None if study is None else study <= TARGET_SECONDS},
               "peak_rss_mb": {"value": rss["sampled_sum_mb"], "target": TARGET_RSS_MB,
                               "pass": rss["sampled_sum_mb"] <= TARGET_RSS_MB}}
    result = {"benchmark": "study_rehearsal", "scale": args.scale, "models": len({c["label"] for c in grid["cells"]}),
              "cells": len(grid["cells"]), "pairs": pairs, "pairs_per_dataset": sizes, "fixtures": census,
              "pages": pages, "phases": seconds, "cpu_seconds": phases.cpu, "summary_seconds": summary_seconds,
              "peak_rss": rss, "targets": targets, "failed_cells": failed,
              "failed_summaries": status.get("failed_summaries", {}), "book_error": status.get("book_error"),
              "machine": machine(), "folder": str(folder) if args.keep else None}

    m = result["machine"]
    print(f"Study rehearsal: {result['models']} models, {result['cells']} cells, {pairs:,} pairs")
    print("fixtures: " + ", ".join(f"{d} {sizes[d]:,} pairs / {c['images']:,} images / {c['people']:,} people"
                                   for d, c in census.items()))
    print(f"{'phase':<11}{'seconds':>9}{'CPU s':>9}  {'peak RSS (MB)':>13}  what")
    what = {"fixtures": "datasets written in their published layouts",
            "import": f"{result['cells']} cells of synthetic results imported",
            "score": "run_grid, score phase (stored runs, nothing to score)",
            "render": f"{pages['run_pages']} run pages (papermill, one kernel)",
            "summaries": f"{pages['summaries']} summaries: "
                         + ", ".join(f"{k} {v} s" for k, v in summary_seconds.items()),
            "book": "skipped (--no-book)" if args.no_book else
                    f"jupyter-book build -n -W: {pages['html_pages']} HTML pages"}
    for ph in PHASES:
        print(f"{ph:<11}{seconds[ph]:>9.1f}{phases.cpu[ph]:>9.1f}  {peak.get(ph, 0):>13,}  {what[ph]}")
    for name, t in targets.items():
        verdict = "not measured (--no-book)" if t["pass"] is None else \
            f"{t['value']:,} <= {t['target']:,}: {'PASS' if t['pass'] else 'FAIL'}"
        print(f"target {name}: {verdict}")
    print(f"peak RSS: sampled sum of the process tree every 0.2 s; ru_maxrss self {rss['ru_maxrss_self_mb']:,} MB, "
          f"largest reaped child {rss['ru_maxrss_children_mb']:,} MB (a forked child starts at this process's size)")
    print(f"machine: {m['cores']} cores, {m['ram_gb']} GB RAM, {m['cpu']}, Python {m['python']}; load average "
          f"{m['load_average']} at the end (above the cores: other work competed for them, and CPU s < seconds)")
    problems = failed or result["failed_summaries"] or result["book_error"]
    if problems:
        print(f"FAILED: cells {failed}, summaries {result['failed_summaries']}, book {result['book_error']}")
    if args.json:
        print(json.dumps(result, allow_nan=False))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
