import json
from dataclasses import replace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

from facebench import report
from facebench.datasets import load_demo
from facebench.metrics import auc_permutation_test, kfold_accuracy, kfold_decisions, mcnemar_test
from facebench.scoring import Run
from facebench.store import RunStore

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def demo():
    return load_demo()


def make_run(root, dataset, model, scores, *, decisions=None, raw=None, manifest=None, folder=None):
    """A stored run of ``model`` on ``dataset`` with the given per-pair results, in the real on-disk format."""
    store = RunStore(root / (folder or model) / dataset.name)
    rows = []
    for i, pid in enumerate(dataset.pairs["pair_id"]):
        rows.append({"pair_id": int(pid), "score": scores[i], "seconds": 0.01,
                     "decision": None if decisions is None else int(decisions[i]),
                     "raw_output": None if raw is None else raw[i]})
    store.write(rows)
    store.write_manifest({"settings": {}, **(manifest or {})})
    return Run(model, dataset, store, dataset)


def synthetic_scores(dataset, *, seed, gap=1.5):
    rng = np.random.default_rng(seed)
    return rng.normal(gap * dataset.pairs["same"].to_numpy(), 1.0)


def test_results_from_runs_gives_collect_columns_and_kind(tmp_path, demo):
    fr = make_run(tmp_path, demo, "dlib", synthetic_scores(demo, seed=0))
    mllm = make_run(tmp_path, demo, "negative-control", synthetic_scores(demo, seed=1, gap=0.3))
    results = report.results_from_runs([fr, mllm])
    assert results["kind"].tolist() == ["FR", "MLLM"]
    assert results["status"].eq("complete").all() and results["run"].tolist() == [fr, mllm]
    assert report.model_family("hf:some/model") == "MLLM" and report.model_family("onnx:x.onnx") == "face recognition"
    assert "dlib" in report.main_table(results).index


def test_main_table_shows_each_model_under_its_own_protocol(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    fr_scores = synthetic_scores(demo, seed=0)
    answers = same.astype(int)
    answers[:6] = -1  # unreadable
    answers[10:15] = 1 - answers[10:15]  # wrong
    mllm_scores = synthetic_scores(demo, seed=1)
    fr = make_run(tmp_path, demo, "dlib", fr_scores)
    mllm = make_run(tmp_path, demo, "negative-control", mllm_scores, decisions=answers)
    results = report.results_from_runs([fr, mllm])
    main = report.main_table(results)["demo"]
    acc, _ = kfold_accuracy(fr_scores, same, demo.pairs["fold"])
    assert main[("dlib", "k-fold accuracy")] == f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}"
    assert main[("negative-control", "own answers, invalid = wrong")] == f"{100 * 43 / 54:.2f}"
    own = report.own_answer_table(results)["demo"]
    assert own.loc["negative-control"].tolist() == [f"{100 * 43 / 48:.2f}", f"{100 * 48 / 54:.2f}"]
    assert own.loc["dlib", "Valid answers only"] == "—"  # no answers of its own stored
    learned = report.learned_threshold_table(results)["demo"]
    acc, _ = kfold_accuracy(mllm_scores, same, demo.pairs["fold"])
    assert learned["negative-control"] == f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}"
    with pytest.raises(ValueError, match="value must be one of"):
        report.main_table(results, value="auc")


def test_every_section_says_not_run_without_runs():
    empty = pd.DataFrame(columns=["cell", "model", "dataset", "status"])
    for table in (report.tar_at_far_table(empty), report.bootstrap_table(empty), report.mcnemar_table(empty),
                  report.finetune_table(empty), report.order_consistency_table(empty),
                  report.prompt_sensitivity_table(empty), report.prompts_table(empty), report.group_table(empty),
                  report.group_decision_table(empty), report.group_threshold_table(empty),
                  report.own_answer_table(empty)):
        assert table.iloc[0, 0].startswith("not run: ")
    assert "not run" in report.hardest_pairs_gallery(empty).data


def test_mcnemar_table_compares_each_mllm_with_the_best_fr_model(tmp_path, demo):
    weak_fr = make_run(tmp_path, demo, "dlib", synthetic_scores(demo, seed=2, gap=0.2))
    strong_fr = make_run(tmp_path, demo, "arcface-r50", synthetic_scores(demo, seed=3, gap=4.0))
    mllm = make_run(tmp_path, demo, "negative-control", synthetic_scores(demo, seed=4, gap=0.5))
    results = report.results_from_runs([weak_fr, strong_fr, mllm])
    table = report.mcnemar_table(results)
    row = table.loc[("demo", "negative-control")]
    assert row["B"] == "arcface-r50"  # the better of the two FR models
    # the same numbers by hand: k-fold decisions per pair, then McNemar
    p = demo.pairs
    right = [kfold_decisions(r.table["score"], p["same"], p["fold"]) == p["same"] for r in (mllm, strong_fr)]
    expected = mcnemar_test(*right)
    assert (row["Only A right"], row["Only B right"], row["Pairs compared"]) == (
        expected["a_only"], expected["b_only"], 54)
    assert row["McNemar p"] == row["Holm-adjusted p"] == f"{expected['pvalue']:.3g}"  # a family of one


def test_mcnemar_judges_an_mllm_on_its_answers_and_adjusts_for_the_family(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    fr = make_run(tmp_path, demo, "dlib", same + np.linspace(0, 0.1, 54))  # every pair right under k-fold
    answers = same.astype(int)
    answers[:6] = -1  # six unreadable answers: wrong, as in the main table
    answers[10:13] = 1 - answers[10:13]
    mllm = make_run(tmp_path, demo, "negative-control", synthetic_scores(demo, seed=4), decisions=answers)
    other = make_run(tmp_path, demo, "qwen2-vl-2b", synthetic_scores(demo, seed=5), decisions=same.astype(int))
    table = report.mcnemar_table(report.results_from_runs([fr, mllm, other]))
    row = table.loc[("demo", "negative-control")]
    assert (row["Only A right"], row["Only B right"], row["Pairs compared"]) == (0, 9, 54)
    assert row["Accuracy A"] == f"{100 * 45 / 54:.2f}"
    # b = 0, c = 9: p = 2 / 2^9; the other MLLM ties the FR model everywhere: p = 1. Holm: 2p, then max(2p, 1).
    assert row["McNemar p"] == f"{2 / 2 ** 9:.3g}" and row["Holm-adjusted p"] == f"{4 / 2 ** 9:.3g}"
    assert table.loc[("demo", "qwen2-vl-2b"), "Holm-adjusted p"] == "1"


def test_paired_comparison_leaves_out_pairs_without_a_score(tmp_path, demo):
    a_scores = synthetic_scores(demo, seed=5)
    a_scores[:4] = np.nan
    a = make_run(tmp_path, demo, "facellm-8b", a_scores)
    b = make_run(tmp_path, demo, "internvl3-8b", synthetic_scores(demo, seed=6))
    r = report.paired_comparison(a, b)
    assert (r["n_pairs"], r["n_excluded"]) == (50, 4)
    table = report.finetune_table(report.results_from_runs([a, b]))
    assert table.loc[("demo", "facellm-8b"), "B"] == "internvl3-8b"


def test_order_consistency_reads_both_answers_from_raw_output(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    ab = same.astype(int)
    ba = ab.copy()
    ba[:6] = 1 - ba[:6]  # six pairs answered the other way round when swapped
    raw = [json.dumps({"answer": "Yes" if d else "No", "ba": {"score": float(s), "decision": int(e), "answer": "x"}})
           for d, e, s in zip(ab, ba, np.linspace(-1, 1, 54))]
    run = make_run(tmp_path, demo, "negative-control", np.linspace(-1, 1, 54), decisions=ab, raw=raw,
                   manifest={"both_orders": True})
    row = report.order_consistency_table(report.results_from_runs([run])).iloc[0]
    assert row["Pairs with both answers"] == 54
    assert row["Same answer both orders"] == f"{100 * 48 / 54:.2f}"
    assert row["Accuracy A,B"] == "100.00" and row["Accuracy B,A"] == f"{100 * 48 / 54:.2f}"


def test_prompt_sensitivity_and_prompts_table_from_manifests(tmp_path, demo):
    runs = []
    for i, (template, lang) in enumerate([("paper-yesno@v1", "en"), ("fr-ouinon@v1", "fr")]):
        runs.append(make_run(tmp_path, demo, "negative-control", synthetic_scores(demo, seed=i),
                             folder=f"nc{i}", manifest={"prompt_template": template, "prompt_language": lang,
                                                        "prompt": f"<|im_start|>user\n<image>{lang} question"}))
    results = report.results_from_runs(runs)
    table = report.prompt_sensitivity_table(results)
    assert set(table.index.get_level_values("Template")) == {"paper-yesno@v1", "fr-ouinon@v1"}
    html = report.prompts_table(results).to_html()
    assert "&lt;|im_start|&gt;user" in html and "<|im_start|>" not in html  # shown verbatim, escaped
    assert "pre-wrap" in html


def test_prompt_sensitivity_compares_templates_on_the_same_pairs(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    english, french = same.astype(int), same.astype(int)
    english[:4] = -1  # unreadable in English on pairs 0-3
    french[2:8] = -1  # in French on pairs 2-7
    french[20:30] = 1 - french[20:30]  # and ten wrong French answers
    scores = [synthetic_scores(demo, seed=1), synthetic_scores(demo, seed=2)]
    scores[1][40:44] = np.nan  # four French answers without a score
    runs = [make_run(tmp_path, demo, "negative-control", s, decisions=d, folder=f"nc{i}",
                     manifest={"prompt_template": t, "prompt_language": t[:2]})
            for i, (s, d, t) in enumerate(zip(scores, (english, french), ("paper-yesno@v1", "fr-ouinon@v1")))]
    table = report.prompt_sensitivity_table(report.results_from_runs(runs)).droplevel(["Dataset", "Model"])
    assert (table["Pairs every template answered"] == 54 - 8).all()  # pairs 0-7 are out of both rows
    assert table.loc["paper-yesno@v1", "Own answers on those"] == "100.00"
    assert table.loc["fr-ouinon@v1", "Own answers on those"] == f"{100 * 36 / 46:.2f}"
    assert table.loc["paper-yesno@v1", "Own answers, all pairs"] == f"{100 * 50 / 54:.2f}"
    assert table.loc["fr-ouinon@v1", "Own answers, all pairs"] == f"{100 * 38 / 54:.2f}"
    assert (table["Pairs every template scored"] == 50).all()
    kept = ~demo.pairs["pair_id"].isin(range(40, 44)).to_numpy()
    acc, _ = kfold_accuracy(scores[0][kept], same[kept], demo.pairs["fold"][kept])
    assert table.loc["paper-yesno@v1", "k-fold accuracy on those"] == f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}"


def bigger(demo, times=8):
    """The demo's pairs repeated (new pair ids): 72 genuine and 360 impostor pairs on the same images."""
    pairs = pd.concat([demo.pairs] * times, ignore_index=True).assign(pair_id=lambda p: range(len(p)))
    return replace(demo, pairs=pairs)


def test_tar_table_and_run_page_agree_on_the_rule_of_30(tmp_path, demo):
    big = bigger(demo)
    scores = synthetic_scores(big, seed=7)
    run = make_run(tmp_path, big, "dlib", scores)
    row = report.tar_at_far_table(report.results_from_runs([run])).iloc[0]
    page = report.metrics_table(report.run_metrics(run))["Value"]
    assert row["Impostor pairs"] == 360
    # FAR=1e-1 admits 36 of 360 impostor pairs (scores are distinct): the lowest threshold doing so is the
    # 36th highest impostor score, and TAR is the share of genuine pairs at or above it.
    same = big.pairs["same"].to_numpy()
    t = np.sort(scores[~same])[::-1][35]
    assert row["TAR @ FAR=1e-1"] == f"{100 * np.mean(scores[same] >= t):.2f}"
    # FAR=1e-2 admits 3, 1e-3 none: fewer than the 30 Doddington's rule asks for, on the page as in the table
    assert row["TAR @ FAR=1e-2"] == page["TAR @ FAR=1e-2"] == "not resolved (3 of 30 false accepts)"
    assert row["TAR @ FAR=1e-3"] == page["TAR @ FAR=1e-3"] == "not resolved (0 of 30 false accepts)"
    # a perfect model on the demo's 45 impostor pairs: 100% on neither page nor table
    perfect = make_run(tmp_path, demo, "dlib", demo.pairs["same"].to_numpy() + np.linspace(0, 0.1, 54), folder="p")
    row = report.tar_at_far_table(report.results_from_runs([perfect])).iloc[0]
    page = report.metrics_table(report.run_metrics(perfect))["Value"]
    assert row["TAR @ FAR=1e-2"] == page["TAR @ FAR=1e-2"] == "not resolved (0 of 30 false accepts)"
    assert row["TAR @ FAR=1e-1"] == "not resolved (4 of 30 false accepts)"  # floor(0.1 × 45) impostors admitted


def parse_interval(text):
    """ "61.11 [47.44, 73.54]" → (61.11, 47.44, 73.54)"""
    estimate, interval = text.split(" [")
    return (float(estimate), *(float(x) for x in interval.strip("]").split(",")))


def test_bootstrap_table_gives_exact_intervals_and_the_identity_bootstrap(tmp_path, demo):
    from scipy.stats import binomtest

    scores = synthetic_scores(demo, seed=8)
    decisions = (scores > 0.75).astype(int)
    decisions[:5] = -1  # five answers that could not be read
    run = make_run(tmp_path, demo, "negative-control", scores, decisions=decisions)
    row = report.bootstrap_table(report.results_from_runs([run]), n_resamples=200).iloc[0]
    same = demo.pairs["same"].to_numpy()
    right = int(np.sum(decisions == same))
    for column, n in (("Own answers, all pairs", 54), ("Own answers, valid only", 49)):
        ref = binomtest(right, n).proportion_ci(method="exact")
        assert parse_interval(row[column]) == pytest.approx((100 * right / n, 100 * ref.low, 100 * ref.high), abs=0.006)
    # k-fold accuracy: the identity bootstrap's interval, at least as wide as the exact one of its k-fold decisions
    estimate, low, high = parse_interval(row["k-fold accuracy"])
    k = int(np.sum(kfold_decisions(scores, same, demo.pairs["fold"]) == same))
    ref = binomtest(k, 54).proportion_ci(method="exact")
    assert low <= 100 * ref.low + 0.005 and high >= 100 * ref.high - 0.005 and low <= estimate <= high
    assert row["People"] == "14 (listed by the dataset)"  # 19 crops: Obama 3, the Yale subject 4, 12 others
    auc, auc_low, auc_high = parse_interval(row["AUC"])
    assert auc_low < auc < auc_high


def test_a_perfect_small_sample_never_gets_a_zero_width_interval(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    run = make_run(tmp_path, demo, "dlib", same + np.linspace(0, 0.1, 54), decisions=same.astype(int))
    row = report.bootstrap_table(report.results_from_runs([run]), n_resamples=100).iloc[0]
    low = 100 * 0.025 ** (1 / 54)  # Clopper–Pearson for 54 of 54: 93.40
    assert row["Own answers, all pairs"] == row["k-fold accuracy"] == f"100.00 [{low:.2f}, 100.00]"
    assert row["AUC"] == "1.000 (every resample)"


@pytest.fixture()
def grouped_run(tmp_path, demo):
    """Odd pair ids "African", even "Asian". African pairs all score 0.5 (the model cannot tell them
    apart) and the model answers "yes" to each, but cannot be read on the first two; Asian pairs score
    1 when genuine, 0 when not, and are answered right."""
    p = demo.pairs.assign(group=np.where(demo.pairs["pair_id"] % 2, "African", "Asian"))
    african, same = (p["group"] == "African").to_numpy(), p["same"].to_numpy()
    scores = np.where(african, 0.5, same.astype(float))
    decisions = np.where(african, 1, same.astype(int))
    decisions[np.flatnonzero(african)[:2]] = -1
    return make_run(tmp_path, replace(demo, pairs=p), "negative-control", scores, decisions=decisions), p


def test_group_table_has_per_group_accuracy_mean_std_and_ser(grouped_run):
    run, p = grouped_run
    row = report.group_table(report.results_from_runs([run])).iloc[0]
    # By hand: African scores are all alike, so each fold's threshold (learned on the other folds of the
    # group, where impostor pairs are the majority) calls every pair "different": the fold's accuracy is
    # its share of impostor pairs. Asian pairs are separated perfectly.
    african = p[p["group"] == "African"]
    acc = african.groupby("fold")["same"].apply(lambda s: 1 - s.mean()).mean()
    assert row["African"] == round(100 * acc, 2) and row["Asian"] == 100.0
    assert row["Mean"] == round(100 * (acc + 1) / 2, 2) and row["STD"] == round(100 * (1 - acc) / 2, 2)
    assert row["SER"] == np.inf  # no error on one group: the ratio is unbounded


def test_group_decision_and_threshold_tables_show_one_rule_for_every_group(grouped_run):
    run, p = grouped_run
    results = report.results_from_runs([run])
    row = report.group_decision_table(results).iloc[0]
    african = p[p["group"] == "African"]
    n, genuine = len(african), int(african["same"].sum())
    # "yes" to every African pair: right on the genuine ones, except an unreadable answer on a genuine pair
    unreadable_genuine = int(african["same"].iloc[:2].sum())
    assert row["African"] == round(100 * (genuine - unreadable_genuine) / n, 2) and row["Asian"] == 100.0
    assert row["Acquire rate, African"] == round(100 * (n - 2) / n, 2) and row["Acquire rate, Asian"] == 100.0
    t = report.group_threshold_table(results)
    own = t.loc[(run.model, "demo", "own answers")]
    # FMR: impostor pairs answered "yes"; FNMR: genuine pairs not answered "yes" (unreadable included)
    imp_yes = int((~african["same"]).sum()) - int((~african["same"].iloc[:2]).sum())
    assert own["FMR, African"] == f"{100 * imp_yes / (n - genuine):.2f}"
    assert own["FNMR, African"] == f"{100 * unreadable_genuine / genuine:.2f}"
    assert own["FMR, Asian"] == own["FNMR, Asian"] == "0.00"
    # One threshold learned on both groups: it must split Asian 0 from 1, and put African 0.5 on the side
    # the African majority (impostors) wants, so every African pair is "different".
    learned = t.loc[(run.model, "demo", "one learned threshold (k-fold, all groups)")]
    assert (learned["FMR, African"], learned["FNMR, African"]) == ("0.00", "100.00")
    assert (learned["FMR, Asian"], learned["FNMR, Asian"]) == ("0.00", "0.00")


def test_hardest_pairs_marks_errors_by_the_models_own_rule(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    scores = np.where(same, 2.0, -2.0) + np.linspace(0, 0.1, 54)
    scores[0], scores[3] = -5.0, 5.0  # pair 0 genuine, pair 3 impostor: the hardest of each
    decisions = (scores > 0).astype(int)
    decisions[4] = -1  # pair 4, impostor, second highest score: an answer that cannot be read
    scores[4] = 4.0
    raw = [json.dumps({"answer": "Yes <b>" if d else "No"}) for d in decisions]
    run = make_run(tmp_path, demo, "negative-control", scores, decisions=decisions, raw=raw)
    hard = report.hardest_pairs(run, k=2, kind="MLLM")
    assert hard["pair_id"].tolist()[0] == 0 and hard["pair_id"].tolist()[2:] == [3, 4]
    assert hard.set_index("pair_id").loc[[0, 3, 4], "error"].tolist() == ["false reject", "false accept",
                                                                         "invalid answer"]
    html = report.hardest_pairs_gallery(report.results_from_runs([run]), k=2).data
    assert html.count('src="data:image/jpeg;base64,') == 8  # 4 pairs × 2 faces
    assert "Yes &lt;b&gt;" in html  # the answer text, escaped
    with pytest.raises(ValueError, match="k must be at least 1"):
        report.hardest_pairs(run, k=0)


def test_figures_have_one_curve_per_model_and_captions_name_everything(tmp_path, demo):
    runs = [make_run(tmp_path, demo, m, synthetic_scores(demo, seed=i)) for i, m in enumerate(["dlib", "arcface-r50"])]
    fig = report.roc_det_figure(runs)
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["dlib", "arcface-r50"]
    assert len(report.score_distributions_figure(runs).axes) == 2
    many = report.score_distributions_figure(runs * 2)  # four models wrap onto a second row
    assert [ax.get_visible() for ax in many.axes] == [True] * 4 + [False] * 2
    text = report.caption(runs, "ROC")
    assert "demo" in text and "54 pairs (9 genuine, 45 impostor)" in text and "dlib, arcface-r50" in text
    with pytest.raises(ValueError, match="kind must be one of"):
        report.per_dataset_figures(report.results_from_runs(runs), "pie")


def write_published(path, **changes):
    entry = {"id": "x", "model": "dlib", "settings": {"num_jitters": 0}, "system": "dlib", "dataset": "demo",
             "metric": "hard_accuracy", "value": 99.13, "verified": True,
             "source": {"title": "an example", "url": "https://example.org", "where": "Table 1, p. 3"}}
    entry.update(changes)
    path.write_text(yaml.safe_dump({"version": 1, "results": [entry]}))
    return path


def test_published_table_matches_model_dataset_and_settings(tmp_path, demo):
    decisions = (synthetic_scores(demo, seed=10) > 0.75).astype(int)
    run = make_run(tmp_path, demo, "dlib", synthetic_scores(demo, seed=10), decisions=decisions,
                   manifest={"settings": {"num_jitters": 0}})
    results = report.results_from_runs([run])
    row = report.published_table(results, write_published(tmp_path / "p.yaml")).iloc[0]
    assert row["Published (%)"] == "99.13" and row["Source"] == "[1]"
    assert "1. *an example*, Table 1, p. 3. <https://example.org>" in report.published_sources(
        tmp_path / "p.yaml").data
    assert row["This checkout (%)"] == f"{100 * np.mean(decisions == demo.pairs['same']):.2f}"
    other = write_published(tmp_path / "q.yaml", settings={"num_jitters": 100})
    assert report.published_table(results, other).iloc[0]["This checkout (%)"] == "not run"
    human = write_published(tmp_path / "h.yaml", model=None, verified=False)
    row = report.published_table(results, human).iloc[0]
    assert row["This checkout (%)"].startswith("not run") and row["Checked"] == "unverified"


@pytest.mark.parametrize("changes, match", [
    ({"metric": "auc"}, "metric 'auc' is not one of"),
    ({"value": 0.9938}, r"percentage in \(1, 100\]"),
    ({"value": 120}, "percentage in"),
    ({"source": {"title": "no url"}}, "title and a url"),
])
def test_published_file_errors_name_the_file_and_entry(tmp_path, changes, match):
    path = write_published(tmp_path / "bad.yaml", **changes)
    with pytest.raises(ValueError, match=rf"bad\.yaml: entry 0 \(x\): .*{match}"):
        report.load_published(path)


def test_the_books_published_numbers_file_is_valid_and_cited():
    from conftest import ROOT

    entries = report.load_published(ROOT / "book" / "published_results.yaml")
    assert len({e["id"] for e in entries}) == len(entries)
    known = set(yaml.safe_load((ROOT / "facebench" / "models.yaml").read_text())["models"])
    assert all(e["model"] is None or e["model"] in known for e in entries)
    assert all(e["source"].get("where") for e in entries)  # where in the source each number stands
    # the reproduced paper's numbers are second-hand (../shared/notes/paper-evidence.md): unverified, each
    # with its caveat, none set beside a run here, and no human study called a k-fold accuracy
    paper = [e for e in entries if "2510.14866" in e["source"]["url"]]
    assert {e["value"] for e in paper} == {93.28, 66.03, 99.83, 98.28, 81, 97}
    assert all(not e["verified"] and e["note"] and e["model"] is None for e in paper)
    assert all(e["metric"] == "human_accuracy" for e in entries if e["system"].startswith("humans"))


def test_published_table_shows_notes_and_unnamed_datasets(tmp_path):
    path = write_published(tmp_path / "p.yaml", model=None, dataset=None, metric="accuracy", verified=False,
                           note="quoted as\n 81%, dataset not named")
    row = report.published_table(pd.DataFrame(columns=["status"]), path).iloc[0]
    assert row.name[1] == "not named" and row["Metric"] == "accuracy (protocol not known)"
    assert row["Note"] == "quoted as 81%, dataset not named"


def test_variant_cells_keep_their_labels_in_the_tables(demo_project):
    from facebench.report import collect, tar_at_far_table

    project, _ = demo_project
    results = collect(project / "grids" / "demo.yaml")
    done = results[results["status"] == "complete"].set_index("cell")
    assert done.loc["negative-control-fr__demo", "model"] == "negative-control-fr"
    assert done.loc["negative-control-fr__demo", "base_model"] == "negative-control"
    models = tar_at_far_table(results).index.get_level_values("Model")
    assert "negative-control-zh" in models and models.is_unique


def test_a_run_page_on_an_unscored_run_says_0_of_n(tmp_path, demo):
    import facebench

    run = facebench.open_run("dlib", demo, out=tmp_path)
    m = report.run_metrics(run)
    assert m == {"n_scored": 0, "n_total": 54}
    assert report.metrics_table(m).loc["Pairs scored", "Value"] == "0 of 54"
    assert report.roc_figure([run]) is None and report.score_distribution_figure(run) is None
    assert report.notes(m).data == "- **nothing scored yet**: no metric, no figure"
    assert not (tmp_path / "dlib").exists()  # opening a run writes nothing


def test_the_headline_names_roles_from_any_grid(tmp_path, demo):
    from conftest import ROOT, write_grid

    fr = make_run(tmp_path, demo, "fr-model", synthetic_scores(demo, seed=1, gap=3))
    mllm = make_run(tmp_path, demo, "mllm-model", synthetic_scores(demo, seed=2, gap=1),
                    decisions=np.ones(len(demo.pairs)))
    results = report.results_from_runs([fr, mllm]).assign(kind=["FR", "MLLM"], role=[None, None])
    grid = write_grid(tmp_path / "g.yaml", base=str(ROOT), name="mine")
    text = report.headline(results, grid).data
    assert "study <strong>mine</strong>" in text and "<strong>fr-model</strong>" in text
    assert f"{fr.metrics()['accuracy_mean']:.1%}" in text and "<strong>mllm-model</strong>" in text
    assert "negative control" not in text  # no control in this grid: none is invented
    # the MLLM is cited by its own answers first: "yes" to every pair is right on the 9 genuine of 54
    assert f"answers {9 / 54:.1%} of the pairs right on its own" in text
    fr_only = report.headline(results.iloc[:1], grid).data
    assert "No MLLM (other than a control) of this grid is complete on demo" in fr_only


@pytest.mark.parametrize("leak", [False, True])
def test_the_headline_judges_the_control_two_sided_against_label_shuffles(tmp_path, demo, leak):
    from conftest import ROOT, write_grid

    same = demo.pairs["same"].to_numpy()
    rng = np.random.default_rng(3)
    # a control that knows nothing, or one whose scores carry the labels backwards (AUC far below 0.5)
    scores = rng.normal(size=54) - (3.0 * same if leak else 0.0)
    control = make_run(tmp_path, demo, "negative-control", scores)
    results = report.results_from_runs([control])
    text = report.headline(results, write_grid(tmp_path / "g.yaml", base=str(ROOT))).data
    r = auc_permutation_test(scores, same)
    assert f"puts its AUC at {r['auc']:.3f} over 54 scored pairs" in text
    if leak:
        assert r["auc"] < 0.2 and "outside the band" in text and "leak of labels or identities" in text
    else:
        assert r["near_chance"] and "inside the band" in text and "so it is at chance" in text


# Six answers cycled over the demo pairs, read by hand under each rule:
# (text, facebench@v2, vlmevalkit-yorn@v1, a refusal under facebench, a refusal under yorn).
ANSWERS = [("**Yes**", 1, -1, False, False), ("Likely yes.", -1, 1, False, False), ("No.", 0, 0, False, False),
           ("Sorry, I can't help with identifying people.", -1, -1, True, True), ("Yes/No", -1, -1, False, False),
           ("No, I can't help with identifying people.", -1, 0, True, False)]


def answered_run(root, dataset, model, answers, template, folder):
    """A stored MLLM run whose answers cycle through ``answers``, with facebench@v2's decisions."""
    n = len(dataset.pairs)
    raw = [json.dumps({"answer": answers[i % len(answers)][0]}) for i in range(n)]
    decisions = [answers[i % len(answers)][1] for i in range(n)]
    manifest = {"prompt_template": f"{template}@v1", "extraction": "facebench@v2", "settings": {"prompt": template}}
    return make_run(root, dataset, model, np.linspace(-1, 1, n), decisions=decisions, raw=raw, folder=folder,
                    manifest=manifest)


def test_extraction_table_puts_each_rules_readings_side_by_side(tmp_path, demo):
    english = answered_run(tmp_path, demo, "negative-control", ANSWERS, "paper-yesno", "en")
    oui_non = [("Oui.", 1), ("Non", 0), ("Oui/Non", -1), ("Désolé, je ne peux pas identifier des personnes.", -1)]
    french = answered_run(tmp_path, demo, "hf:some/model", oui_non, "fr-ouinon", "fr")
    fr_model = make_run(tmp_path, demo, "dlib", synthetic_scores(demo, seed=8))
    table = report.extraction_table(report.results_from_runs([english, french, fr_model]))
    en, fr = ("demo", "negative-control", "paper-yesno@v1"), ("demo", "hf:some/model", "fr-ouinon@v1")
    assert list(table.index) == [en, fr]
    same = demo.pairs["same"].to_numpy()
    n = len(same)
    for col, rule in ((1, "facebench@v2"), (2, "vlmevalkit-yorn@v1")):
        d = np.array([ANSWERS[i % 6][col] for i in range(n)])
        refused = np.array([ANSWERS[i % 6][col + 2] for i in range(n)])
        row = table.loc[en]
        assert row[("Own-answer accuracy", rule)] == f"{100 * np.mean(d[d >= 0] == same[d >= 0]):.2f}"
        assert row[("Invalid counted wrong", rule)] == f"{100 * np.mean(d == same):.2f}"
        assert row[("Acquire rate", rule)] == f"{100 * np.mean(d >= 0):.2f}"
        assert row[("Refusal rate", rule)] == f"{100 * refused.mean():.2f}"
    assert table.loc[en, ("Changed vs stored", "facebench@v2")] == 0
    assert table.loc[en, ("Changed vs stored", "vlmevalkit-yorn@v1")] == 27
    french_row = table.loc[fr]
    assert french_row[("Acquire rate", "vlmevalkit-yorn@v1")] == "n/a"  # English words only
    assert french_row[("Refusal rate", "facebench@v2")] == f"{100 * 13 / 54:.2f}"  # pairs 3, 7, …, 51
    assert report.results_from_runs([english])["refusal_rate"].iloc[0] == pytest.approx(18 / 54)
    empty = pd.DataFrame(columns=["cell", "model", "dataset", "status"])
    assert report.extraction_table(empty).iloc[0, 0].startswith("not run: ")


def test_extraction_disagreements_show_the_pairs_and_their_answers(tmp_path, demo):
    run = answered_run(tmp_path, demo, "negative-control", ANSWERS, "paper-yesno", "en")
    table = report.extraction_disagreements(report.results_from_runs([run]), k=2)
    rows = table.loc[("demo", "negative-control", "facebench@v2 vs vlmevalkit-yorn@v1")]
    assert dict(rows["Pairs"]) == {"yes vs invalid": 9, "invalid vs yes": 9, "refusal vs no": 9}
    assert rows.loc["yes vs invalid", "Example answers"] == '"**Yes**"'
    assert rows.loc["refusal vs no", "Example answers"] == '"No, I can\'t help with identifying people."'
    agreeing = answered_run(tmp_path, demo, "negative-control", [("No.", 0)], "paper-yesno", "agree")
    assert "alike" in report.extraction_disagreements(report.results_from_runs([agreeing])).iloc[0, 0]


def test_a_run_page_with_no_valid_score_shows_0_percent_and_why_there_are_no_curves(tmp_path, demo):
    n = len(demo.pairs)
    run = make_run(tmp_path, demo, "mute", [float("nan")] * n, decisions=[-1] * n,
                   manifest={"status": "running"})  # as a process killed while scoring left it
    m = report.run_metrics(run)
    assert m["acquire_rate"] == 0 and m["n_scored"] == n and m["n_with_score"] == 0
    assert report.metrics_table(m).loc["Acquire rate", "Value"] == "0.00%"
    assert report.roc_figure([run]) is None and report.score_distribution_figure(run) is None
    assert report.notes(m).data.startswith(f"- **no ROC curve and no score distribution**: none of the {n} stored "
                                           "pairs has a score (acquire rate 0.00%)")
    # the status comes from the stored rows, not from what the manifest last said
    assert report.provenance_table(run).loc["status", "Value"] == "complete"


def sized_run(root, dataset, scores, decisions, size, *, prompt="paper-yesno", folder):
    """An MLLM run of the negative control at image size ``size``, read from a ``.bin``."""
    manifest = {"settings": {"prompt": prompt, "image_size": size},
                "dataset_info": {"layout": "insightface demo.bin", "image_files": False},
                "image_handling": "the dataset's images as they are" if size is None else f"resized to {size}x{size}"}
    return make_run(root, dataset, "negative-control", scores, decisions=decisions, manifest=manifest, folder=folder)


def test_resolution_table_compares_the_sizes_of_one_model_on_the_same_pairs(tmp_path, demo):
    from facebench.metrics import roc_auc_score

    same = demo.pairs["same"].to_numpy()
    scores = {n: synthetic_scores(demo, seed=i, gap=0.5 + i) for i, n in enumerate((None, 448, 112, 224))}
    scores[112][40:44] = np.nan  # four pairs the 112-px run could not score
    answers = same.astype(int)
    answers[:9] = 1 - answers[:9]  # nine wrong answers at every size
    runs = [sized_run(tmp_path, demo, s, answers, n, folder=f"nc{n}") for n, s in scores.items()]
    other = scores[224].copy()
    other[:10] = np.nan  # another template: if it were compared with the sizes, they would lose these pairs
    runs.append(sized_run(tmp_path, demo, other, answers, 224, prompt="fr-ouinon", folder="fr224"))
    results = report.results_from_runs(runs + [make_run(tmp_path, demo, "dlib", synthetic_scores(demo, seed=9))])
    table = report.resolution_table(results).droplevel(["Dataset", "Model", "Cell"])
    assert table.index.tolist() == ["as given", "112×112", "224×224", "448×448", "224×224"]
    sizes = table.iloc[:4]
    assert (sizes["Pairs every size scored"] == 50).all() and table.iloc[4]["Pairs every size scored"] == 44
    assert (sizes["Own answers, all pairs"] == f"{100 * 45 / 54:.2f}").all()
    assert (table["Layout"] == "insightface demo.bin").all()
    kept = ~demo.pairs["pair_id"].isin(range(40, 44)).to_numpy()
    acc, _ = kfold_accuracy(scores[224][kept], same[kept], demo.pairs["fold"][kept])
    assert sizes.loc["224×224", "k-fold accuracy on those"] == f"{100 * acc.mean():.2f} ± {100 * acc.std():.2f}"
    assert sizes.loc["448×448", "AUC on those"] == f"{roc_auc_score(scores[448][kept], same[kept]):.3f}"
    # no run at a size of its own: nothing to compare, and no number shown
    assert report.resolution_table(report.results_from_runs(runs[:1])).iloc[0, 0].startswith("not run: ")
    assert report.resolution_table(pd.DataFrame(columns=["model", "status"])).iloc[0, 0].startswith("not run: ")


def test_the_models_and_layout_tables_show_what_was_done_to_the_images(tmp_path, demo):
    scores = synthetic_scores(demo, seed=0)
    runs = [sized_run(tmp_path, demo, scores, None, n, folder=f"nc{n}") for n in (None, 224)]
    files = make_run(tmp_path, demo, "dlib", scores, manifest={"dataset_info": {"layout": "LFW pairs.txt + lfw/",
                                                                                "image_files": True}})
    results = report.results_from_runs(runs + [files])
    results.loc[1, "model"] = "negative-control-224"  # a variant's label, as a grid gives it
    models = report.models_table(results)
    assert models.loc["negative-control-224", "Images"] == "resized to 224x224"
    assert json.loads(models.loc["negative-control-224", "Settings"])["image_size"] == 224
    layouts = report.layout_table(results)
    assert layouts.loc[("demo", "insightface demo.bin")].tolist() == ["aligned 112×112 crops (insightface .bin)", 2]
    assert layouts.loc[("demo", "LFW pairs.txt + lfw/"), "Images"] == "image files"
    assert report.layout_table(pd.DataFrame(columns=["model", "status"])).iloc[0, 0].startswith("not run: ")


def test_collect_reads_a_run_again_only_when_its_folder_changed(demo_project, monkeypatch):
    """The summaries of a grid run one after another; each collect() reuses the rows of runs left as they were."""
    from facebench.report import collecting

    grid = demo_project[0] / "grids" / "demo.yaml"
    first = collecting.collect(grid)
    computed = []
    real = collecting._complete_row
    monkeypatch.setattr(collecting, "_complete_row", lambda run: computed.append(run) or real(run))
    again = collecting.collect(grid)
    assert not computed and again["accuracy_mean"].equals(first["accuracy_mean"])
    store = first.dropna(subset=["accuracy_mean"]).iloc[0]["run"].store
    store.write_manifest(store.read_manifest())  # the same manifest written again: the folder changed
    collecting.collect(grid)
    assert [run.store.dir for run in computed] == [store.dir]


def test_a_cell_recorded_complete_whose_run_is_not_stored_is_not_run(tmp_path):
    """The grid ran, then a setting or facebench changed the run's identity: its numbers are not shown."""
    from conftest import copy_book_sources, write_grid

    from facebench.grid import STATUS_FILE, load_grid

    project = copy_book_sources(tmp_path)
    grid = write_grid(project / "grids" / "g.yaml", parameters={"limit": 6}, summaries=[])
    runs_dir = load_grid(grid)["runs_dir"]
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / STATUS_FILE).write_text(json.dumps({"cells": [{"name": "dlib__demo", "status": "complete"}]}))
    results = report.collect(grid)
    row = results.iloc[0]
    assert row["status"] == "not run" and "the model's settings or facebench changed" in row["error"]
    assert report.models_table(results).iloc[0, 0] == "no model has been run"  # no manifest to read
