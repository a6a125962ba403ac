"""Scoring the demo set with the real dlib model: resuming after kill -9, --limit, refusing a changed
dataset, the baseline's results and manifest, and the one-call scorer."""
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facebench
from facebench import models
from facebench.datasets import load_dataset
from facebench.paths import DEMO_DIR
from facebench.scoring import RunError, evaluate, open_run
from facebench.store import RunStore

from conftest import BIN

N_PAIRS = 54  # the demo set
ENV = {**os.environ, "FACEBENCH_PROGRESS": "0"}
METRICS = ["accuracy_mean", "auc", "eer", "n_pairs"]


def command(out: Path) -> list[str]:
    return [str(BIN / "facebench"), "evaluate", "--model", "dlib", "--dataset", "demo", "--batch-size", "1",
            "--out", str(out), "--json"]


def run_cli(out: Path) -> dict:
    """``facebench evaluate ... --json`` to completion; the metrics from its last stdout line."""
    proc = subprocess.run(command(out), capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def db_file(out: Path) -> Path | None:
    found = sorted(out.glob("dlib/demo/*/pairs.sqlite"))
    assert len(found) <= 1, found
    return found[0] if found else None


def stored(db: Path | None) -> list[tuple]:
    """Rows of a store that another process may be writing right now (read-only; 0 rows until the table exists)."""
    if db is None or not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as con:
            return con.execute("SELECT pair_id, score, decision, raw_output, seconds, error FROM pairs "
                               "ORDER BY pair_id").fetchall()
    except sqlite3.OperationalError as exc:  # file created, table not yet
        if "no such table" in str(exc):
            return []
        raise


def check_store_file(db: Path) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT COUNT(*) = COUNT(DISTINCT pair_id) FROM pairs").fetchone() == (1,)
    return stored(db)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One uninterrupted CLI run of dlib on the demo set, shared by the tests below."""
    out = tmp_path_factory.mktemp("baseline")
    start = time.monotonic()
    metrics = run_cli(out)
    seconds = time.monotonic() - start
    db = db_file(out)
    rows = check_store_file(db)
    return {"out": out, "metrics": metrics, "rows": rows, "by_id": {r[0]: r for r in rows},
            "store": RunStore(db.parent), "seconds": seconds}


def test_baseline_run_is_complete(baseline):
    m, rows = baseline["metrics"], baseline["rows"]
    assert [r[0] for r in rows] == list(range(N_PAIRS))
    assert all(r[5] is None and r[1] is not None and r[4] > 0 for r in rows)
    assert m["n_pairs"] == N_PAIRS and m["complete"] is True and m["n_errors"] == 0
    assert m["run_dir"] == str(baseline["store"].dir)
    assert baseline["store"].read_manifest()["status"] == "complete"


# ------------------------------------------------------------------ kill -9 and resume


def kill_and_resume(out: Path, baseline: dict, *, rows_before_kill: int | None = None,
                    delay: float | None = None) -> None:
    """Start the CLI, SIGKILL it (after ``rows_before_kill`` stored rows or ``delay`` seconds),
    check what it left, rerun it to completion and compare everything with the baseline.

    A run that finishes before the kill lands proves nothing, so it is started again (in a
    clean folder) with half the delay, and the test fails if no kill ever lands."""
    for _ in range(5):
        proc = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            start = time.monotonic()
            if delay is not None:
                time.sleep(delay)
            else:
                while len(stored(db_file(out))) < rows_before_kill and proc.poll() is None:
                    assert time.monotonic() - start < 60, "no rows appeared"
                    time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=30)
            proc.communicate()
        killed = proc.returncode == -signal.SIGKILL
        print(f"\nkill: returncode={proc.returncode} delay={delay} rows={len(stored(db_file(out)))}")
        if killed or delay is None:
            break
        assert proc.returncode == 0, proc.returncode
        shutil.rmtree(out)
        delay /= 2
    assert killed, f"the kill never landed: the run had finished first (returncode {proc.returncode})"

    db = db_file(out)
    left = check_store_file(db) if db is not None else []
    if delay is None:
        assert rows_before_kill <= len(left) < N_PAIRS
    # (at a random moment the kill may land after the last row, before the manifest says "complete")
    # What a killed run leaves is whole, finished rows, exactly as the uninterrupted run scored them.
    for r in left:
        assert r[5] is None
        assert r[:4] == baseline["by_id"][r[0]][:4]

    metrics = run_cli(out)
    assert db_file(out) is not None
    rows = check_store_file(db_file(out))
    assert len(rows) == N_PAIRS
    assert [r[0] for r in rows] == list(range(N_PAIRS))
    # identical scores, decisions and raw outputs for every pair (dlib is deterministic)
    assert [r[:4] for r in rows] == [r[:4] for r in baseline["rows"]]
    # rows stored before the kill were kept as they were, not scored again
    assert [r for r in rows if r[0] in {x[0] for x in left}] == left
    assert {k: metrics[k] for k in METRICS} == {k: baseline["metrics"][k] for k in METRICS}
    assert metrics["complete"] is True and metrics["n_errors"] == 0
    assert RunStore(db_file(out).parent).read_manifest()["status"] == "complete"
    assert db_file(out).parent.name == baseline["store"].dir.name  # the same run identity


def test_resume_after_kill_9_gives_the_uninterrupted_results(tmp_path, baseline):
    kill_and_resume(tmp_path / "out", baseline, rows_before_kill=5)


def test_resume_after_kill_9_at_a_random_moment(tmp_path, baseline):
    # a moment anywhere in a run as long as the baseline's, start-up and model loading included: drawn
    # anew each time (printed), so that successive CI runs cover different moments
    seed = random.SystemRandom().randrange(2**32)
    print(f"kill moment seed: {seed}")
    delay = random.Random(seed).uniform(0.1, 0.9) * baseline["seconds"]
    kill_and_resume(tmp_path / "out", baseline, delay=delay)


# ------------------------------------------------------------------ in-process evaluate


class CountingDlib(models.BACKENDS.get("dlib")):
    """The real dlib model, counting the pairs it is asked to compare."""

    def __init__(self, **settings):
        super().__init__(**settings)
        self.pairs_compared = 0

    def similarity(self, a, b):
        self.pairs_compared += len(a)
        return super().similarity(a, b)


def counting_dlib() -> CountingDlib:
    return CountingDlib(**models.resolve("dlib").settings)


def test_limit_then_full_run_scores_only_the_rest(tmp_path, baseline):
    first = counting_dlib()
    run = evaluate("dlib", "demo", limit=12, out=tmp_path, verifier=first)
    assert first.pairs_compared == 12
    rows12 = run.store.rows()
    assert len(rows12) == 12
    picked = load_dataset("demo").pairs.set_index("pair_id").loc[rows12["pair_id"]]
    assert picked.groupby("fold").size().to_dict() == {0: 4, 1: 4, 2: 4}
    assert set(picked["same"]) == {True, False}
    assert picked.groupby("fold")["same"].nunique().to_dict() == {0: 2, 1: 2, 2: 2}
    m = run.metrics()
    assert m["n_pairs"] == 12 and m["complete"] is True
    assert run.manifest["status"] == f"partial (12 of {N_PAIRS} pairs)"
    assert run.store.done_ids() == set(rows12["pair_id"])

    rest = counting_dlib()
    full = evaluate("dlib", "demo", out=tmp_path, verifier=rest)
    assert full.store.dir == run.store.dir
    assert rest.pairs_compared == N_PAIRS - 12
    rows = full.store.rows()
    assert len(rows) == N_PAIRS and not rows["pair_id"].duplicated().any()
    # the first 12 rows, seconds included, are exactly as the limited run left them
    again = rows.set_index("pair_id").loc[rows12["pair_id"]].reset_index()
    assert again.equals(rows12)
    # and every score is the uninterrupted CLI run's
    assert [tuple(r) for r in rows[["pair_id", "score", "decision", "raw_output"]].itertuples(index=False)] == \
        [r[:4] for r in baseline["rows"]]
    fm = full.metrics()
    assert {k: fm[k] for k in METRICS} == {k: baseline["metrics"][k] for k in METRICS}
    assert full.manifest["status"] == "complete"
    assert full.manifest["created"] == run.manifest["created"]

    # a third run has nothing left to score and does not load the model
    nothing = counting_dlib()
    evaluate("dlib", "demo", out=tmp_path, verifier=nothing)
    assert nothing.pairs_compared == 0
    assert full.store.rows().equals(rows)


def test_a_changed_dataset_refuses_to_resume(tmp_path, baseline):
    shutil.copytree(baseline["out"], tmp_path / "out")
    store = RunStore(tmp_path / "out" / baseline["store"].dir.relative_to(baseline["out"]))
    before = store.rows()
    doc = store.read_manifest()
    assert doc["dataset_checksum"] == load_dataset("demo").checksum
    doc["dataset_checksum"] = "0" * 64
    store.write_manifest(doc)
    with pytest.raises(RunError) as err:
        evaluate("dlib", "demo", out=tmp_path / "out", verifier=counting_dlib())
    assert str(store.dir) in str(err.value)
    assert "0" * 64 in str(err.value)
    # nothing was touched
    assert store.rows().equals(before)
    assert store.read_manifest() == doc

    # the CLI says so and exits non-zero
    proc = subprocess.run(command(tmp_path / "out"), capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    assert str(store.dir) in proc.stderr


# ------------------------------------------------------------------ the baseline's results


def test_dlib_separates_the_demo_set(baseline):
    ds = load_dataset("demo")
    scores = dict((r[0], r[1]) for r in baseline["rows"])
    genuine = [scores[p] for p in ds.pairs.loc[ds.pairs["same"], "pair_id"]]
    impostor = [scores[p] for p in ds.pairs.loc[~ds.pairs["same"], "pair_id"]]
    assert len(genuine) == 9 and len(impostor) == 45
    assert min(genuine) > max(impostor)
    m = baseline["metrics"]
    assert m["acquire_rate"] == 1.0
    assert m["auc"] == 1.0 and m["eer"] == 0.0 and m["accuracy_mean"] == 1.0
    # dlib's own decisions (distance < 0.6) are right on every pair
    decisions = {r[0]: r[2] for r in baseline["rows"]}
    assert all(decisions[p] == int(s) for p, s in ds.pairs[["pair_id", "same"]].itertuples(index=False))
    assert m["hard_accuracy"] == 1.0


def test_the_manifest_says_what_made_the_results(baseline):
    doc = baseline["store"].read_manifest()
    spec = models.resolve("dlib")
    assert doc["versions"]["numpy"] == np.__version__
    assert doc["versions"]["dlib-bin"]
    assert set(doc["git"]) == {"commit", "dirty"}
    assert doc["git"]["commit"] is None or len(doc["git"]["commit"]) == 40
    assert doc["model_id"] == "dlib_face_recognition_resnet_model_v1"
    assert doc["model"] == "dlib" and doc["backend"] == "dlib"
    assert doc["settings"] == spec.settings and doc["settings"]["threshold"] == 0.6
    assert doc["dataset"] == "demo" and doc["dataset_pairs"] == N_PAIRS
    assert doc["dataset_checksum"] == load_dataset("demo").checksum
    assert doc["settings_hash"] == baseline["store"].dir.name
    assert baseline["store"].dir == open_run("dlib", "demo", out=baseline["out"]).store.dir


# ------------------------------------------------------------------ one-call scorer


def test_get_scorer_scores_pil_pairs_like_evaluate(baseline):
    scorer = facebench.get_scorer("dlib")
    obama_1, obama_2, biden = (Image.open(DEMO_DIR / f"{k}.png") for k in ("obama_1", "obama_2", "biden"))
    scores = scorer([(obama_1, obama_2), (obama_1, biden), (biden, obama_2)])
    assert isinstance(scores, np.ndarray) and scores.shape == (3,)
    assert scores[0] > scores[1] and scores[0] > scores[2]
    ds = load_dataset("demo").pairs
    pid = {(a, b): p for p, a, b in ds[["pair_id", "image_a", "image_b"]].itertuples(index=False)}
    assert pid[("obama_1", "obama_2")] == 0
    assert scores[0] == pytest.approx(baseline["by_id"][0][1], abs=1e-6)
    assert scores[2] == pytest.approx(baseline["by_id"][pid[("biden", "obama_2")]][1], abs=1e-6)


def test_a_runtime_only_setting_keeps_the_run_and_is_recorded(tmp_path):
    """Raising the api: backend's concurrency or timeout resumes the same run; a prompt is another run."""
    from facebench.scoring import run_store

    spec = "api:some-model@http://127.0.0.1:9/v1"
    default = run_store(spec, "demo", out=tmp_path)
    assert run_store(spec, "demo", out=tmp_path, settings={"concurrency": 32, "timeout": 600, "max_retries": 9}).dir \
        == default.dir
    assert run_store(spec, "demo", out=tmp_path, settings={"prompt": "fr-ouinon"}).dir != default.dir
    assert models.resolve(spec, {"concurrency": 32}).runtime_settings()["concurrency"] == 32
    assert "concurrency" not in models.resolve(spec).identity()["settings"]


def test_a_finished_run_is_left_as_it_was(tmp_path, baseline):
    """Evaluating a run with nothing pending rewrites no manifest, so its pages stay fresh."""
    shutil.copytree(baseline["out"], tmp_path / "out")
    run = open_run("dlib", "demo", out=tmp_path / "out")
    before = (run.store.manifest_path.read_bytes(), run.store.manifest_path.stat().st_mtime_ns)
    evaluate("dlib", "demo", out=tmp_path / "out")
    assert (run.store.manifest_path.read_bytes(), run.store.manifest_path.stat().st_mtime_ns) == before


# ------------------------------------------------------------------ hostile data and faults (a quick stand-in model)


class MeanColour(models.PairVerifier):
    """Scores a pair by how alike its two images' mean colours are: instant and deterministic.
    ``fail_after`` batches, it raises, as a process killed while scoring would stop."""

    def __init__(self, fail_after: int | None = None):
        self.batches, self.fail_after = 0, fail_after

    def score_pairs(self, pairs):
        self.batches += 1
        if self.fail_after is not None and self.batches > self.fail_after:
            raise RuntimeError("stopped")
        return [{"score": -abs(float(np.mean(a)) - float(np.mean(b))), "decision": None, "raw_output": "{}"}
                for a, b in pairs]


def relabelled_demo():
    """The demo set with two labels flipped: the same name, another checksum."""
    from dataclasses import replace

    demo = load_dataset("demo")
    pairs = demo.pairs.copy()
    pairs.loc[:1, "same"] = ~pairs.loc[:1, "same"]
    return replace(demo, pairs=pairs, info=dict(demo.info))


def test_rows_of_another_dataset_never_mix_even_without_the_manifest(tmp_path):
    from facebench.store import DatasetMismatchError

    run = evaluate("dlib", "demo", limit=8, out=tmp_path, verifier=MeanColour(), progress=False)
    before = run.store.rows()
    run.store.manifest_path.unlink()  # deleted, or a second run started at the same moment: no manifest to check
    other = relabelled_demo()
    assert other.checksum != run.full_dataset.checksum
    with pytest.raises(DatasetMismatchError, match=f"{run.store.db_path} holds results made on a dataset with "
                                                   f"checksum {run.full_dataset.checksum}, not {other.checksum}"):
        evaluate("dlib", other, out=tmp_path, verifier=MeanColour(), progress=False)
    assert run.store.rows().equals(before)


def test_merging_shards_made_on_another_dataset_is_refused(tmp_path):
    from facebench.store import DatasetMismatchError

    for k in (0, 1):
        evaluate("dlib", "demo", limit=8, out=tmp_path, shard=(k, 2), verifier=MeanColour(), progress=False)
    run = open_run("dlib", "demo", out=tmp_path)
    with pytest.raises(DatasetMismatchError, match=r"shards/0-of-2\.sqlite holds results made on a dataset"):
        evaluate("dlib", relabelled_demo(), limit=8, out=tmp_path, score=False, progress=False)
    assert not run.store.db_path.exists() and not run.store.manifest_path.exists()  # nothing merged, no "complete"
    merged = evaluate("dlib", "demo", limit=8, out=tmp_path, score=False, progress=False)
    assert len(merged.store.done_ids()) == 8


def test_a_run_stopped_while_scoring_leaves_no_running_status(tmp_path):
    with pytest.raises(RuntimeError, match="stopped"):
        evaluate("dlib", "demo", limit=8, batch_size=4, out=tmp_path, verifier=MeanColour(fail_after=1),
                 progress=False)
    run = open_run("dlib", "demo", out=tmp_path, limit=8)
    assert len(run.store.done_ids()) == 4
    assert run.manifest["status"] == f"partial (0 of {N_PAIRS} pairs)"  # what the rows said when it started


def test_an_unreadable_image_is_that_pairs_error_and_the_rest_are_scored(tmp_path):
    import layout_fixtures as fx

    fx.make_lfw(tmp_path / "data" / "lfw")
    ds = load_dataset("lfw", tmp_path / "data")
    broken = ds.pairs.loc[0, "image_a"]
    fx.truncate(tmp_path / "data" / "lfw" / broken)
    run = evaluate("dlib", "lfw", root=tmp_path / "data", out=tmp_path / "out", verifier=MeanColour(), progress=False)
    rows = run.store.rows().set_index("pair_id")
    failed = rows.index[rows["error"].notna()].tolist()
    assert failed == ds.pairs_using(broken) and len(rows) == len(ds.pairs)
    assert all(e.startswith(f"cannot read image {tmp_path / 'data' / 'lfw' / broken}: ") for e in rows.loc[failed, "error"])
    assert rows["score"].notna().sum() == len(ds.pairs) - len(failed)


def test_a_finished_run_in_a_read_only_folder_can_be_evaluated_merged_and_read(tmp_path):
    from conftest import read_only

    for k in (0, 1):
        evaluate("dlib", "demo", limit=8, out=tmp_path / "out", shard=(k, 2), verifier=MeanColour(), progress=False)
    expected = evaluate("dlib", "demo", limit=8, out=tmp_path / "out", score=False, progress=False).metrics()
    with read_only(tmp_path / "out"):
        assert open_run("dlib", "demo", limit=8, out=tmp_path / "out").metrics() == expected
        assert evaluate("dlib", "demo", limit=8, out=tmp_path / "out", score=False, progress=False).metrics() == expected
        assert evaluate("dlib", "demo", limit=8, out=tmp_path / "out", verifier=MeanColour(fail_after=0),
                        progress=False).metrics() == expected  # nothing pending: nothing scored or written
