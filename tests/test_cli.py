"""The ``facebench`` command: in-process through ``main``, and the installed entry point as a subprocess."""
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from facebench.cli import main
from facebench.datasets import LOADERS, load_demo
from facebench.metrics import verification_report
from facebench.paths import MANIFESTS_DIR

from conftest import copy_demo

FACEBENCH = Path(sys.executable).parent / "facebench"
METRIC_KEYS = {"dataset", "model", "n_pairs", "accuracy_mean", "accuracy_std", "eer", "auc",
               "tar_at_far_1e-2", "tar_at_far_1e-3", "acquire_rate"}


def run_main(capsys, *argv):
    """Exit status, stdout and stderr of ``facebench ARGV`` run in this process."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


def nan_to_none(v):
    """What the CLI's JSON line makes of a value: non-finite floats become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [nan_to_none(x) for x in v]
    return v


def demo_doc():
    return yaml.safe_load((MANIFESTS_DIR / "demo.yaml").read_text())


def use_demo(monkeypatch, **kwargs):
    """Make the registry's ``demo`` loader read ``load_demo(**kwargs)`` (a copy of the crops, another doc)."""
    monkeypatch.setitem(LOADERS._entries, "demo", functools.partial(load_demo, **kwargs))


# ------------------------------------------------------------------ data check


def test_data_check_demo_ok(capsys):
    rc, out, err = run_main(capsys, "data", "check", "demo")
    assert rc == 0
    assert "demo: ok" in out
    assert "error:" not in out and "warning:" not in out
    lines = out.splitlines()
    assert lines[-1].startswith("demo: ok (0 errors, 0 warnings)")
    assert any(line.split()[:2] == ["pairs", "54"] for line in lines)


def test_data_check_demo_json(capsys):
    rc, out, _ = run_main(capsys, "data", "check", "demo", "--json")
    assert rc == 0
    report = last_json(out)
    assert report["dataset"] == "demo"
    assert report["errors"] == [] and report["warnings"] == []
    facts = report["facts"]
    assert facts["pairs"] == 54 and facts["folds"] == 3 and facts["genuine"] == 9 and facts["impostor"] == 45
    assert facts["images"] == 19 and len(facts["checksum"]) == 64
    assert facts["per_fold"] == {str(f): "3 genuine / 15 impostor" for f in range(3)}
    assert "demo: ok" in out


def test_data_check_broken_copy_fails(tmp_path, monkeypatch, capsys):
    folder = copy_demo(tmp_path / "demo")
    broken = folder / "obama_3.png"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    use_demo(monkeypatch, folder=folder)
    used_by = [i for i, (_, a, b, _) in enumerate(demo_doc()["pairs"]) if "obama_3" in (a, b)]
    assert used_by  # the image is in use

    rc, out, _ = run_main(capsys, "data", "check", "demo", "--json")
    assert rc == 1
    assert "demo: FAILED" in out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors and all(str(broken) in e for e in errors)
    assert any(f"used by pairs {used_by}" in e and "cannot read image" in e for e in errors)
    report = last_json(out)
    assert len(report["errors"]) == 2
    assert all(str(broken) in e and str(used_by) in e for e in report["errors"])


def test_data_check_strict_turns_warnings_into_failure(monkeypatch, capsys):
    doc = demo_doc()
    doc["expected_pairs"] = 60
    use_demo(monkeypatch, doc=doc)

    rc, out, _ = run_main(capsys, "data", "check", "demo")
    assert rc == 0
    assert "warning: 54 pairs, the protocol has 60" in out
    assert "demo: ok (0 errors, 1 warnings)" in out

    rc, out, _ = run_main(capsys, "data", "check", "demo", "--strict", "--json")
    assert rc == 1
    assert "warning: 54 pairs, the protocol has 60" in out
    assert "demo: FAILED" in out
    report = last_json(out)
    assert report["errors"] == [] and report["warnings"] == ["54 pairs, the protocol has 60"]


def test_data_check_strict_passes_a_clean_dataset(capsys):
    rc, out, _ = run_main(capsys, "data", "check", "demo", "--strict")
    assert rc == 0 and "demo: ok" in out


def test_data_check_unknown_dataset(capsys):
    rc, out, err = run_main(capsys, "data", "check", "dmeo")
    assert rc == 2
    assert "Did you mean 'demo'?" in err


# ------------------------------------------------------------------ metrics


@pytest.fixture
def scores_table():
    rng = np.random.default_rng(1234)
    n = 200
    label = rng.integers(0, 2, n).astype(bool)
    table = pd.DataFrame({
        "score": np.round(rng.normal(label * 1.5, 1.0), 3),
        "label": label,
        "fold": np.arange(n) % 10,
    })
    table.loc[[5, 77, 150], "score"] = np.nan  # no output for three pairs
    return table


def _expected(path, part):
    report = verification_report(part["score"].to_numpy(float), part["label"].to_numpy(), part["fold"].to_numpy())
    return nan_to_none({"dataset": path.name, "model": "", **report})


def test_metrics_json_matches_verification_report(tmp_path, scores_table, capsys):
    path = tmp_path / "scores.csv"
    scores_table.to_csv(path, index=False)
    rc, out, err = run_main(capsys, "metrics", str(path), "--json")
    assert rc == 0, err
    doc = last_json(out)
    assert METRIC_KEYS <= set(doc)
    assert "groups" not in doc
    assert doc == _expected(path, pd.read_csv(path))
    assert doc["dataset"] == "scores.csv" and doc["n_pairs"] == 200
    assert doc["acquire_rate"] == pytest.approx(197 / 200)
    assert len(doc["fold_accuracies"]) == 10
    assert 0.5 < doc["auc"] <= 1
    assert out.splitlines()[0] == "all pairs:"


def test_metrics_json_per_group(tmp_path, scores_table, capsys):
    rng = np.random.default_rng(99)
    table = scores_table.assign(group=rng.choice(["east", "west"], len(scores_table)))
    # A group of genuine pairs only: its AUC, EER and TAR@FAR are NaN, null in JSON.
    genuine = table.index[table["label"]][:12]
    table.loc[genuine, "group"] = "solo"
    path = tmp_path / "grouped.csv"
    table.to_csv(path, index=False)

    rc, out, err = run_main(capsys, "metrics", str(path), "--json")
    assert rc == 0, err
    doc = last_json(out)
    read = pd.read_csv(path)
    groups = doc.pop("groups")
    assert doc == _expected(path, read)
    assert [g["group"] for g in groups] == ["east", "solo", "west"]
    for g in groups:
        part = read[read["group"] == g["group"]]
        assert g == {"group": g["group"], **_expected(path, part)}
        assert g["n_pairs"] == len(part)
    assert sum(g["n_pairs"] for g in groups) == 200
    solo = groups[1]
    assert solo["n_impostor"] == 0
    assert solo["auc"] is None and solo["eer"] is None and solo["tar_at_far_1e-2"] is None
    assert "group solo:" in out


def test_metrics_missing_column_exits_2(tmp_path, scores_table, capsys):
    path = tmp_path / "nofold.csv"
    scores_table.drop(columns="fold").to_csv(path, index=False)
    rc, out, err = run_main(capsys, "metrics", str(path), "--json")
    assert rc == 2
    assert out == ""
    assert err.startswith("facebench: error:")
    assert str(path) in err and "'fold'" in err


def test_metrics_missing_file_exits_2(tmp_path, capsys):
    rc, _, err = run_main(capsys, "metrics", str(tmp_path / "absent.csv"))
    assert rc == 2 and "absent.csv" in err


# ------------------------------------------------------------------ evaluate


def test_evaluate_entry_point_json(tmp_path):
    env = {**os.environ, "FACEBENCH_PROGRESS": "1"}  # progress bars on stderr must not reach stdout
    proc = subprocess.run(
        [str(FACEBENCH), "evaluate", "--model", "dlib", "--dataset", "demo", "--limit", "6",
         "--out", str(tmp_path / "results"), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) > 1  # the human-readable summary comes first
    doc = json.loads(lines[-1])
    assert METRIC_KEYS | {"hard_accuracy"} <= set(doc)
    assert doc["dataset"] == "demo" and doc["model"] == "dlib"
    assert doc["n_pairs"] == 6 and doc["n_genuine"] == 3 and doc["n_impostor"] == 3
    assert doc["acquire_rate"] == 1.0 and doc["complete"] is True
    for key in ("accuracy_mean", "auc", "hard_accuracy"):
        assert 0 <= doc[key] <= 1, key
    assert Path(doc["run_dir"]).is_relative_to(tmp_path / "results")
    # Only the last line is JSON; the progress bar went to stderr.
    for line in lines[:-1]:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert "pair" in proc.stderr


def test_evaluate_misspelt_model_entry_point(tmp_path):
    proc = subprocess.run(
        [str(FACEBENCH), "evaluate", "--model", "dlb", "--dataset", "demo", "--out", str(tmp_path / "r")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "Did you mean 'dlib'?" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "r").exists()


def test_evaluate_misspelt_model(tmp_path, capsys):
    rc, out, err = run_main(capsys, "evaluate", "--model", "dlb", "--dataset", "demo", "--out", str(tmp_path))
    assert rc == 2
    assert "unknown model 'dlb'" in err and "Did you mean 'dlib'?" in err


def test_evaluate_misspelt_dataset(tmp_path, capsys):
    rc, out, err = run_main(capsys, "evaluate", "--model", "dlib", "--dataset", "dmeo", "--out", str(tmp_path))
    assert rc == 2
    assert "unknown dataset 'dmeo'" in err and "Did you mean 'demo'?" in err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_bad_batch_size(tmp_path, capsys):
    rc, _, err = run_main(capsys, "evaluate", "--model", "dlib", "--dataset", "demo", "--batch-size", "0",
                          "--out", str(tmp_path))
    assert rc == 2 and "batch_size" in err


# ------------------------------------------------------------------ listings


def test_models_lists_dlib_available(capsys):
    rc, out, _ = run_main(capsys, "models")
    assert rc == 0
    dlib = [line for line in out.splitlines() if line.split()[:1] == ["dlib"]]
    assert len(dlib) == 1
    assert dlib[0].rstrip().endswith("available") and "not available" not in dlib[0]
    assert "face recognition" in dlib[0]


def test_datasets_lists_demo_available(capsys):
    rc, out, _ = run_main(capsys, "datasets")
    assert rc == 0
    demo = [line for line in out.splitlines() if line.split()[:1] == ["demo"]]
    assert len(demo) == 1
    assert "available: 54 pairs, 3 folds" in demo[0] and "not available" not in demo[0]


def test_datasets_lists_what_the_loader_gives(tmp_path, monkeypatch, capsys):
    folder = copy_demo(tmp_path / "demo")
    doc = demo_doc()
    doc["pairs"] = doc["pairs"][:5]  # the listing reports the loaded table, not the manifest's expectations
    use_demo(monkeypatch, folder=folder, doc=doc)
    rc, out, _ = run_main(capsys, "datasets")
    assert rc == 0
    assert "available: 5 pairs, 1 folds" in out and str(folder) in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_reparse_reads_stored_answers_under_either_rule(tmp_path, capsys):
    # A served model's answers imported as a run (no model here), cycling through six answers
    # with their readings worked out by hand: (text, facebench@v2, vlmevalkit-yorn@v1, refusal).
    answers = [("**Yes**", 1, -1, False), ("Likely yes.", -1, 1, False), ("No.", 0, 0, False),
               ("Sorry, I can't help with identifying people.", -1, -1, True), ("Yes/No", -1, -1, False),
               ("No, I can't help with identifying people.", -1, 0, True)]
    same = load_demo().pairs["same"].to_numpy()
    lines = [json.dumps({"pair_id": i, "score": 0.1 * i, "decision": answers[i % 6][1],
                         "raw_output": {"answer": answers[i % 6][0]}}) for i in range(len(same))]
    (tmp_path / "answers.jsonl").write_text("\n".join(lines) + "\n")
    model = "api:m@http://127.0.0.1:9/v1"
    common = ["--model", model, "--dataset", "demo", "--out", str(tmp_path / "results"), "--json"]
    assert run_main(capsys, "import", str(tmp_path / "answers.jsonl"), *common)[0] == 0
    for rule, col in ((None, 1), ("vlmevalkit-yorn", 2)):
        rc, out, _ = run_main(capsys, "reparse", *common, *(["--rule", rule] if rule else []))
        doc = last_json(out)
        decisions = np.array([answers[i % 6][col] for i in range(len(same))])
        valid = decisions >= 0
        assert rc == 0 and doc["own_rule"] == "facebench@v2"
        assert doc["rule"] == {None: "facebench@v2", "vlmevalkit-yorn": "vlmevalkit-yorn@v1"}[rule]
        assert doc["n_changed"] == int(np.sum(decisions != [answers[i % 6][1] for i in range(len(same))]))
        assert doc["acquire_rate"] == pytest.approx(valid.mean())
        assert doc["hard_accuracy"] == pytest.approx(np.mean(decisions[valid] == same[valid]))
        refused = [answers[i % 6][3] and answers[i % 6][col] == -1 for i in range(len(same))]
        assert doc["n_refusals"] == sum(refused) and "nothing scored or stored" in out
    assert doc["n_changed"] == 27 and doc["n_refusals"] == 9  # three answers of six read otherwise; one refusal
    rc, _, err = run_main(capsys, "reparse", *common, "--rule", "vlmevalkit-yorn", "--set", "prompt=fr-ouinon")
    assert rc == 2 and "no stored pairs" in err


# ------------------------------------------------------------------ broken files and bad options: one line, no traceback


def unmerged_run(out):
    """A run of dlib on the demo set whose one shard is stored and not merged yet (``facebench merge`` folds it)."""
    from facebench.datasets import load_dataset
    from facebench.scoring import run_store

    store, ds = run_store("dlib", "demo", out=out), load_dataset("demo")
    rows = [{"pair_id": int(p), "score": float(s), "seconds": 0.0} for p, s in zip(ds.pairs["pair_id"], ds.pairs["same"])]
    store.shard(0, 1).write(rows, ds.checksum)
    return store


def one_line_error(rc, err, *names):
    assert rc == 2 and err.startswith("facebench: error: ") and err.count("\n") == 1, err
    assert all(str(name) in err for name in names), err


@pytest.mark.parametrize("file, content", [("pairs.sqlite", b"garbage" * 200), ("manifest.json", b"[1, 2]"),
                                           ("manifest.json", b"{not json")])
def test_a_broken_results_file_is_one_line_naming_it(tmp_path, capsys, file, content):
    store = unmerged_run(tmp_path)
    (store.dir / file).write_bytes(content)
    one_line_error(*run_main(capsys, "merge", "--model", "dlib", "--dataset", "demo", "--out", str(tmp_path))[::2],
                   store.dir / file)


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    def full(path, doc):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    store = unmerged_run(tmp_path)
    monkeypatch.setattr("facebench.store.write_json_atomic", full)
    one_line_error(*run_main(capsys, "merge", "--model", "dlib", "--dataset", "demo", "--out", str(tmp_path))[::2],
                   store.manifest_path, "No space left on device")


@pytest.mark.parametrize("setting, message", [("prompt=[unclosed", "the value is not valid YAML"),
                                              ("threshold=.nan", "a setting must be a finite number"),
                                              ("threshold=-.inf", "a setting must be a finite number")])
def test_a_bad_setting_names_the_option(tmp_path, capsys, setting, message):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--model", "dlib", "--dataset", "demo", "--out", str(tmp_path), "--set", setting])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument --set: {setting!r}: {message}" in err.splitlines()[-1]


@pytest.mark.parametrize("text, message", [("models: [dlib\n", "not valid YAML"), ("", "a grid file is a mapping"),
                                           ("~\n", "a grid file is a mapping"),
                                           ("notebook: n.md\nmodels: []\ndatasets: [demo]\n", "models must be a list"),
                                           ("notebook: n.md\nmodels: [dlib]\ndatasets:\n", "datasets must be a list")])
def test_a_broken_grid_file_is_one_line_naming_it(tmp_path, capsys, text, message):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    rc, _, err = run_main(capsys, "grid", str(grid))
    one_line_error(rc, err, grid, message)


def test_a_lock_file_of_the_wrong_shape_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "facebench.lock.json").write_text("[1, 2]")
    for argv in (["data", "check", "demo"], ["evaluate", "--model", "dlib", "--dataset", "demo", "--out",
                                              str(tmp_path / "out")]):
        one_line_error(*run_main(capsys, *argv, "--root", str(tmp_path))[::2], tmp_path / "facebench.lock.json",
                       "not a facebench lock file")
