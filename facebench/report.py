"""Tables, figures and glued numbers for the notebooks and the book.

Notebooks only call these functions: every number they show is computed here
from stored runs, never typed in.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from facebench.grid import STATUS_FILE, load_grid, notebook_state
from facebench.metrics import roc_curve
from facebench.scoring import Run, open_run

METRIC_LABELS = {
    "accuracy_mean": "Accuracy (k-fold mean)", "accuracy_std": "Accuracy (k-fold std)",
    "hard_accuracy": "Hard accuracy (own decisions)", "auc": "ROC AUC", "eer": "EER",
    "tar_at_far_1e-2": "TAR @ FAR=1e-2", "tar_at_far_1e-3": "TAR @ FAR=1e-3", "acquire_rate": "Acquire rate",
}
PALETTE = "colorblind"


def use_style() -> None:
    """One look for every figure of the book: seaborn's whitegrid, SVG output."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    pd.set_option("display.max_colwidth", None)  # settings and errors are shown whole
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("svg")
    except ImportError:  # outside IPython there is nothing to configure
        pass


def metrics_table(m: dict) -> pd.DataFrame:
    """The headline metrics of one run as a two-column table."""
    rows = [(label, _fmt(m[key], key)) for key, label in METRIC_LABELS.items() if key in m]
    rows += [("Pairs", f"{m['n_pairs']} ({m['n_genuine']} genuine, {m['n_impostor']} impostor)"),
             ("Folds", str(len(m["fold_accuracies"])))]
    return pd.DataFrame(rows, columns=["Metric", "Value"]).set_index("Metric")


def _fmt(v, key: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if key == "auc" else f"{100 * v:.2f}%"


def glue_metrics(m: dict, prefix: str = "") -> None:
    """Glue every number of a metrics dict so that prose can cite it by key."""
    from myst_nb import glue

    for key, value in m.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            glue(f"{prefix}{key}", value, display=False)


def roc_figure(runs: list[Run], *, title: str | None = None):
    """ROC curves (TAR against FAR, log FAR axis) of several runs on one plot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for run in runs:
        t = run.table.dropna(subset=["score"])
        if t["same"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(t["score"].to_numpy(), t["same"].to_numpy())
        ax.step(fpr, tpr, where="post", label=f"{run.model} ({len(t)} pairs)")
    # symlog keeps FAR = 0 on the axis while spreading out the low FARs that matter.
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set(xlabel="False accept rate", ylabel="True accept rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.set_title(title or f"ROC, {runs[0].dataset.name}")
    fig.tight_layout()
    return fig


def score_distribution_figure(run: Run):
    """Genuine and impostor score histograms of one run."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    t = run.table.dropna(subset=["score"]).assign(pair=lambda d: d["same"].map({True: "genuine", False: "impostor"}))
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    sns.histplot(data=t, x="score", hue="pair", hue_order=["genuine", "impostor"], bins=30, element="step",
                 stat="density", common_norm=False, ax=ax)
    ax.set(xlabel="score (higher = more alike)",
           title=f"{run.model} on {run.dataset.name}: {int(t['same'].sum())} genuine, {int((~t['same']).sum())} impostor pairs")
    fig.tight_layout()
    return fig


def collect(grid_path, *, root=None) -> pd.DataFrame:
    """One row per grid cell: status and, for cells that ran cleanly, the metrics.

    A cell whose notebook recorded an exception is reported as failed and its
    numbers are left out, even if some pairs were stored before it failed.
    """
    grid = load_grid(grid_path)
    recorded = _recorded_status(grid["output_dir"] / STATUS_FILE)
    rows = []
    for cell in grid["cells"]:
        p = cell["parameters"]
        state = notebook_state(grid["output_dir"] / f"{cell['name']}.ipynb")
        row = {"cell": cell["name"], "model": p["model"], "dataset": p["dataset"]}
        entry = recorded.get(cell["name"], {})
        if entry.get("status") == "not available":
            rows.append({**row, "status": "not available", "error": entry.get("error")})
        elif state is None:
            rows.append({**row, "status": "not run"})
        elif state["exception"]:
            rows.append({**row, "status": "failed", "error": entry.get("error") or "see its run page"})
        else:
            run = open_run(p["model"], p["dataset"], root=p.get("root", root), limit=p.get("limit"), out=p.get("out"))
            rows.append({**row, "status": "complete", **run.metrics(), "groups": group_accuracies(run)})
    return pd.DataFrame(rows)


def _recorded_status(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {c["name"]: c for c in json.loads(path.read_text())["cells"]}


def main_table(results: pd.DataFrame, *, value: str = "accuracy") -> pd.DataFrame:
    """Model × dataset table, as the paper's main table: k-fold accuracy mean ± std in %.

    ``value`` may also be ``"hard_accuracy"`` or ``"acquire_rate"``. Cells that
    did not run say so instead of showing a number.
    """
    def cell(r):
        if r["status"] != "complete":
            return r["status"]
        if value == "accuracy":
            return f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        v = r.get(value)
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    t = results.assign(value=results.apply(cell, axis=1))
    return t.pivot(index="model", columns="dataset", values="value").rename_axis(index="Model", columns="Dataset")


def dataset_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per dataset evaluated: pairs, genuine, impostor and folds, from the runs themselves."""
    done = results[results["status"] == "complete"]
    cols = {"n_pairs": "Pairs", "n_genuine": "Genuine", "n_impostor": "Impostor"}
    if done.empty:
        return pd.DataFrame({"": ["no dataset has been run"]})
    t = done.groupby("dataset")[list(cols)].max().rename(columns=cols)
    t["Folds"] = done.groupby("dataset")["fold_accuracies"].apply(lambda s: max(len(v) for v in s))
    return t.rename_axis("Dataset")


def group_accuracies(run: Run) -> dict[str, float]:
    """k-fold accuracy within each group of pairs (e.g. RFW race); empty without groups."""
    from facebench.metrics import verification_report

    t = run.table.dropna(subset=["group", "seconds"])
    return {str(g): verification_report(part["score"].to_numpy(float), part["same"].to_numpy(),
                                        part["fold"].to_numpy())["accuracy_mean"]
            for g, part in t.groupby("group")}


def group_table(results: pd.DataFrame) -> pd.DataFrame:
    """Model × group accuracy in %, with the mean, the standard deviation and the
    skewed error ratio (largest error / smallest error) across groups."""
    rows = []
    for r in results.to_dict("records"):
        groups = r.get("groups") or {}
        if not isinstance(groups, dict) or not groups:
            continue
        acc = pd.Series(groups)
        err = 1 - acc
        ser = err.max() / err.min() if err.min() > 0 else math.inf
        rows.append({"Model": r["model"], "Dataset": r["dataset"], **(100 * acc).round(2).to_dict(),
                     "Mean": round(100 * acc.mean(), 2), "STD": round(100 * acc.std(ddof=0), 2), "SER": round(ser, 2)})
    if not rows:
        return pd.DataFrame({"": ["no dataset with groups (e.g. RFW) has been run"]})
    return pd.DataFrame(rows).set_index(["Model", "Dataset"])


def status_table(results: pd.DataFrame) -> pd.DataFrame:
    """Which grid cells ran, failed or were not run, with the pairs done and any error."""
    cols = {"cell": "Cell", "status": "Status", "n_pairs": "Pairs scored", "n_errors": "Pair errors", "error": "Error"}
    cols = {k: v for k, v in cols.items() if k in results}
    return results[list(cols)].astype(object).fillna("").rename(columns=cols).set_index("Cell")


def glue_results(results: pd.DataFrame) -> None:
    """Glue each complete cell's numbers as ``<cell>__<metric>``, and the dataset
    and model tables, for the book's prose."""
    from myst_nb import glue

    for r in results[results["status"] == "complete"].to_dict("records"):
        glue_metrics({k: v for k, v in r.items() if k not in ("groups",)}, prefix=f"{r['cell']}__")
    glue("dataset_table", dataset_table(results), display=False)
    glue("models_table", models_table(results), display=False)


def models_table(results: pd.DataFrame) -> pd.DataFrame:
    """Model id, revision and settings of each model, as its runs recorded them."""
    rows = {}
    if "run_dir" not in results:
        return pd.DataFrame({"": ["no model has been run"]})
    for r in results[results["status"] == "complete"].to_dict("records"):
        m = json.loads((Path(r["run_dir"]) / "manifest.json").read_text())
        rows[r["model"]] = {"Model id": m.get("model_id"), "Revision": m.get("revision"),
                            "Settings": json.dumps(m.get("settings"), sort_keys=True)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("Model")


def notes(m: dict):
    """The metric caveats of a run (unresolved FAR, invalid outputs) as Markdown."""
    from IPython.display import Markdown

    lines = [f"- {f}" for f in m["flags"]] or ["- no caveats"]
    if not m.get("complete", True):
        lines.insert(0, "- **partial run**: only the pairs scored so far are counted")
    return Markdown("\n".join(lines))


def provenance_table(run: Run) -> pd.DataFrame:
    """What produced this run: model, settings, dataset checksum, versions, commit."""
    m = run.manifest
    rows = {"model": m.get("model"), "model id": m.get("model_id"), "revision": m.get("revision"),
            "device": m.get("device"), "settings": json.dumps(m.get("settings"), sort_keys=True),
            "settings hash": m.get("settings_hash"), "dataset checksum": m.get("dataset_checksum"),
            "git commit": (m.get("git") or {}).get("commit"), "uncommitted changes": (m.get("git") or {}).get("dirty"),
            "status": m.get("status"), "created": m.get("created"), "updated": m.get("updated")}
    rows |= {f"version: {k}": v for k, v in (m.get("versions") or {}).items()}
    return pd.DataFrame({"Value": {k: str(v) for k, v in rows.items()}}).rename_axis("Run")
