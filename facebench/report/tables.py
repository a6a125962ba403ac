"""The study's tables: the main table (each model under its own protocol), own answers and
learned thresholds, per-group accuracy and error rates, TAR@FAR, confidence intervals,
paired tests, order consistency, prompt sensitivity and the prompts themselves.

Every function takes the table of :func:`facebench.report.collect` and works on
its complete cells; where the runs a table needs do not exist yet it returns a
one-row table that says "not run" and why, so the book shows the section either way.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from facebench.extraction import raw_fields as _raw
from facebench.metrics import (MIN_FALSE_ACCEPTS, binomial_ci, bootstrap_ci, false_accepts_at_far, far_key,
                               holm_adjust, identity_clusters, kfold_accuracy, kfold_decisions, mcnemar_test,
                               tar_at_far)
from facebench.report.collecting import _complete, _not_run, _scored
from facebench.report.run_page import unresolved_text
from facebench.scoring import Run

TABLE_FARS = (1e-1, 1e-2, 1e-3)


# What the main table shows for each kind of model: the protocol the paper most likely used for
# MLLMs (their yes/no answers, scored as given; paper-evidence: an inference, not stated) and the
# standard k-fold protocol for face-recognition models.
MAIN_METRICS = {"MLLM": "own answers, invalid = wrong", "FR": "k-fold accuracy"}
MAIN_VALUES = ("protocol", "accuracy", "hard_accuracy", "hard_accuracy_all", "acquire_rate")


def main_table(results: pd.DataFrame, *, value: str = "protocol") -> pd.DataFrame:
    """Model × dataset table in %; cells that did not run say so instead of showing a number.

    ``value="protocol"`` (the main table): each model as its own protocol
    scores it, named in the "Metric" index level. An MLLM: the accuracy of
    its own answers over all pairs, an answer that cannot be read counted as
    wrong (no threshold is learned on the data); "—" for an MLLM whose runs
    stored no answers (imported scores). A face-recognition model: k-fold
    accuracy, mean ± std over the folds. Any other ``value`` shows one
    measure for every model: ``"accuracy"`` (k-fold accuracy with a threshold
    learned on the other folds, for an MLLM on its log-odds: see
    :func:`learned_threshold_table`), ``"hard_accuracy"`` (own answers,
    valid ones only), ``"hard_accuracy_all"``, ``"acquire_rate"``. Variants (a
    model under other settings: prompt templates, both orders) belong to the
    analyses, not here.
    """
    if value not in MAIN_VALUES:
        raise ValueError(f"value must be one of {list(MAIN_VALUES)}; got {value!r}")

    def measure(r):
        return ("hard_accuracy_all" if r["kind"] == "MLLM" else "accuracy") if value == "protocol" else value

    def cell(r):
        if r["status"] != "complete":
            return r["status"]
        if measure(r) == "accuracy":
            return f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
        return _pct(r.get(measure(r)))

    main = results[~results["variant"]] if "variant" in results else results
    t = main.assign(value=main.apply(cell, axis=1), metric=main.apply(lambda r: MAIN_METRICS[r["kind"]], axis=1))
    index = ["model", "metric"] if value == "protocol" else "model"
    return t.pivot(index=index, columns="dataset", values="value").rename_axis(
        index=["Model", "Metric"] if value == "protocol" else "Model", columns="Dataset")


def learned_threshold_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every model's k-fold accuracy with a learned threshold, mean ± std in %: for each
    fold, the threshold that maximises accuracy on the other folds; for an MLLM, on its
    score ($\\log P(\\text{yes}) - \\log P(\\text{no})$), not on its answers. Not the
    protocol the main table uses for MLLMs: it shows what their scores could reach with
    a threshold tuned on labelled pairs."""
    return main_table(results, value="accuracy")


def own_answer_table(results: pd.DataFrame) -> pd.DataFrame:
    """Own-answer accuracy over the valid answers only, next to the acquire rate (the share
    of pairs with a valid answer), in %, per model and dataset: the second reading of the
    main table's MLLM numbers, which count an invalid answer as wrong. "—" for a model
    without answers of its own."""
    main = results[~results["variant"]] if "variant" in results else results
    rows = []
    for r in main.to_dict("records"):
        for measure, key in (("Valid answers only", "hard_accuracy"), ("Acquire rate", "acquire_rate")):
            rows.append({"Model": r["model"], "Dataset": r["dataset"], "Measure": measure,
                         "value": _pct(r.get(key)) if r["status"] == "complete" else r["status"]})
    if not rows:
        return _not_run("no grid cell")
    t = pd.DataFrame(rows)
    columns = pd.MultiIndex.from_tuples(list(dict.fromkeys(zip(t["Dataset"], t["Measure"]))),
                                        names=["Dataset", ""])
    return t.pivot(index="Model", columns=["Dataset", "Measure"], values="value").reindex(columns=columns)


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
    """Model × group k-fold accuracy in % (a threshold learned within each group), with
    the mean, the standard deviation and the skewed error ratio (largest error /
    smallest error) across groups."""
    rows = []
    for r in results.to_dict("records"):
        groups = r.get("groups") or {}
        if not isinstance(groups, dict) or not groups:
            continue
        rows.append(_spread_row(r, pd.Series(groups)))
    if not rows:
        return _not_run("no dataset whose pairs carry groups (RFW) is complete")
    return pd.DataFrame(rows).set_index(["Model", "Dataset"])


def _spread_row(r: dict, acc: pd.Series, **extra) -> dict:
    """Per-group accuracies in %, their mean, population STD and skewed error ratio, then ``extra``."""
    err = 1 - acc
    ser = err.max() / err.min() if err.min() > 0 else math.inf
    return {"Model": r["model"], "Dataset": r["dataset"], **(100 * acc).round(2).to_dict(),
            "Mean": round(100 * acc.mean(), 2), "STD": round(100 * acc.std(ddof=0), 2), "SER": round(ser, 2),
            **extra}


def _grouped(results: pd.DataFrame):
    """Each complete run whose pairs carry groups, with its stored pairs that have one."""
    for r in _complete(results).to_dict("records"):
        t = r["run"].table
        t = t[t["stored"] & t["group"].notna()]
        if len(t):
            yield r, t


def group_decision_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per group (e.g. RFW race), a model's own answers with no threshold learned on the
    data: accuracy over all the group's pairs in %, an invalid answer counted wrong, with
    the mean, STD and skewed error ratio across groups, and each group's acquire rate. A
    model's decisions are what a user of it gets; a threshold tuned per group would hide
    the bias in them."""
    rows = []
    for r, t in _grouped(results):
        if not _decides(r["run"]):
            continue
        by = t.assign(right=t["decision"] == t["same"].astype(float), valid=t["decision"].isin([0, 1]))
        by = by.groupby("group")[["right", "valid"]].mean()
        rows.append(_spread_row(r, by["right"], **{f"Acquire rate, {g}": round(100 * v, 2)
                                                   for g, v in by["valid"].items()}))
    if not rows:
        return _not_run("no model with answers of its own is complete on a dataset whose pairs carry groups (RFW)")
    return pd.DataFrame(rows).set_index(["Model", "Dataset"])


def group_threshold_table(results: pd.DataFrame) -> pd.DataFrame:
    """False match rate (impostor pairs accepted) and false non-match rate (genuine pairs
    not accepted) per group in %, at one decision rule for every group: the k-fold
    threshold learned on all groups together (each fold's from the other folds), and,
    for a model with answers of its own, its answers (an invalid answer is no match).
    Unlike per-group tuned thresholds, a single rule shows which groups it fails."""
    rows = []
    for r, t in _grouped(results):
        scored = t[np.isfinite(t["score"].to_numpy(float))]
        rules = {}
        if scored["same"].nunique() == 2 and scored["fold"].nunique() > 1:
            rules["one learned threshold (k-fold, all groups)"] = scored.assign(match=kfold_decisions(
                scored["score"].to_numpy(float), scored["same"].to_numpy(), scored["fold"].to_numpy()))
        if _decides(r["run"]):
            rules["own answers"] = t.assign(match=t["decision"] == 1)
        for rule, d in rules.items():
            row = {"Model": r["model"], "Dataset": r["dataset"], "Decision": rule}
            for g, part in d.groupby("group"):
                impostor, genuine = part.loc[~part["same"], "match"], part.loc[part["same"], "match"]
                row[f"FMR, {g}"] = _pct(impostor.mean()) if len(impostor) else "n/a"
                row[f"FNMR, {g}"] = _pct(1 - genuine.mean()) if len(genuine) else "n/a"
            rows.append(row)
    if not rows:
        return _not_run("no dataset whose pairs carry groups (RFW) is complete")
    return pd.DataFrame(rows).set_index(["Model", "Dataset", "Decision"])


def status_table(results: pd.DataFrame) -> pd.DataFrame:
    """Which grid cells ran, failed or were not run, with the pairs done and any error."""
    cols = {"cell": "Cell", "status": "Status", "n_pairs": "Pairs scored", "n_errors": "Pair errors", "error": "Error"}
    cols = {k: v for k, v in cols.items() if k in results}
    counts = {c: results[c].astype("Int64") for c in ("n_pairs", "n_errors") if c in results}  # NaN where not run
    return results.assign(**counts)[list(cols)].astype(object).fillna("").rename(columns=cols).set_index("Cell")


def glue_results(results: pd.DataFrame, grid) -> None:
    """Glue the introduction's ``headline`` (:func:`~facebench.report.headline`) and the
    dataset, model and prompt tables, for the book's prose.

    A cell's own numbers are glued on its run page (``runs/<cell>.ipynb::<metric>``):
    gluing every cell's here sent thousands of outputs through one cell, more than the
    kernel's output channel queues, and at the full study's size the last ones, these
    among them, were dropped.
    """
    from myst_nb import glue

    from facebench.report.collecting import headline

    glue("headline", headline(results, grid), display=False)
    glue("dataset_table", dataset_table(results), display=False)
    glue("models_table", models_table(results), display=False)
    glue("prompts_table", prompts_table(results), display=False)
    glue("layout_table", layout_table(results), display=False)


def models_table(results: pd.DataFrame) -> pd.DataFrame:
    """Model id, revision, where its weights came from, what was done to the images before
    the model's processor (MLLMs: as given, or the ``image_size`` they were resized to) and
    settings of each model, as its runs recorded them, with the licence and training data
    ``facebench/models.yaml`` states (blank where it states none, as for the MLLMs)."""
    from facebench.models import registry_entries

    rows = {}
    if "run_dir" not in results:
        return pd.DataFrame({"": ["no model has been run"]})
    for r in results[results["status"] == "complete"].to_dict("records"):
        m = json.loads((Path(r["run_dir"]) / "manifest.json").read_text())
        entry = registry_entries().get(r.get("base_model", r["model"])) or {}
        rows[r["model"]] = {"Model id": m.get("model_id"), "Revision": m.get("revision"),
                            "Weights from": m.get("weights_source", ""), "Licence": entry.get("licence", ""),
                            "Training data": entry.get("training_data", ""),
                            "Images": m.get("image_handling", ""),
                            "Settings": json.dumps(m.get("settings"), sort_keys=True)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("Model")


def layout_table(results: pd.DataFrame) -> pd.DataFrame:
    """The form each dataset was read in, as its complete runs' manifests record it: the
    layout (``facebench data check NAME`` lists the accepted ones, tried in order) and
    whether the images are the aligned 112×112 crops insightface packs into a ``.bin``
    or the image files the layout names (for LFW's ``pairs.txt + lfw/``, the original
    250×250 photos, the face in a looser frame). A dataset read in two layouts by
    different runs has a row for each."""
    done = _complete(results)
    if done.empty:
        return _not_run("no grid cell is complete")
    rows = {}
    for r in done.to_dict("records"):
        info = r["run"].manifest.get("dataset_info") or {}
        key = (r["dataset"], info.get("layout") or "not recorded")
        images = ("aligned 112×112 crops (insightface .bin)" if info.get("image_files") is False
                  else "image files" if info.get("layout") else "not recorded")
        rows.setdefault(key, {"Images": images, "Runs": 0})["Runs"] += 1
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(["Dataset", "Layout"])


def tar_at_far_table(results: pd.DataFrame, *, fars=TABLE_FARS) -> pd.DataFrame:
    """TAR at several FARs in %, per dataset and model. A TAR whose threshold admits fewer
    than 30 impostor pairs (Doddington's rule of 30,
    :func:`~facebench.metrics.false_accepts_at_far`) says "not resolved" and how many it
    admits, by the same rule as each run's page."""
    done = _complete(results)
    if done.empty:
        return _not_run("no grid cell is complete")
    rows = []
    for r in done.to_dict("records"):
        t = _scored(r["run"])
        scores, labels = t["score"].to_numpy(float), t["same"].to_numpy()
        row = {"Dataset": r["dataset"], "Model": r["model"], "Impostor pairs": int((~labels).sum())}
        for far in fars:
            label = f"TAR @ FAR={far_key(far)[len('tar_at_far_'):]}"
            row[label] = "n/a" if labels.all() or not labels.any() else _tar_text(scores, labels, far)
        rows.append(row)
    return pd.DataFrame(rows).set_index(["Dataset", "Model"])


def _tar_text(scores, labels, far) -> str:
    n = false_accepts_at_far(scores, labels, far)
    return unresolved_text(n) if n < MIN_FALSE_ACCEPTS else f"{100 * tar_at_far(scores, labels, far):.2f}"


def _decides(run: Run) -> bool:
    return bool(run.table["decision"].notna().any())


def bootstrap_table(results: pd.DataFrame, *, n_resamples: int = 1000, seed: int = 0,
                    level: float = 0.95) -> pd.DataFrame:
    """Each accuracy of the main tables, and the AUC, with a confidence interval at ``level``,
    per dataset and model: "estimate [low, high]", accuracies in %.

    Own answers (over all pairs, an invalid answer counted wrong; over the
    valid answers): the exact Clopper–Pearson interval of k pairs right of n
    (:func:`~facebench.metrics.binomial_ci`), never zero-width. k-fold accuracy
    (learned threshold) and AUC: the identity bootstrap
    (:func:`~facebench.metrics.bootstrap_ci` with ``clusters``), which
    resamples people rather than pairs, because pairs that share a person err
    together and a pair bootstrap comes out too narrow. The people are the
    dataset's own identities where it lists them, else inferred from its
    genuine pairs (:func:`~facebench.metrics.identity_clusters`); the "People"
    column says which. The k-fold interval is widened, where it is narrower,
    to the Clopper–Pearson interval of the pairs its k-fold decisions got
    right: no resample of a sample without errors has one, so the bootstrap
    alone would say [100, 100]. An AUC that every resample puts at one value
    says so instead of showing a zero-width interval.
    """
    done = _complete(results)
    if done.empty:
        return _not_run("no grid cell is complete")
    rows = []
    for r in done.to_dict("records"):
        run = r["run"]
        stored, t = run.table[run.table["stored"]], _scored(run)
        row = {"Dataset": r["dataset"], "Model": r["model"], "Pairs": len(stored)}
        right = stored["decision"] == stored["same"].astype(float)
        n_valid = int(stored["decision"].isin([0, 1]).sum())
        row["Own answers, all pairs"] = _exact(int(right.sum()), len(stored), level) if _decides(run) else "—"
        row["Own answers, valid only"] = _exact(int(right.sum()), n_valid, level) if n_valid else "—"
        scores, same, folds = t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy()
        if t["same"].nunique() == 2 and t["fold"].nunique() > 1:
            clusters, row["People"] = _people(run, t)
            ci, auc = bootstrap_ci(scores, same, folds, statistic=["kfold_accuracy", "auc"], clusters=clusters,
                                   n_resamples=n_resamples, seed=seed, level=level)
            low, high = binomial_ci(int(np.sum(kfold_decisions(scores, same, folds) == same)), len(t), level=level)
            row["k-fold accuracy"] = _with_interval(ci["estimate"], min(low, ci["low"]), max(high, ci["high"]))
            row["AUC"] = (f"{auc['estimate']:.3f} (every resample)" if auc["low"] == auc["high"] else
                          f"{auc['estimate']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]")
        else:
            row |= {"People": "n/a", "k-fold accuracy": "n/a", "AUC": "n/a"}
        rows.append(row)
    return pd.DataFrame(rows).set_index(["Dataset", "Model"])


def _with_interval(estimate: float, low: float, high: float) -> str:
    return f"{100 * estimate:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def _exact(k: int, n: int, level: float) -> str:
    return _with_interval(k / n, *binomial_ci(k, n, level=level))


def _people(run: Run, t: pd.DataFrame) -> tuple:
    """The person on each side of each pair of ``t`` and how they are known, in words."""
    identities = run.dataset.info.get("identities")
    keys = set(t["image_a"]) | set(t["image_b"])
    known = isinstance(identities, dict) and keys <= set(identities)
    clusters = identity_clusters(t["image_a"], t["image_b"], t["same"], identities=identities if known else None)
    return clusters, f"{len(np.unique(clusters))} ({'listed by the dataset' if known else 'inferred from genuine pairs'})"


def paired_comparison(run_a: Run, run_b: Run) -> dict:
    """Two runs judged pair by pair, each as the main table scores it, and the exact
    McNemar test on the pairs where one is right and the other wrong.

    An MLLM with answers of its own is judged on them, an answer that cannot be
    read counted as wrong; any other run (a face-recognition model, or an MLLM
    whose runs stored scores only) on its k-fold decisions (the threshold
    learned on the other folds) over the pairs with a finite score. Pairs
    judged in one run but not in the other are left out and counted in
    ``n_excluded``.
    """
    a, b = _judged(run_a), _judged(run_b)
    common = a.index.intersection(b.index)
    result = mcnemar_test(a.loc[common].to_numpy(), b.loc[common].to_numpy())
    return {**result, "n_excluded": len(run_a.table["pair_id"].unique()) - len(common)}


def _judged(run: Run) -> pd.Series:
    """Per pair id, whether the run got the pair right as the main table judges it."""
    from facebench.report.collecting import model_family

    if "MLLM" in model_family(run.model) and _decides(run):
        t = run.table[run.table["stored"]]
        return pd.Series((t["decision"] == t["same"].astype(float)).to_numpy(), index=t["pair_id"].to_numpy())
    t = _scored(run)
    if t["same"].nunique() < 2 or t["fold"].nunique() < 2:
        return pd.Series(dtype=bool)
    decisions = kfold_decisions(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy())
    return pd.Series(decisions == t["same"].to_numpy(), index=t["pair_id"].to_numpy())


def _paired_row(a_name: str, b_name: str, dataset: str, r: dict) -> dict:
    return {"Dataset": dataset, "A": a_name, "B": b_name, "Pairs compared": r["n_pairs"],
            "Accuracy A": f"{100 * r['accuracy_a']:.2f}", "Accuracy B": f"{100 * r['accuracy_b']:.2f}",
            "Only A right": r["a_only"], "Only B right": r["b_only"], "Both wrong": r["neither"],
            "p": r["pvalue"]}


def _paired_table(rows: list[dict]) -> pd.DataFrame:
    """:func:`_paired_row` rows as a table, with Holm's adjustment over all of them: the
    table is one family of tests, and Holm's bound holds however they depend on each other."""
    t = pd.DataFrame(rows)
    p = t.pop("p").to_numpy(float)
    t["McNemar p"] = [f"{v:.3g}" for v in p]
    t["Holm-adjusted p"] = [f"{v:.3g}" for v in holm_adjust(p)]
    return t.set_index(["Dataset", "A"])


def mcnemar_table(results: pd.DataFrame) -> pd.DataFrame:
    """Each MLLM (A) against the best face-recognition model (B, highest k-fold
    accuracy) of the same dataset, pair by pair (:func:`paired_comparison`), with
    Holm-adjusted p-values over the whole table."""
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
    return _paired_table(rows)


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
    return _paired_table(rows)


def order_consistency_table(results: pd.DataFrame) -> pd.DataFrame:
    """For MLLM runs that asked each pair in both orders (A,B then B,A; setting
    ``both_orders``): how often the two answers agree, how the two scores
    correlate, and the own-answer accuracy of each order, all on the same pairs:
    those answered validly in both orders (out of the pairs asked)."""
    rows = []
    for r in _complete(results).to_dict("records"):
        t = r["run"].table
        t = t[t["stored"]]
        ba = t["raw_output"].map(lambda v: _raw(v).get("ba"))
        t = t.assign(ba_decision=ba.map(lambda d: d.get("decision") if isinstance(d, dict) else None),
                     ba_score=ba.map(lambda d: d.get("score") if isinstance(d, dict) else None))
        both = t[t["decision"].isin([0, 1]) & t["ba_decision"].isin([0, 1])]
        if both.empty:
            continue
        scores = both[["score", "ba_score"]].astype(float).dropna()
        rows.append({"Dataset": r["dataset"], "Model": r["model"], "Pairs asked": len(t),
                     "Pairs with both answers": len(both),
                     "Same answer both orders": f"{100 * (both['decision'] == both['ba_decision']).mean():.2f}",
                     "Score correlation": f"{scores['score'].corr(scores['ba_score']):.3f}" if len(scores) > 2 else "n/a",
                     "Accuracy A,B": f"{100 * (both['decision'] == both['same']).mean():.2f}",
                     "Accuracy B,A": f"{100 * (both['ba_decision'] == both['same']).mean():.2f}"})
    if not rows:
        return _not_run("no MLLM run asked both orders (model setting both_orders: true)")
    return pd.DataFrame(rows).set_index(["Dataset", "Model"])


def prompt_sensitivity_table(results: pd.DataFrame) -> pd.DataFrame:
    """One MLLM on one dataset under several prompt templates (including
    non-English ones), one run per template (the first in grid order), each
    template from its run's manifest, compared on the same pairs: own-answer
    accuracy over all pairs (an invalid answer counted wrong), acquire rate,
    own-answer accuracy on the pairs every template answered validly, and
    k-fold accuracy (learned threshold) on the pairs every template scored."""
    done = _complete(results)
    done = done[done["kind"] == "MLLM"] if not done.empty else done
    rows = []
    by = "base_model" if "base_model" in done else "model"
    for (dataset, model), part in done.groupby(["dataset", by], sort=False):
        part = part.drop_duplicates("prompt_template")
        if len(part) < 2:
            continue
        records = part.to_dict("records")
        tables = [r["run"].table[r["run"].table["stored"]] for r in records]
        answered = _pairs_in_all(tables, lambda t: t["decision"].isin([0, 1]))
        scored = _pairs_in_all(tables, _has_score)
        for r, t in zip(records, tables):
            m, a, s = r["run"].manifest, t[t["pair_id"].isin(answered)], t[t["pair_id"].isin(scored)]
            rows.append({"Dataset": dataset, "Model": model, "Template": r["prompt_template"],
                         "Language": m.get("prompt_language"),
                         "Own answers, all pairs": _pct(r.get("hard_accuracy_all")),
                         "Acquire rate": _pct(r.get("acquire_rate")), "Refusal rate": _pct(r.get("refusal_rate")),
                         "Pairs every template answered": len(answered),
                         "Own answers on those": _pct((a["decision"] == a["same"].astype(float)).mean()
                                                      if len(a) else None),
                         "Pairs every template scored": len(scored), "k-fold accuracy on those": _kfold_text(s)})
    if not rows:
        return _not_run("no MLLM has been run with two or more prompt templates on the same dataset")
    return pd.DataFrame(rows).set_index(["Dataset", "Model", "Template"])


def resolution_table(results: pd.DataFrame) -> pd.DataFrame:
    """One MLLM on one dataset at several image sizes (model setting ``image_size``: each
    image resized to N×N, bicubic, before the model's processor), next to its run on the
    images as given where there is one; runs that differ in another setting (a prompt,
    both orders) are never compared. Each size: the layout its dataset was read in (what
    "as given" is), own-answer accuracy over all pairs (an invalid answer counted wrong),
    acquire rate, and k-fold accuracy and AUC on the pairs every size scored. A model
    is shown only where a run of it has an image size of its own."""
    from facebench.metrics import roc_auc_score

    done = _complete(results)
    done = done[done["kind"] == "MLLM"] if not done.empty else done
    rows = []
    by = "base_model" if "base_model" in done else "model"
    for (dataset, model), part in (done.groupby(["dataset", by], sort=False) if not done.empty else []):
        settings = part["settings"].map(lambda v: v if isinstance(v, dict) else {})
        size = settings.map(lambda v: v.get("image_size"))
        others = settings.map(lambda v: json.dumps({k: x for k, x in v.items() if k != "image_size"},
                                                   sort_keys=True, default=str))
        for _, same in part.assign(_size=size, _others=others).groupby("_others", sort=False):
            if same["_size"].isna().all():
                continue
            same = same.drop_duplicates("_size").sort_values("_size", key=lambda v: v.fillna(0), kind="stable")
            records = same.to_dict("records")
            tables = [r["run"].table[r["run"].table["stored"]] for r in records]
            scored = _pairs_in_all(tables, _has_score)
            for r, t in zip(records, tables):
                s = t[t["pair_id"].isin(scored)]
                n = r["_size"]
                rows.append({"Dataset": dataset, "Model": model,
                             "Image size": "as given" if pd.isna(n) else f"{int(n)}×{int(n)}", "Cell": r["model"],
                             "Layout": (r["run"].manifest.get("dataset_info") or {}).get("layout", "not recorded"),
                             "Own answers, all pairs": _pct(r.get("hard_accuracy_all")),
                             "Acquire rate": _pct(r.get("acquire_rate")), "Pairs every size scored": len(scored),
                             "k-fold accuracy on those": _kfold_text(s),
                             "AUC on those": f"{roc_auc_score(s['score'].to_numpy(float), s['same'].to_numpy()):.3f}"
                             if s["same"].nunique() == 2 else "n/a"})
    if not rows:
        return _not_run("no MLLM has been run at an image size of its own (model setting image_size)")
    return pd.DataFrame(rows).set_index(["Dataset", "Model", "Image size", "Cell"])


def _pairs_in_all(tables: list[pd.DataFrame], keep) -> set:
    """The pair ids whose rows ``keep(t)`` (a row mask) selects in every one of ``tables``:
    the pairs on which several runs of one model are compared."""
    return set.intersection(*(set(t.loc[keep(t), "pair_id"]) for t in tables))


def _has_score(t: pd.DataFrame):
    return np.isfinite(t["score"].to_numpy(float))


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _kfold_text(t: pd.DataFrame) -> str:
    """k-fold accuracy mean ± std in % of a run's pairs ``t``; "n/a" where it is undefined."""
    if t["same"].nunique() < 2 or t["fold"].nunique() < 2:
        return "n/a"
    acc, _ = kfold_accuracy(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy())
    return f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}"


def prompts_table(results: pd.DataFrame):
    """The exact prompt each MLLM run was given (the rendered chat template from
    its manifest), with the template name, language, the extraction rule that
    read its answers and image handling."""
    rows = {}
    for r in _complete(results).to_dict("records"):
        m = r["run"].manifest
        if m.get("prompt"):
            rows[(r["model"], m.get("prompt_template"))] = {
                "Language": m.get("prompt_language"), "Extraction rule": m.get("extraction"),
                "Images": m.get("image_handling"), "Both orders": m.get("both_orders"), "Rendered prompt": m["prompt"]}
    if not rows:
        return _not_run("no MLLM has been run, so no prompt has been rendered")
    t = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["Model", "Template"])
    # Escaped, with line breaks kept: the prompt is shown exactly as the model got it.
    return t.style.format(escape="html").set_properties(subset=["Rendered prompt"],
                                                       **{"white-space": "pre-wrap", "font-family": "monospace"})


def _rereadings(results: pd.DataFrame) -> list[tuple[dict, str | None, dict]]:
    """Each complete MLLM run with a prompt template, the rule its manifest records, and
    its pairs read again (:func:`~facebench.extraction.reparse`) under every rule, None
    where a rule cannot read the template."""
    from facebench.extraction import load_rule, reparse, rule_names, run_reading

    out = []
    for r in _complete(results).to_dict("records"):
        prompt, own = run_reading(r["run"]) if r["kind"] == "MLLM" else (None, None)
        if prompt is not None:
            rules = [load_rule(name) for name in rule_names()]
            out.append((r, own, {rule.identity: None if rule.cannot_read(prompt) else reparse(r["run"], rule.name)
                                 for rule in rules}))
    return out


def extraction_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every MLLM run's stored answers read under each extraction rule
    (``facebench/extraction.yaml``), the rules side by side for each measure:
    own-answer accuracy over valid answers and over all pairs (invalid counted
    wrong), acquire rate, refusal rate, and how many decisions differ from the
    stored ones (0 under the run's own rule). "n/a" where a rule cannot read the
    template (VLMEvalKit's rule knows only the English words)."""
    from facebench.extraction import reparse_summary

    measures = {"Own-answer accuracy": "hard_accuracy", "Invalid counted wrong": "hard_accuracy_all",
                "Acquire rate": "acquire_rate", "Refusal rate": "refusal_rate", "Changed vs stored": "n_changed"}
    rows, index = [], []
    for r, _, read in _rereadings(results):
        done = {rule: reparse_summary(pairs) for rule, pairs in read.items() if pairs is not None}
        rows.append({(label, rule): "n/a" if rule not in done else done[rule][key] if key == "n_changed"
                     else _pct(done[rule][key]) for label, key in measures.items() for rule in read})
        index.append((r["dataset"], r["model"], r["run"].manifest["prompt_template"]))
    if not rows:
        return _not_run("no MLLM run with stored answers is complete")
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Dataset", "Model", "Template"]),
                        columns=pd.MultiIndex.from_tuples(list(rows[0]), names=[None, "Rule"]))


def _reading(pairs: pd.DataFrame) -> pd.Series:
    names = pairs["decision"].map({1: "yes", 0: "no", -1: "invalid"}).fillna("no answer")
    return names.mask(pairs["refusal"], "refusal")


def extraction_disagreements(results: pd.DataFrame, *, k: int = 3) -> pd.DataFrame:
    """For every MLLM run, the pairs the run's own rule and each other rule read
    differently, by the two readings (yes, no, invalid, refusal), with up to
    ``k`` of the most frequent answer texts among them."""
    rows, rereadings = [], _rereadings(results)
    for r, own, read in rereadings:
        base = own if read.get(own) is not None else next(iter(read))
        for rule, pairs in read.items():
            if rule == base or pairs is None:
                continue
            a, b = _reading(read[base]), _reading(pairs)
            differ = pairs.assign(a=a, b=b)[a != b]
            for (x, y), part in differ.groupby(["a", "b"]):
                examples = part["answer"].value_counts().index[:k]
                rows.append({"Dataset": r["dataset"], "Model": r["model"], "Rules": f"{base} vs {rule}",
                             "Read as": f"{x} vs {y}", "Pairs": len(part),
                             "Example answers": " · ".join(json.dumps(e if len(e) <= 60 else e[:59] + "…",
                                                                     ensure_ascii=False) for e in examples)})
    if not rereadings:
        return _not_run("no MLLM run with stored answers is complete")
    if not rows:
        return pd.DataFrame({"": ["the rules read every stored answer alike"]}, index=[""])
    return pd.DataFrame(rows).set_index(["Dataset", "Model", "Rules", "Read as"])
