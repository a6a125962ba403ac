"""Importing per-pair results made elsewhere: round trips of a scored run through CSV and JSON Lines, models
that cannot run here, every kind of bad file refused with its line and pair and nothing written, and the CLI."""
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

import facebench
from facebench.cli import main
from facebench.importing import import_results
from facebench.scoring import RunError
from facebench.store import RunStore

N_PAIRS = 54  # the demo set
COLUMNS = ["pair_id", "score", "decision", "raw_output"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """dlib on the demo set, scored once for the module."""
    return facebench.evaluate("dlib", "demo", out=tmp_path_factory.mktemp("scored"))


def export(rows: pd.DataFrame, path):
    """``rows`` as CSV (pandas' own export) or JSON Lines (one object a line, NaN as null)."""
    if path.suffix == ".jsonl":
        records = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
                   for r in rows.to_dict("records")]
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        rows.to_csv(path, index=False)
    return path


def without_run_dir(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "run_dir"}


def same_metrics(a: dict, b: dict) -> bool:
    # NaN != NaN: compare as JSON, where both become the same token.
    return json.dumps(without_run_dir(a), sort_keys=True) == json.dumps(without_run_dir(b), sort_keys=True)


def good_lines(n=N_PAIRS) -> list[str]:
    """CSV lines (header first) with a made-up score for pairs 0 to n-1."""
    return ["pair_id,score,decision"] + [f"{i},{i / 10},{i % 2}" for i in range(n)]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_round_trip_gives_the_scored_metrics(scored, tmp_path, suffix):
    path = export(scored.store.rows()[COLUMNS], tmp_path / f"dlib{suffix}")
    run = import_results(path, model="dlib", dataset="demo", out=tmp_path / "B")
    assert same_metrics(run.metrics(), scored.metrics())
    assert same_metrics(facebench.open_run("dlib", "demo", out=tmp_path / "B").metrics(), scored.metrics())
    assert run.store.dir.parts[-3:] == scored.store.dir.parts[-3:]  # the same run, in another out
    doc = run.manifest
    assert doc["status"] == "complete" and doc["dataset_checksum"] == scored.manifest["dataset_checksum"]
    assert doc["imported"] == {**doc["imported"], "file": str(path), "format": suffix[1:], "rows": N_PAIRS,
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    rows = run.store.rows()
    assert rows["seconds"].isna().all() and rows["error"].isna().all()
    assert rows["raw_output"].tolist() == scored.store.rows()["raw_output"].tolist()


def test_import_by_image_keys_in_either_order(scored, tmp_path):
    table = scored.table[["image_a", "image_b", "score", "decision"]].copy()
    odd = table.index % 2 == 1
    table.loc[odd, ["image_a", "image_b"]] = table.loc[odd, ["image_b", "image_a"]].to_numpy()
    run = import_results(export(table, tmp_path / "by_images.csv"), model="dlib", dataset="demo", out=tmp_path / "B")
    assert same_metrics(run.metrics(), scored.metrics())


def test_a_model_that_cannot_run_here(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=N_PAIRS)
    write_lines(tmp_path / "vllm.csv", ["pair_id,score"] + [f"{i},{float(s)!r}" for i, s in enumerate(scores)])
    import_results(tmp_path / "vllm.csv", model="hf:org/not-downloaded-model", dataset="demo", out=tmp_path)
    m = facebench.open_run("hf:org/not-downloaded-model", "demo", out=tmp_path).metrics()
    assert m["n_pairs"] == N_PAIRS and m["complete"] and 0 <= m["auc"] <= 1 and "hard_accuracy" not in m
    # A registry MLLM, as JSON Lines with worded decisions, a pair without output and raw outputs as objects.
    answers = rng.choice(["Yes", "no", "SAME", "different", "invalid"], size=N_PAIRS)
    lines = [json.dumps({"pair_id": i, "score": None if i == 7 else float(s), "decision": str(a),
                         "raw_output": {"text": str(a), "score_from": "decision"}})
             for i, (s, a) in enumerate(zip(scores, answers))]
    write_lines(tmp_path / "qwen.jsonl", lines)
    run = import_results(tmp_path / "qwen.jsonl", model="qwen2.5-vl-7b", dataset="demo", out=tmp_path,
                         settings={"prompt": "fr-ouinon"})
    m = facebench.open_run("qwen2.5-vl-7b", "demo", out=tmp_path, settings={"prompt": "fr-ouinon"}).metrics()
    assert m["n_pairs"] == N_PAIRS and m["complete"] and "hard_accuracy" in m
    assert any("no log-probs" in f for f in m["flags"])  # the raw output object is stored as its JSON text
    rows = run.store.rows().set_index("pair_id")
    assert math.isnan(rows.loc[7, "score"])
    assert rows["decision"].tolist() == [{"yes": 1, "same": 1, "no": 0, "different": 0, "invalid": -1}[a.lower()]
                                         for a in answers]


def bad_csv(tmp_path, name, edit):
    lines = good_lines()
    edit(lines)
    return write_lines(tmp_path / name, lines)


BAD = {
    # name: (edit of the good lines, what the message must say)
    "unknown_pair_id": (lambda ls: ls.append("999,0.5,1"), [":56:", "pair_id '999'", "no pair of demo"]),
    "duplicate_pair": (lambda ls: ls.append("5,0.5,1"), [":56:", "pair 5 given twice (first on line 7)"]),
    "missing_pairs": (lambda ls: ls.__delitem__(slice(51, None)),
                      ["4 of the 54 pairs of demo have no row", "[50, 51, 52, 53]"]),
    "non_numeric_score": (lambda ls: ls.__setitem__(4, "3,abc,1"), [":5:", "pair 3", "score 'abc' is not a number"]),
    "bad_decision": (lambda ls: ls.__setitem__(4, "3,0.3,maybe"), [":5:", "pair 3", "decision 'maybe'"]),
    "unknown_column": (lambda ls: ls.__setitem__(0, "pair_id,score,error"),
                       [":1:", "['error']", "accepted columns: pair_id, image_a, image_b, score"]),
    "unknown_images": (lambda ls: ls.__setitem__(slice(None), ["image_a,image_b,score", "x.png,y.png,1"]),
                       [":2:", "pair ('x.png', 'y.png')", "no pair of demo"]),
}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_file_is_refused_and_nothing_written(tmp_path, name):
    edit, expected = BAD[name]
    path = bad_csv(tmp_path, f"{name}.csv", edit)
    with pytest.raises(ValueError) as info:
        import_results(path, model="dlib", dataset="demo", out=tmp_path / "out")
    for text in [str(path), *expected]:
        assert text in str(info.value)
    assert not (tmp_path / "out").exists()


def test_errors_are_collected_with_lines_counted_as_an_editor_does(tmp_path):
    # Pair 0's raw output spans lines 2 and 3, so pair i is on line i + 3; pairs 9 to 28 have a bad score.
    lines = ["pair_id,score,decision,raw_output", '0,0.0,1,"two\nlines"']
    lines += [f"{i},{'oops' if 9 <= i < 29 else i / 10},1," for i in range(1, N_PAIRS)]
    path = write_lines(tmp_path / "many.csv", lines)
    with pytest.raises(ValueError) as info:
        import_results(path, model="dlib", dataset="demo", out=tmp_path / "out")
    message = str(info.value)
    assert f"{path}:12: pair 9: score 'oops'" in message
    assert message.count("is not a number") == 10 and message.endswith("20 error(s) in all")
    assert not (tmp_path / "out").exists()


def test_a_bad_jsonl_line_and_a_wrong_extension(tmp_path):
    lines = [json.dumps({"pair_id": i, "score": 0.1 * i}) for i in range(N_PAIRS)]
    lines[2] = '{"pair_id": 2, "score": '
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not a JSON object"):
        import_results(write_lines(tmp_path / "bad.jsonl", lines), model="dlib", dataset="demo", out=tmp_path / "o")
    with pytest.raises(ValueError, match=r"scores\.txt.*\(\.csv\).*\(\.jsonl\)"):
        import_results(write_lines(tmp_path / "scores.txt", good_lines()), model="dlib", dataset="demo",
                       out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_an_import_never_mixes_with_results(scored, tmp_path):
    path = write_lines(tmp_path / "s.csv", good_lines())
    with pytest.raises(RunError, match=f"{scored.store.dir}.*another --out"):
        import_results(path, model="dlib", dataset="demo", out=scored.store.dir.parents[2])
    before = import_results(path, model="dlib", dataset="demo", out=tmp_path / "out").store.rows()
    with pytest.raises(RunError, match="already holds"):
        import_results(path, model="dlib", dataset="demo", out=tmp_path / "out")
    assert RunStore(scored.store.dir).rows()["score"].tolist() == scored.store.rows()["score"].tolist()
    pd.testing.assert_frame_equal(facebench.open_run("dlib", "demo", out=tmp_path / "out").store.rows(), before)


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    def fail(self, rows, *checksum):
        self._connect().close()  # the file exists by now, as it would when SQLite fails mid-write
        raise OSError("disk full")

    monkeypatch.setattr(RunStore, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        import_results(write_lines(tmp_path / "s.csv", good_lines()), model="dlib", dataset="demo",
                       out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prints_metrics_and_json(scored, tmp_path, capsys):
    path = export(scored.store.rows()[COLUMNS], tmp_path / "dlib.csv")
    rc = main(["import", str(path), "--model", "dlib", "--dataset", "demo", "--out", str(tmp_path / "B"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert "dlib on demo" in out and "accuracy" in out and f"{N_PAIRS} rows from {path} (sha256 {sha})" in out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["n_pairs"] == N_PAIRS and last["accuracy_mean"] == scored.metrics()["accuracy_mean"]
    rc = main(["import", str(path), "--model", "dlib", "--dataset", "demo", "--out", str(tmp_path / "B")])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("facebench: error:") and "already holds" in err
