"""The study's figures: one look for all, ROC/DET curves and score distributions per dataset,
and the gallery of hardest pairs."""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import pandas as pd

from facebench.metrics import det_curve, kfold_decisions, roc_curve
from facebench.report.collecting import NOT_RUN, _complete, _scored, runs_by_dataset
from facebench.report.tables import _raw
from facebench.scoring import Run

PALETTE = "colorblind"


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

    cols = min(len(runs), PANELS_PER_ROW)
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, runs):
        t = _scored(run)
        score_histograms(ax, t)
        ax.set(title=f"{run.model} ({len(t)} pairs scored)", xlabel="score (higher = more alike)")
    fig.tight_layout()
    return fig


def score_histograms(ax, t: pd.DataFrame, *, bins: int = 30) -> None:
    """The genuine and the impostor scores of the pairs ``t`` on ``ax``: each kind's density
    (its own area 1) as a filled, outlined step, on bins shared by both kinds."""
    # numpy and matplotlib directly: seaborn's histplot spent a third of a second a panel,
    # and the full study draws about 150 panels.
    scores, same = t["score"].to_numpy(float), t["same"].to_numpy(bool)
    finite = np.isfinite(scores)
    scores, same = scores[finite], same[finite]
    edges = np.histogram_bin_edges(scores, bins=bins)
    for k, (name, which) in enumerate((("genuine", same), ("impostor", ~same))):
        if which.any():
            density, _ = np.histogram(scores[which], bins=edges, density=True)
            ax.stairs(density, edges, fill=True, alpha=0.25, color=f"C{k}")
            ax.stairs(density, edges, color=f"C{k}", label=name)
    ax.set_ylabel("Density")
    if len(scores):
        ax.legend(title="pair")


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
    model got it wrong: by its own answer for an MLLM (an answer that cannot be
    read: "invalid answer"), by the k-fold rule for a face-recognition model."""
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
    # An answer that cannot be read is wrong, as in the main table's own-answer accuracy.
    t = t.assign(error=np.select([t["same"] & (t["call"] == "different"), ~t["same"] & (t["call"] == "same"),
                                  t["call"] == "invalid"], ["false reject", "false accept", "invalid answer"], ""))
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
