import json
from dataclasses import replace

import matplotlib
import numpy as np
import pandas as pd
import pytest
import yaml

from facebench import report
from facebench.datasets import load_demo
from facebench.metrics import kfold_decisions, mcnemar_test
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


def test_every_section_says_not_run_without_runs():
    empty = pd.DataFrame(columns=["cell", "model", "dataset", "status"])
    for table in (report.tar_at_far_table(empty), report.bootstrap_table(empty), report.mcnemar_table(empty),
                  report.finetune_table(empty), report.order_consistency_table(empty),
                  report.prompt_sensitivity_table(empty), report.prompts_table(empty), report.group_table(empty)):
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
    assert row["McNemar p"] == f"{expected['pvalue']:.3g}"


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


def test_tar_at_far_table_flags_unresolvable_fars(tmp_path, demo):
    run = make_run(tmp_path, demo, "dlib", synthetic_scores(demo, seed=7))
    row = report.tar_at_far_table(report.results_from_runs([run])).iloc[0]
    assert row["Impostor pairs"] == 45
    assert row["TAR @ FAR=1e-2"] == row["TAR @ FAR=1e-3"] == "not resolved"  # 45 impostors: FAR floor 1/45
    assert float(row["TAR @ FAR=1e-1"]) >= 0


def test_bootstrap_table_brackets_the_estimate(tmp_path, demo):
    decisions = (synthetic_scores(demo, seed=8) > 0.75).astype(int)
    run = make_run(tmp_path, demo, "negative-control", synthetic_scores(demo, seed=8), decisions=decisions)
    row = report.bootstrap_table(report.results_from_runs([run]), n_resamples=200).iloc[0]
    low, high = (float(x) for x in row["k-fold 95% CI"].strip("[]").split(","))
    assert low <= float(row["k-fold accuracy"]) <= high
    assert float(row["Own-decision accuracy"]) == pytest.approx(100 * np.mean(decisions == demo.pairs["same"]),
                                                              abs=0.01)


def test_group_table_has_per_group_accuracy_mean_std_and_ser(tmp_path, demo):
    grouped = replace(demo, pairs=demo.pairs.assign(group=np.where(demo.pairs["pair_id"] % 2, "African", "Asian")))
    run = make_run(tmp_path, grouped, "dlib", synthetic_scores(grouped, seed=9, gap=1.0))
    row = report.group_table(report.results_from_runs([run])).iloc[0]
    acc = pd.Series(report.group_accuracies(run))
    err = 1 - acc
    assert row["African"] == round(100 * acc["African"], 2)
    assert row["Mean"] == round(100 * acc.mean(), 2) and row["STD"] == round(100 * acc.std(ddof=0), 2)
    assert row["SER"] == round(err.max() / err.min(), 2)


def test_hardest_pairs_marks_errors_by_the_models_own_rule(tmp_path, demo):
    same = demo.pairs["same"].to_numpy()
    scores = np.where(same, 2.0, -2.0) + np.linspace(0, 0.1, 54)
    scores[0], scores[3] = -5.0, 5.0  # pair 0 genuine, pair 3 impostor: the hardest of each
    decisions = (scores > 0).astype(int)
    raw = [json.dumps({"answer": "Yes <b>" if d else "No"}) for d in decisions]
    run = make_run(tmp_path, demo, "negative-control", scores, decisions=decisions, raw=raw)
    hard = report.hardest_pairs(run, k=2, kind="MLLM")
    assert hard["pair_id"].tolist()[0] == 0 and hard["pair_id"].tolist()[2] == 3
    assert hard.set_index("pair_id").loc[[0, 3], "error"].tolist() == ["false reject", "false accept"]
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
    fr_only = report.headline(results.iloc[:1], grid).data
    assert "No MLLM (other than a control) of this grid is complete on demo" in fr_only
