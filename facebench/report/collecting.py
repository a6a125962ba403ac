"""The results table every summary reads: one row per grid cell, its status and its metrics.

Also the small helpers the tables and figures share to pick complete runs out of it.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from facebench.grid import STATUS_FILE, load_grid, recorded_status
from facebench.scoring import Run, open_run

NOT_RUN = "not run"

# The rows of the last collect() in this process, by what they were computed from: the summaries
# of a grid run one after another in one kernel, and each would otherwise read every run again.
_ROWS: dict = {}


def collect(grid_path, *, root=None) -> pd.DataFrame:
    """One row per grid cell, in grid order: its status and, for cells with a stored run, the metrics.

    The status is the one the grid recorded (``<book>/book/runs/_grid_status.json``):
    a cell that failed (scoring or its page), is not available or was
    interrupted has no numbers, even if some pairs were stored before it
    failed; a partial run's numbers cover the pairs scored so far.
    """
    from facebench.datasets import load_dataset

    global _ROWS
    grid = load_grid(grid_path)
    recorded = recorded_status(grid["runs_dir"] / STATUS_FILE)
    rows, datasets, computed = [], {}, {}
    for cell in grid["cells"]:
        p = cell["parameters"]
        row = _cell_row(cell["name"], cell["label"], p["model"], p["dataset"], variant=bool(p.get("settings")))
        entry = recorded.get(cell["name"], {})
        if entry.get("status") not in ("complete", "partial"):
            rows.append({**row, "status": entry.get("status") or NOT_RUN, "error": entry.get("error")})
            continue
        # Each dataset is loaded (and its checksums verified) once, however many models ran on it.
        where = (p["dataset"], p.get("root", root))
        if where not in datasets:
            datasets[where] = load_dataset(p["dataset"], where[1])
        run = open_run(p["model"], datasets[where], limit=p.get("limit"), out=p.get("out"),
                       settings=p.get("settings"))
        if not run.store.manifest_path.exists():  # recorded by an older grid run, under another identity
            rows.append({**row, "status": NOT_RUN, "error": f"no run stored in {run.store.dir}: the model's "
                         "settings or facebench changed since the grid ran; run the grid again"})
            continue
        key = (_files_key(run.store.dir), datasets[where].checksum, p.get("limit"))
        computed[key] = _ROWS.get(key) or _complete_row(run)
        # the cell's label, not the run's model name
        rows.append({**computed[key], **row, "status": entry["status"]})
    _ROWS = computed
    return pd.DataFrame(rows)


def _files_key(folder) -> tuple:
    """A run folder's files (the store, its write-ahead log, shards, the manifest) by name, size
    and modification time: any stored pair or manifest change gives another key."""
    from pathlib import Path

    files = [(str(f.relative_to(folder)), f.stat()) for f in Path(folder).rglob("*") if f.is_file()]
    return (str(folder), tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in files)))


def _cell_row(cell: str, label: str, model: str, dataset: str, *, variant: bool) -> dict:
    # "model" is the cell's label (unique per dataset); "base_model" the registry model it runs,
    # and "variant" marks a model run under overridden settings (another prompt, both orders).
    from facebench.models import registry_entries

    family = model_family(model)
    return {"cell": cell, "model": label, "base_model": model, "variant": variant, "dataset": dataset,
            "family": family, "kind": "MLLM" if "MLLM" in family else "FR",
            "role": (registry_entries().get(model) or {}).get("role")}


def _complete_row(run: Run) -> dict:
    manifest = run.manifest
    return {"status": "complete", **run.metrics(), "groups": group_accuracies(run),
            "prompt_template": manifest.get("prompt_template"), "settings": manifest.get("settings"), "run": run}


def results_from_runs(runs: list[Run]) -> pd.DataFrame:
    """The table :func:`collect` gives, for runs at hand rather than a grid's cells
    (e.g. two runs to compare in a notebook): every function below takes either."""
    from facebench.store import model_slug

    rows = [{**_complete_row(run), **_cell_row(f"{model_slug(run.model)}__{run.dataset.name}", run.model, run.model,
                                               run.dataset.name, variant=False)} for run in runs]
    return pd.DataFrame(rows)


def model_family(model: str) -> str:
    """The model's ``family`` in facebench/models.yaml ("face recognition", "MLLM", …);
    for a ``prefix:argument`` spec, the family its backend serves."""
    from facebench.models import registry_entries

    entry = registry_entries().get(model) or {}
    if entry.get("family"):
        return entry["family"]
    return {"hf": "MLLM", "onnx": "face recognition", "dlib": "face recognition"}.get(model.partition(":")[0],
                                                                                      "unknown")


def group_accuracies(run: Run) -> dict[str, float]:
    """k-fold accuracy within each group of pairs (e.g. RFW race); empty without groups."""
    from facebench.metrics import verification_report

    t = run.table[run.table["stored"]].dropna(subset=["group"])
    return {str(g): verification_report(part["score"].to_numpy(float), part["same"].to_numpy(),
                                        part["fold"].to_numpy())["accuracy_mean"]
            for g, part in t.groupby("group")}


def _complete(results: pd.DataFrame) -> pd.DataFrame:
    if results.empty or "run" not in results:
        return results.iloc[0:0]
    return results[results["status"] == "complete"]


def _not_run(why: str) -> pd.DataFrame:
    return pd.DataFrame({"": [f"{NOT_RUN}: {why}"]}, index=[""])


def runs_by_dataset(results: pd.DataFrame) -> dict[str, list[Run]]:
    """The complete runs of each dataset, in grid order; variants (other settings)
    are left to the order and prompt analyses, so each model is one curve."""
    done = _complete(results)
    if "variant" in done:
        done = done[~done["variant"].astype(bool)]
    return {d: list(part["run"]) for d, part in done.groupby("dataset", sort=False)}


def _scored(run: Run) -> pd.DataFrame:
    """The run's pairs with a finite score."""
    t = run.table
    return t[np.isfinite(t["score"].to_numpy(float))]


def headline(results: pd.DataFrame, grid_path):
    """The introduction's paragraph of numbers, as HTML (myst-nb pastes HTML, not Markdown,
    across pages): on the headline dataset, the best face-recognition model, the best MLLM
    and the negative control, or the cells the grid's ``headline:`` names. A role the grid
    lacks is said to be missing, never invented."""
    from html import escape

    from IPython.display import HTML

    grid = load_grid(grid_path)
    wanted = grid["headline"]
    done = _complete(results)
    done = done[~done["variant"].astype(bool)]
    datasets = list(dict.fromkeys(c["parameters"]["dataset"] for c in grid["cells"]))
    dataset = wanted.get("dataset") or next((d for d in datasets if (done["dataset"] == d).any()), datasets[0])
    here = done[done["dataset"] == dataset]
    counts = results["status"].value_counts()
    lines = [f"This build ran the study <strong>{escape(grid['name'])}</strong>: {len(results)} cells over "
             f"{', '.join(datasets)} ({', '.join(f'{n} {s}' for s, n in counts.items())})."]
    control = here["role"].eq("control")
    candidates = {"fr": (here["kind"] == "FR") & ~control, "mllm": (here["kind"] == "MLLM") & ~control,
                  "control": control}
    picked = {}
    for role, rows in candidates.items():  # the cell the grid names, else the most accurate candidate
        rows = here[here["model"] == wanted[role]] if role in wanted else here[rows]
        # MLLMs rank by their own answers (the main table's measure) where they gave any
        key = "hard_accuracy_all" if role == "mllm" and _has(rows, "hard_accuracy_all") else "accuracy_mean"
        picked[role] = None if rows.empty else rows.loc[rows[key].astype(float).idxmax()]
    fr, mllm, control = picked["fr"], picked["mllm"], picked["control"]
    if fr is not None:
        lines.append(f"On {dataset}, the best face-recognition model, <strong>{escape(fr['model'])}</strong>, "
                     f"reaches a k-fold accuracy of {fr['accuracy_mean']:.1%} with an equal error rate of "
                     f"{fr['eer']:.1%} over {int(fr['n_pairs'])} pairs.")
    else:
        lines.append(f"No face-recognition model of this grid is complete on {dataset}.")
    if mllm is not None and _known(mllm.get("hard_accuracy_all")):
        lines.append(f"The best MLLM, <strong>{escape(mllm['model'])}</strong>, answers {mllm['hard_accuracy_all']:.1%} "
                     f"of the pairs right on its own (an answer that cannot be read counted as wrong; "
                     f"{_share(mllm['hard_accuracy'])} of its valid answers, which it gives for "
                     f"{mllm['acquire_rate']:.0%} of the pairs); with a threshold learned on its log-odds it would "
                     f"reach a k-fold accuracy of {mllm['accuracy_mean']:.1%} (AUC {mllm['auc']:.2f}).")
    elif mllm is not None:
        lines.append(f"The best MLLM, <strong>{escape(mllm['model'])}</strong>, stored no answers of its own; with a "
                     f"threshold learned on its scores it reaches a k-fold accuracy of {mllm['accuracy_mean']:.1%} "
                     f"(AUC {mllm['auc']:.2f}).")
    else:
        lines.append(f"No MLLM (other than a control) of this grid is complete on {dataset}.")
    if control is not None:
        lines.append(
            f"The <strong>negative control</strong> ({escape(control['model'])}: an MLLM with random weights, asked "
            f"through exactly the same protocol as the real models) {_chance_judgement(control['run'])} It gives a "
            f"readable answer for {control['acquire_rate']:.0%} of the pairs, and its k-fold accuracy of "
            f"{control['accuracy_mean']:.1%} is to be read against the {int(control['n_impostor'])} impostor pairs "
            f"among {int(control['n_pairs'])}: answering \"different\" to every pair is right that often.")
    return HTML(f"<p>{' '.join(lines)}</p>")


def _known(v) -> bool:
    return v is not None and not pd.isna(v)


def _has(rows: pd.DataFrame, key: str) -> bool:
    return key in rows and rows[key].map(_known).any()


def _share(v) -> str:
    return f"{v:.1%}" if _known(v) else "none"


def _chance_judgement(run: Run) -> str:
    """The control's AUC judged two-sided against label shuffles
    (:func:`~facebench.metrics.auc_permutation_test`), as a sentence."""
    from facebench.metrics import auc_permutation_test

    t = _scored(run)
    if t["same"].nunique() < 2:
        return "has no AUC: its scored pairs do not hold both genuine and impostor pairs."
    r = auc_permutation_test(t["score"].to_numpy(float), t["same"].to_numpy())
    measured = (f"puts its AUC at {r['auc']:.3f} over {len(t)} scored pairs: |AUC − 0.5| = {r['distance']:.3f}, "
                f"{'inside' if r['near_chance'] else 'outside'} the band of {r['band']:.3f} that "
                f"{r['level']:.0%} of {r['n_permutations']} shufflings of its labels stay within (p = {r['pvalue']:.2g})")
    if r["near_chance"]:
        return f"{measured}, so it is at chance, as a model that knows nothing must be."
    return (f"{measured}: further from chance than shuffled labels go, in either direction. A control that beats "
            "or inverts chance reveals a leak of labels or identities into the protocol, or a low-level confound "
            "in the pairs (colour, lighting, crop); find it before reading any MLLM's number.")
