"""The study's tables: the paper's main table, per-group accuracy, TAR@FAR, confidence
intervals, paired tests, order consistency, prompt sensitivity and the prompts themselves.

Every function takes the table of :func:`facebench.report.collect` and works on
its complete cells; where the runs a table needs do not exist yet it returns a
one-row table that says "not run" and why, so the book shows the section either way.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from facebench.metrics import bootstrap_ci, far_key, kfold_decisions, mcnemar_test, tar_at_far
from facebench.report.collecting import _complete, _not_run, _scored
from facebench.report.run_page import glue_metrics
from facebench.scoring import Run

TABLE_FARS = (1e-1, 1e-2, 1e-3)


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


def glue_results(results: pd.DataFrame, grid) -> None:
    """Glue each complete cell's numbers as ``<cell>__<metric>``, the introduction's
    ``headline`` (:func:`~facebench.report.headline`) and the dataset, model and
    prompt tables, for the book's prose."""
    from myst_nb import glue

    from facebench.report.collecting import headline

    for r in results[results["status"] == "complete"].to_dict("records"):
        glue_metrics({k: v for k, v in r.items() if k not in ("groups", "run")}, prefix=f"{r['cell']}__")
    glue("headline", headline(results, grid), display=False)
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
