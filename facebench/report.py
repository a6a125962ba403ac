"""Tables, figures and glued numbers for the notebooks and the book.

Notebooks only call these functions: every number they show is computed here
from stored runs, never typed in.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from facebench.grid import STATUS_FILE, load_grid, notebook_state
from facebench.metrics import (bootstrap_ci, det_curve, far_key, kfold_decisions, mcnemar_test, roc_curve,
                               tar_at_far)
from facebench.scoring import Run, open_run

METRIC_LABELS = {
    "accuracy_mean": "Accuracy (k-fold mean)", "accuracy_std": "Accuracy (k-fold std)",
    "hard_accuracy": "Hard accuracy (own decisions)", "auc": "ROC AUC", "eer": "EER",
    "tar_at_far_1e-2": "TAR @ FAR=1e-2", "tar_at_far_1e-3": "TAR @ FAR=1e-3", "acquire_rate": "Acquire rate",
}
PALETTE = "colorblind"
NOT_RUN = "not run"
# FARs of the TAR@FAR table: 1e-1 is the only one a small set resolves; 1e-2 and 1e-3 are the usual ones.
TABLE_FARS = (1e-1, 1e-2, 1e-3)
THUMBNAIL_PX = 64  # gallery thumbnails: small enough for a page with many pairs
PANELS_PER_ROW = 3  # score-distribution panels: a row fits the book's text width


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
    from facebench.datasets import load_dataset

    grid = load_grid(grid_path)
    recorded = _recorded_status(grid["output_dir"] / STATUS_FILE)
    rows, datasets = [], {}
    for cell in grid["cells"]:
        p = cell["parameters"]
        state = notebook_state(grid["output_dir"] / f"{cell['name']}.ipynb")
        row = _cell_row(cell["name"], cell["label"], p["model"], p["dataset"], variant=bool(p.get("settings")))
        entry = recorded.get(cell["name"], {})
        if entry.get("status") == "not available":
            rows.append({**row, "status": "not available", "error": entry.get("error")})
        elif state is None:
            rows.append({**row, "status": "not run"})
        elif state["exception"]:
            rows.append({**row, "status": "failed", "error": entry.get("error") or "see its run page"})
        else:
            # Each dataset is loaded (and its checksums verified) once, however many models ran on it.
            where = (p["dataset"], p.get("root", root))
            if where not in datasets:
                datasets[where] = load_dataset(p["dataset"], where[1])
            run = open_run(p["model"], datasets[where], limit=p.get("limit"), out=p.get("out"),
                           settings=p.get("settings"))
            rows.append({**_complete_row(run), **row})  # the cell's label, not the run's model name
    return pd.DataFrame(rows)


def _cell_row(cell: str, label: str, model: str, dataset: str, *, variant: bool) -> dict:
    # "model" is the cell's label (unique per dataset); "base_model" the registry model it runs,
    # and "variant" marks a model run under overridden settings (another prompt, both orders).
    family = model_family(model)
    return {"cell": cell, "model": label, "base_model": model, "variant": variant, "dataset": dataset,
            "family": family, "kind": "MLLM" if "MLLM" in family else "FR"}


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


def _recorded_status(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    return {c["name"]: c for c in json.loads(path.read_text())["cells"]}


def main_table(results: pd.DataFrame, *, value: str = "accuracy") -> pd.DataFrame:
    """Model × dataset table, as the paper's main table: k-fold accuracy mean ± std in %.

    ``value`` may also be ``"hard_accuracy"`` or ``"acquire_rate"``. Cells that
    did not run say so instead of showing a number. Variants (a model under other
    settings: prompt templates, both orders) belong to the analyses, not here.
    """
    def cell(r):
        if r["status"] != "complete":
            return r["status"]
        if value == "accuracy":
            return f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        v = r.get(value)
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"

    main = results[~results["variant"]] if "variant" in results else results
    t = main.assign(value=main.apply(cell, axis=1))
    return t.pivot(index="model", columns="dataset", values="value").rename_axis(index="Model", columns="Dataset")


def dataset_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per dataset evaluated: pairs, genuine, impostor and folds, from the runs themselves."""
    done = results[results["status"] == "complete"]
    cols = {"n_pairs": "Pairs", "n_genuine": "Genuine", "n_impostor": "Impostor"}
    if done.empty:
        return pd.DataFrame({"": ["no dataset has been run"]})
    t = done.groupby("dataset")[list(cols)].max().astype(int).rename(columns=cols)
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
        return _not_run("no dataset whose pairs carry groups (RFW) is complete")
    return pd.DataFrame(rows).set_index(["Model", "Dataset"])


def status_table(results: pd.DataFrame) -> pd.DataFrame:
    """Which grid cells ran, failed or were not run, with the pairs done and any error."""
    cols = {"cell": "Cell", "status": "Status", "n_pairs": "Pairs scored", "n_errors": "Pair errors", "error": "Error"}
    cols = {k: v for k, v in cols.items() if k in results}
    counts = {c: results[c].astype("Int64") for c in ("n_pairs", "n_errors") if c in results}  # NaN where not run
    return results.assign(**counts)[list(cols)].astype(object).fillna("").rename(columns=cols).set_index("Cell")


def glue_results(results: pd.DataFrame) -> None:
    """Glue each complete cell's numbers as ``<cell>__<metric>``, and the dataset,
    model and prompt tables, for the book's prose."""
    from myst_nb import glue

    for r in results[results["status"] == "complete"].to_dict("records"):
        glue_metrics({k: v for k, v in r.items() if k not in ("groups", "run")}, prefix=f"{r['cell']}__")
    glue("dataset_table", dataset_table(results), display=False)
    glue("models_table", models_table(results), display=False)
    glue("prompts_table", prompts_table(results), display=False)


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
            "prompt template": m.get("prompt_template"), "rendered prompt": m.get("prompt"),
            "image handling": m.get("image_handling"),
            "settings hash": m.get("settings_hash"), "dataset checksum": m.get("dataset_checksum"),
            "git commit": (m.get("git") or {}).get("commit"), "uncommitted changes": (m.get("git") or {}).get("dirty"),
            "status": m.get("status"), "created": m.get("created"), "updated": m.get("updated")}
    rows = {k: v for k, v in rows.items() if v is not None}  # FR runs have no prompt
    rows |= {f"version: {k}": v for k, v in (m.get("versions") or {}).items()}
    return pd.DataFrame({"Value": {k: str(v) for k, v in rows.items()}}).rename_axis("Run")


# ------------------------------------------------------------------ beyond the paper
#
# Every function below takes the table of `collect` and works on its complete
# cells; where the runs a section needs do not exist yet it returns a one-row
# table that says "not run" and why, so the book shows the section either way.


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


def caption(runs: list[Run], what: str) -> str:
    """A figure caption naming the dataset, the models and the pair counts."""
    t = runs[0].table
    pairs = f"{len(t)} pairs ({int(t['same'].sum())} genuine, {int((~t['same']).sum())} impostor)"
    models = ", ".join(run.model for run in runs)
    return f"*{what}. Dataset: {runs[0].dataset.name}, {pairs}. Models: {models}.*"


def show(fig, text: str) -> None:
    """Display a figure with its caption under it, and free it."""
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    display(fig)
    plt.close(fig)
    display(Markdown(text))


def roc_det_figure(runs: list[Run]):
    """ROC (TAR against FAR) and DET (FRR against FAR) curves of every run of one
    dataset on one pair of axes. Both axes are symlog, so rates of 0 stay on the
    plot while the low rates that matter are spread out."""
    import matplotlib.pyplot as plt

    fig, (roc, det) = plt.subplots(1, 2, figsize=(10, 4.2))
    for run in runs:
        t = _scored(run)
        if t["same"].nunique() < 2:
            continue
        scores, labels = t["score"].to_numpy(float), t["same"].to_numpy()
        fpr, tpr, _ = roc_curve(scores, labels)
        far, frr, _ = det_curve(scores, labels)
        roc.step(fpr, tpr, where="post", label=run.model)
        det.step(far, frr, where="post", label=run.model)
    for ax in (roc, det):
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set(xlim=(0, 1), xlabel="False accept rate (FAR)")
    det.set_yscale("symlog", linthresh=1e-3)
    roc.set(ylim=(0, 1.01), ylabel="True accept rate (TAR)", title="ROC")
    det.set(ylim=(0, 1.01), ylabel="False reject rate (FRR)", title="DET")
    roc.legend(loc="lower right")
    fig.suptitle(f"{runs[0].dataset.name}: {len(runs)} model(s)")
    fig.tight_layout()
    return fig


def score_distributions_figure(runs: list[Run]):
    """Genuine and impostor score histograms, one panel per model (scores are on
    each model's own scale, so the panels do not share an x axis)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cols = min(len(runs), PANELS_PER_ROW)
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs):
        t = _scored(run).assign(pair=lambda d: d["same"].map({True: "genuine", False: "impostor"}))
        sns.histplot(data=t, x="score", hue="pair", hue_order=["genuine", "impostor"], bins=30, element="step",
                     stat="density", common_norm=False, ax=ax)
        ax.set(title=f"{run.model} ({len(t)} pairs scored)", xlabel="score (higher = more alike)")
    fig.tight_layout()
    return fig


def per_dataset_figures(results: pd.DataFrame, kind: str) -> None:
    """Display, for each dataset, its ``"curves"`` (ROC + DET) or ``"scores"``
    (distributions) figure with a caption; says "not run" when nothing ran."""
    figures = {"curves": (roc_det_figure, "ROC (left) and DET (right) curves, every model on one plot"),
               "scores": (score_distributions_figure, "Genuine and impostor score distributions")}
    if kind not in figures:
        raise ValueError(f"kind must be one of {sorted(figures)}; got {kind!r}")
    make, what = figures[kind]
    by_dataset = runs_by_dataset(results)
    if not by_dataset:
        from IPython.display import Markdown, display

        display(Markdown(f"*{NOT_RUN}: no grid cell is complete.*"))
    for runs in by_dataset.values():
        show(make(runs), caption(runs, what))


def tar_at_far_table(results: pd.DataFrame, *, fars=TABLE_FARS) -> pd.DataFrame:
    """TAR at several FARs in %, per dataset and model. A FAR below one impostor
    pair (far × impostors < 1) cannot be measured and says so."""
    done = _complete(results)
    if done.empty:
        return _not_run("no grid cell is complete")
    rows = []
    for r in done.to_dict("records"):
        t = _scored(r["run"])
        scores, labels = t["score"].to_numpy(float), t["same"].to_numpy()
        n_imp = int((~labels).sum())
        row = {"Dataset": r["dataset"], "Model": r["model"], "Impostor pairs": n_imp}
        for far in fars:
            label = f"TAR @ FAR={far_key(far)[len('tar_at_far_'):]}"
            if labels.all() or not labels.any():
                row[label] = "n/a"
            elif far * n_imp < 1:
                row[label] = "not resolved"
            else:
                row[label] = f"{100 * tar_at_far(scores, labels, far):.2f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index(["Dataset", "Model"])


def _decides(run: Run) -> bool:
    return bool(run.table["decision"].notna().any())


def bootstrap_table(results: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> pd.DataFrame:
    """Accuracy with its percentile-bootstrap confidence interval, per dataset and model.

    k-fold accuracy: pairs are resampled within each (fold, label) stratum and
    the whole protocol is re-run on each resample (see
    :func:`facebench.metrics.bootstrap_ci`). Own-decision accuracy (models that
    answer by themselves): over the pairs with a valid decision.
    """
    done = _complete(results)
    if done.empty:
        return _not_run("no grid cell is complete")
    pct = f"{100 * level:g}% CI"
    rows = []
    for r in done.to_dict("records"):
        run = r["run"]
        t = _scored(run)
        row = {"Dataset": r["dataset"], "Model": r["model"], "Pairs": len(t)}
        if t["same"].nunique() == 2 and t["fold"].nunique() > 1:
            ci = bootstrap_ci(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy(),
                              n_resamples=n_resamples, seed=seed, level=level)
            row |= {"k-fold accuracy": f"{100 * ci['estimate']:.2f}", f"k-fold {pct}": _interval(ci)}
        else:
            row |= {"k-fold accuracy": "n/a", f"k-fold {pct}": "n/a"}
        d = run.table[run.table["decision"].isin([0, 1])]
        if _decides(run) and len(d):
            ci = bootstrap_ci(d["decision"].to_numpy(float), d["same"].to_numpy(), statistic="decision_accuracy",
                              n_resamples=n_resamples, seed=seed, level=level)
            row |= {"Own-decision accuracy": f"{100 * ci['estimate']:.2f}", f"Own-decision {pct}": _interval(ci)}
        else:
            row |= {"Own-decision accuracy": "—", f"Own-decision {pct}": "—"}
        rows.append(row)
    return pd.DataFrame(rows).set_index(["Dataset", "Model"])


def _interval(ci: dict) -> str:
    return f"[{100 * ci['low']:.2f}, {100 * ci['high']:.2f}]"


def paired_comparison(run_a: Run, run_b: Run) -> dict:
    """Two runs judged pair by pair on the pairs both scored: each pair's k-fold
    decision (the threshold learned on the other folds, as in the main table),
    right or wrong, and the exact McNemar test on the pairs where they disagree.

    Pairs without a finite score from either model are left out and counted in
    ``n_excluded``.
    """
    def correct(run: Run) -> pd.Series:
        t = _scored(run)
        if t["same"].nunique() < 2 or t["fold"].nunique() < 2:
            return pd.Series(dtype=bool)
        decisions = kfold_decisions(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy())
        return pd.Series(decisions == t["same"].to_numpy(), index=t["pair_id"].to_numpy())

    a, b = correct(run_a), correct(run_b)
    common = a.index.intersection(b.index)
    result = mcnemar_test(a.loc[common].to_numpy(), b.loc[common].to_numpy())
    return {**result, "n_excluded": len(run_a.table["pair_id"].unique()) - len(common)}


def _paired_row(a_name: str, b_name: str, dataset: str, r: dict) -> dict:
    return {"Dataset": dataset, "A": a_name, "B": b_name, "Pairs compared": r["n_pairs"],
            "Accuracy A": f"{100 * r['accuracy_a']:.2f}", "Accuracy B": f"{100 * r['accuracy_b']:.2f}",
            "Only A right": r["a_only"], "Only B right": r["b_only"], "Both wrong": r["neither"],
            "McNemar p": f"{r['pvalue']:.3g}"}


def mcnemar_table(results: pd.DataFrame) -> pd.DataFrame:
    """Each MLLM (A) against the best face-recognition model (B, highest k-fold
    accuracy) of the same dataset, pair by pair (:func:`paired_comparison`)."""
    done = _complete(results)
    rows = []
    for dataset, part in done.groupby("dataset", sort=False):
        fr, mllm = part[part["kind"] == "FR"], part[part["kind"] == "MLLM"]
        if fr.empty or mllm.empty:
            continue
        best = fr.loc[fr["accuracy_mean"].astype(float).idxmax()]
        for r in mllm.to_dict("records"):
            rows.append(_paired_row(r["model"], best["model"], dataset, paired_comparison(r["run"], best["run"])))
    if not rows:
        return _not_run("needs an MLLM and a face-recognition model complete on the same dataset")
    return pd.DataFrame(rows).set_index(["Dataset", "A"])


def finetune_table(results: pd.DataFrame) -> pd.DataFrame:
    """Each fine-tuned model (a models.yaml entry with ``base_model``, e.g.
    FaceLLM-8B on InternVL3-8B) against its base, pair by pair on each dataset
    where both are complete."""
    from facebench.models import registry_entries

    done = _complete(results)
    bases = {name: e["base_model"] for name, e in registry_entries().items() if e.get("base_model")}
    rows = []
    for dataset, part in done.groupby("dataset", sort=False):
        runs = dict(zip(part["model"], part["run"]))
        for tuned, base in bases.items():
            if tuned in runs and base in runs:
                rows.append(_paired_row(tuned, base, dataset, paired_comparison(runs[tuned], runs[base])))
    if not rows:
        pairs = ", ".join(f"{t} vs {b}" for t, b in bases.items()) or "none in models.yaml"
        return _not_run(f"no fine-tuned model and its base are complete on the same dataset ({pairs})")
    return pd.DataFrame(rows).set_index(["Dataset", "A"])


def _raw(value) -> dict:
    if not isinstance(value, str):
        return {}
    try:
        doc = json.loads(value)
    except ValueError:
        return {"answer": value}
    return doc if isinstance(doc, dict) else {"answer": str(doc)}


def order_consistency_table(results: pd.DataFrame) -> pd.DataFrame:
    """For MLLM runs that asked each pair in both orders (A,B then B,A; setting
    ``both_orders``): how often the two answers agree, how the two scores
    correlate, and the own-decision accuracy of each order."""
    rows = []
    for r in _complete(results).to_dict("records"):
        t = r["run"].table
        ba = t["raw_output"].map(lambda v: _raw(v).get("ba"))
        t = t.assign(ba_decision=ba.map(lambda d: d.get("decision") if isinstance(d, dict) else None),
                     ba_score=ba.map(lambda d: d.get("score") if isinstance(d, dict) else None))
        both = t[t["decision"].isin([0, 1]) & t["ba_decision"].isin([0, 1])]
        if both.empty:
            continue
        scores = both[["score", "ba_score"]].astype(float).dropna()
        rows.append({"Dataset": r["dataset"], "Model": r["model"], "Pairs with both answers": len(both),
                     "Same answer both orders": f"{100 * (both['decision'] == both['ba_decision']).mean():.2f}",
                     "Score correlation": f"{scores['score'].corr(scores['ba_score']):.3f}" if len(scores) > 2 else "n/a",
                     "Accuracy A,B": f"{100 * (both['decision'] == both['same']).mean():.2f}",
                     "Accuracy B,A": f"{100 * (both['ba_decision'] == both['same']).mean():.2f}"})
    if not rows:
        return _not_run("no MLLM run asked both orders (model setting both_orders: true)")
    return pd.DataFrame(rows).set_index(["Dataset", "Model"])


def prompt_sensitivity_table(results: pd.DataFrame) -> pd.DataFrame:
    """One MLLM on one dataset under several prompt templates (including
    non-English ones): k-fold accuracy, own-decision accuracy and acquire rate
    per template, from each run's recorded template."""
    done = _complete(results)
    done = done[done["kind"] == "MLLM"] if not done.empty else done
    rows = []
    by = "base_model" if "base_model" in done else "model"
    for (dataset, model), part in done.groupby(["dataset", by], sort=False):
        if part["prompt_template"].nunique() < 2:
            continue
        for r in part.to_dict("records"):
            m = r["run"].manifest
            rows.append({"Dataset": dataset, "Model": model, "Template": r["prompt_template"],
                         "Language": m.get("prompt_language"),
                         "k-fold accuracy": f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}",
                         "Own-decision accuracy": _pct(r.get("hard_accuracy")),
                         "Acquire rate": _pct(r.get("acquire_rate"))})
    if not rows:
        return _not_run("no MLLM has been run with two or more prompt templates on the same dataset")
    return pd.DataFrame(rows).set_index(["Dataset", "Model", "Template"])


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def prompts_table(results: pd.DataFrame):
    """The exact prompt each MLLM run was given (the rendered chat template from
    its manifest), with the template name, language and image handling."""
    rows = {}
    for r in _complete(results).to_dict("records"):
        m = r["run"].manifest
        if m.get("prompt"):
            rows[(r["model"], m.get("prompt_template"))] = {
                "Language": m.get("prompt_language"), "Images": m.get("image_handling"),
                "Both orders": m.get("both_orders"), "Rendered prompt": m["prompt"]}
    if not rows:
        return _not_run("no MLLM has been run, so no prompt has been rendered")
    t = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["Model", "Template"])
    # Escaped, with line breaks kept: the prompt is shown exactly as the model got it.
    return t.style.format(escape="html").set_properties(subset=["Rendered prompt"],
                                                       **{"white-space": "pre-wrap", "font-family": "monospace"})


# ------------------------------------------------------------------ hardest pairs


def _thumbnail(image) -> str:
    image = image.copy()
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="data:image/jpeg;base64,{data}" width="{image.width}" height="{image.height}" '
            f'alt="face" style="margin:0 2px">')


def _answer_text(raw) -> str:
    doc = _raw(raw)
    if "answer" in doc:
        return str(doc["answer"])
    if {"a", "b"} <= set(doc):  # embedding models: how each face was found
        return f"A: {doc['a']}; B: {doc['b']}"
    return "" if raw is None or (isinstance(raw, float) and math.isnan(raw)) else str(raw)


def hardest_pairs(run: Run, *, k: int = 3, kind: str = "FR") -> pd.DataFrame:
    """The ``k`` genuine pairs with the lowest scores and the ``k`` impostor pairs
    with the highest, each marked as a false reject / false accept when the
    model got it wrong: by its own answer for an MLLM, by the k-fold rule for a
    face-recognition model."""
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    t = _scored(run)
    if t.empty:
        return t.assign(call=[], error=[])
    if kind == "MLLM" and t["decision"].notna().any():
        call = t["decision"].map({1: "same", 0: "different"}).fillna("invalid")
    elif t["same"].nunique() == 2 and t["fold"].nunique() > 1:
        same = kfold_decisions(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy())
        call = pd.Series(np.where(same, "same", "different"), index=t.index)
    else:
        call = pd.Series("n/a", index=t.index)
    t = t.assign(call=call)
    t = t.assign(error=np.select([t["same"] & (t["call"] == "different"), ~t["same"] & (t["call"] == "same")],
                                 ["false reject", "false accept"], ""))
    genuine = t[t["same"]].nsmallest(k, "score")
    impostor = t[~t["same"]].nlargest(k, "score")
    return pd.concat([genuine, impostor])


def hardest_pairs_gallery(results: pd.DataFrame, *, k: int = 3):
    """HTML: per dataset and model, :func:`hardest_pairs` with both faces as
    thumbnails, the score, the call and the model's answer text."""
    from IPython.display import HTML

    done = _complete(results)
    if done.empty:
        return HTML(f"<p><em>{NOT_RUN}: no grid cell is complete.</em></p>")
    parts = []
    for r in done.to_dict("records"):
        run = r["run"]
        rows = []
        for p in hardest_pairs(run, k=k, kind=r["kind"]).to_dict("records"):
            faces = _thumbnail(run.dataset.images.load(p["image_a"])) + _thumbnail(run.dataset.images.load(p["image_b"]))
            verdict = f"<strong>{p['error']}</strong>" if p["error"] else "right"
            rows.append(f"<tr><td>{p['pair_id']}</td><td>{'genuine' if p['same'] else 'impostor'}</td>"
                        f"<td>{faces}</td><td>{p['score']:.3f}</td><td>{html.escape(p['call'])}</td>"
                        f"<td>{verdict}</td><td>{html.escape(_answer_text(p['raw_output'])[:200])}</td></tr>")
        head = ("<tr><th>Pair</th><th>Truth</th><th>Faces (A, B)</th><th>Score</th><th>Call</th>"
                "<th>Verdict</th><th>Model output</th></tr>")
        parts.append(f"<h4>{html.escape(r['model'])} on {html.escape(r['dataset'])}</h4>"
                     f"<table class='hardest-pairs'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
    return HTML("\n".join(parts))


# ------------------------------------------------------------------ reported vs reproduced

PUBLISHED_KEYS = ("id", "system", "dataset", "metric", "value", "source", "verified")
PUBLISHED_METRICS = {"accuracy_mean": "k-fold accuracy", "hard_accuracy": "own-threshold accuracy"}


def load_published(path) -> list[dict]:
    """The published numbers of ``path`` (see book/published_results.yaml),
    checked: every entry has its keys, a known metric, a value in (0, 100] and a
    source with a title and a URL. Errors name the file and the entry."""
    path = Path(path)
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ValueError(f"{path}: expected a mapping with a 'results' list")
    for i, e in enumerate(doc["results"]):
        name = e.get("id", "no id") if isinstance(e, dict) else repr(e)
        where = f"{path}: entry {i} ({name})"
        if not isinstance(e, dict):
            raise ValueError(f"{where}: not a mapping")
        missing = [k for k in PUBLISHED_KEYS if k not in e]
        if missing:
            raise ValueError(f"{where}: lacks {missing}")
        if e["metric"] not in PUBLISHED_METRICS:
            raise ValueError(f"{where}: metric {e['metric']!r} is not one of {sorted(PUBLISHED_METRICS)}")
        # Accuracies are printed in %; a value of 1 or less is a fraction typed by mistake.
        if isinstance(e["value"], bool) or not isinstance(e["value"], (int, float)) or not 1 < e["value"] <= 100:
            raise ValueError(f"{where}: value must be a percentage in (1, 100] (99.38, not 0.9938); "
                             f"got {e['value']!r}")
        source = e["source"]
        if not isinstance(source, dict) or not source.get("title") or not source.get("url"):
            raise ValueError(f"{where}: source needs at least a title and a url")
    return doc["results"]


def _source_text(s: dict) -> str:
    parts = [s.get("authors"), str(s["year"]) if s.get("year") else None, f"*{s['title']}*", s.get("where")]
    return ", ".join(p for p in parts if p) + f". <{s['url']}>"


def _source_numbers(entries: list[dict]) -> dict[str, int]:
    """One number per distinct source, in order of first use."""
    numbers: dict[str, int] = {}
    for e in entries:
        numbers.setdefault(_source_text(e["source"]), len(numbers) + 1)
    return numbers


def published_sources(path):
    """The numbered list of sources that :func:`published_table`'s "Source" column refers to, as Markdown."""
    from IPython.display import Markdown

    numbers = _source_numbers(load_published(path))
    return Markdown("\n".join(f"{n}. {text}" for text, n in numbers.items()))


def _matches(run_settings: dict | None, wanted: dict | None) -> bool:
    return all((run_settings or {}).get(k) == v for k, v in (wanted or {}).items())


def published_table(results: pd.DataFrame, path) -> pd.DataFrame:
    """Published numbers next to this checkout's: the same model (and, where the
    entry names them, settings) on the same dataset, same metric. A number
    nobody has reproduced here says "not run"."""
    done = _complete(results)
    entries = load_published(path)
    numbers = _source_numbers(entries)
    rows = []
    for e in entries:
        ours = NOT_RUN
        if e.get("model") is None:
            ours = f"{NOT_RUN} (not a model here)"
        elif not done.empty:
            hit = done[(done["model"] == e["model"]) & (done["dataset"] == e["dataset"])]
            hit = hit[[_matches(s, e.get("settings")) for s in hit["settings"]]]
            if not hit.empty:
                r = hit.iloc[0]
                ours = (f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
                        if e["metric"] == "accuracy_mean" else _pct(r.get(e["metric"])))
        wanted = ", ".join(f"{k}={v}" for k, v in (e.get("settings") or {}).items())
        rows.append({"System": e["system"] + (f" ({wanted})" if wanted else ""), "Dataset": e["dataset"],
                     "Metric": PUBLISHED_METRICS[e["metric"]], "Published (%)": f"{e['value']:.2f}",
                     "This checkout (%)": ours, "Source": f"[{numbers[_source_text(e['source'])]}]",
                     "Checked": "yes" if e["verified"] else "unverified"})
    return pd.DataFrame(rows).set_index(["System", "Dataset"])
