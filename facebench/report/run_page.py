"""What a run page shows: the run's metrics, its ROC curve, its score distributions and provenance."""
from __future__ import annotations

import json
import math

import pandas as pd

from facebench.metrics import MIN_FALSE_ACCEPTS, roc_curve
from facebench.scoring import Run, status_of

METRIC_LABELS = {
    "hard_accuracy_all": "Own-answer accuracy (all pairs, invalid = wrong)",
    "hard_accuracy": "Own-answer accuracy (valid answers only)",
    "accuracy_mean": "Accuracy, learned threshold (k-fold mean)",
    "accuracy_std": "Accuracy, learned threshold (k-fold std)", "auc": "ROC AUC", "eer": "EER",
    "tar_at_far_1e-2": "TAR @ FAR=1e-2", "tar_at_far_1e-3": "TAR @ FAR=1e-3", "acquire_rate": "Acquire rate",
    "refusal_rate": "Refusal rate",
}


def run_metrics(run: Run) -> dict:
    """The run's metrics (:meth:`~facebench.scoring.Run.metrics`) with ``n_scored`` of
    ``n_total`` pairs stored, ``n_with_score`` of them with a score; only the first two
    counts while nothing is stored yet."""
    n_total, n_scored = len(run.table), int(run.table["stored"].sum())
    if not n_scored:
        return {"n_scored": 0, "n_total": n_total}
    return {**run.metrics(), "n_scored": n_scored, "n_total": n_total,
            "n_with_score": int(run.table["score"].notna().sum())}


def metrics_table(m: dict) -> pd.DataFrame:
    """The headline metrics of one run (:func:`run_metrics`) as a two-column table."""
    rows = [("Pairs scored", f"{m['n_scored']} of {m['n_total']}")] if "n_scored" in m else []
    if m.get("n_scored") == 0:
        rows.append(("Metrics", "none yet: `facebench evaluate` (or `facebench grid`) scores the pairs"))
        return pd.DataFrame(rows, columns=["Metric", "Value"]).set_index("Metric")
    unresolved = {k: unresolved_text(m["tar_false_accepts"][k]) for k in m.get("tar_unresolved", ())}
    rows += [(label, unresolved.get(key) or _fmt(m[key], key)) for key, label in METRIC_LABELS.items() if key in m]
    rows += [("Pairs", f"{m['n_pairs']} ({m['n_genuine']} genuine, {m['n_impostor']} impostor)"),
             ("Folds", str(len(m["fold_accuracies"])))]
    return pd.DataFrame(rows, columns=["Metric", "Value"]).set_index("Metric")


def unresolved_text(false_accepts: int) -> str:
    """What a TAR@FAR resting on too few false accepts shows instead of a number
    (:data:`~facebench.metrics.MIN_FALSE_ACCEPTS`, Doddington's rule of 30); the run
    page and the TAR table both say it."""
    return f"not resolved ({false_accepts} of {MIN_FALSE_ACCEPTS} false accepts)"


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
    """ROC curves (TAR against FAR, log FAR axis) of several runs on one plot; None when no run
    has a scored pair of each kind."""
    import matplotlib.pyplot as plt

    if not any(run.table.dropna(subset=["score"])["same"].nunique() == 2 for run in runs):
        return None
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
    """Genuine and impostor score histograms of one run; None while it has no scored pair."""
    import matplotlib.pyplot as plt

    from facebench.report.figures import score_histograms

    if run.table["score"].notna().sum() == 0:
        return None
    t = run.table.dropna(subset=["score"])
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    score_histograms(ax, t)
    ax.set(xlabel="score (higher = more alike)",
           title=f"{run.model} on {run.dataset.name}: {int(t['same'].sum())} genuine, {int((~t['same']).sum())} impostor pairs")
    fig.tight_layout()
    return fig


def notes(m: dict):
    """The metric caveats of a run (unresolved FAR, invalid outputs, why a figure is missing) as Markdown."""
    from IPython.display import Markdown

    if not m.get("n_scored", True):
        return Markdown("- **nothing scored yet**: no metric, no figure")
    lines = [f"- {f}" for f in m["flags"]] or ["- no caveats"]
    if m.get("n_scored") and not m.get("n_with_score"):
        lines.insert(0, f"- **no ROC curve and no score distribution**: none of the {m['n_scored']} stored pairs "
                        f"has a score (acquire rate {_fmt(m.get('acquire_rate'))}), so there is nothing to plot")
    if not m.get("complete", True):
        lines.insert(0, "- **partial run**: only the pairs scored so far are counted")
    return Markdown("\n".join(lines))


def provenance_table(run: Run) -> pd.DataFrame:
    """What produced this run: model, settings, dataset checksum, versions, commit; its status
    from the stored rows, not the manifest, so a process killed while scoring leaves nothing stale."""
    m, t = run.manifest, run.table
    done = int((t["stored"] & t["error"].isna()).sum())
    rows = {"model": m.get("model"), "model id": m.get("model_id"), "revision": m.get("revision"),
            "device": m.get("device"), "settings": json.dumps(m.get("settings"), sort_keys=True),
            "runtime settings (not part of the identity)": json.dumps(m["runtime_settings"], sort_keys=True)
            if m.get("runtime_settings") else None,
            "imported from": "{file} (sha256 {sha256})".format(**m["imported"]) if m.get("imported") else None,
            "prompt template": m.get("prompt_template"), "rendered prompt": m.get("prompt"),
            "image handling": m.get("image_handling"),
            "settings hash": m.get("settings_hash"), "dataset checksum": m.get("dataset_checksum"),
            "git commit": (m.get("git") or {}).get("commit"), "uncommitted changes": (m.get("git") or {}).get("dirty"),
            "status": status_of(done, len(t)), "created": m.get("created"), "updated": m.get("updated")}
    rows = {k: v for k, v in rows.items() if v is not None}  # FR runs have no prompt
    rows |= {f"version: {k}": v for k, v in (m.get("versions") or {}).items()}
    return pd.DataFrame({"Value": {k: str(v) for k, v in rows.items()}}).rename_axis("Run")
