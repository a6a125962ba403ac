"""The per-run results store: SQLite rows, manifests, folder names, two writers at once."""
import math
import multiprocessing
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facebench.store import ROW_COLUMNS, DatasetMismatchError, RunStore, StoreError, model_slug


def raw_rows(store: RunStore) -> list[tuple]:
    """The rows exactly as SQLite holds them (no pandas NaN conversion)."""
    with closing(sqlite3.connect(f"file:{store.db_path}?mode=ro", uri=True)) as con:
        return con.execute("SELECT * FROM pairs ORDER BY pair_id").fetchall()


def row(pair_id, **kw):
    return {"pair_id": pair_id, "score": kw.get("score", 0.5), "decision": kw.get("decision", 1),
            "raw_output": kw.get("raw_output", "{}"), "seconds": kw.get("seconds", 0.01),
            "error": kw.get("error")}


# ------------------------------------------------------------------ rows


def test_write_then_read_round_trips_every_column(tmp_path):
    store = RunStore(tmp_path / "run")
    rows = [
        {"pair_id": 7, "score": -0.25, "decision": 0, "raw_output": '{"a": "detected"}', "seconds": 0.5, "error": None},
        {"pair_id": 2, "score": 0.75, "decision": 1, "raw_output": "yes", "seconds": 1.5, "error": None},
        {"pair_id": 3, "score": None, "decision": -1, "raw_output": "maybe?", "seconds": 2.0, "error": None},
    ]
    store.write(rows)
    df = store.rows()
    assert list(df.columns) == ROW_COLUMNS
    assert df["pair_id"].tolist() == [2, 3, 7]  # sorted by pair id
    assert raw_rows(store) == [
        (2, 0.75, 1, "yes", 1.5, None),
        (3, None, -1, "maybe?", 2.0, None),
        (7, -0.25, 0, '{"a": "detected"}', 0.5, None),
    ]
    assert df.loc[df["pair_id"] == 7, "raw_output"].item() == '{"a": "detected"}'
    assert df.loc[df["pair_id"] == 2, "score"].item() == 0.75
    assert store.done_ids() == {2, 3, 7}


def test_missing_columns_are_stored_as_null(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write([{"pair_id": 1, "score": 0.1, "seconds": 0.2}])
    assert raw_rows(store) == [(1, 0.1, None, None, 0.2, None)]


def test_numpy_scalars_are_stored_as_plain_numbers(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write([{"pair_id": np.int64(4), "score": np.float32(0.5), "decision": np.int64(1),
                  "seconds": np.float64(0.25), "raw_output": "x"}])
    with closing(sqlite3.connect(store.db_path)) as con:
        types = con.execute("SELECT typeof(pair_id), typeof(score), typeof(decision), typeof(seconds) "
                            "FROM pairs").fetchone()
    assert types == ("integer", "real", "integer", "real")
    assert raw_rows(store) == [(4, 0.5, 1, "x", 0.25, None)]


@pytest.mark.parametrize("nan", [float("nan"), np.float64("nan"), np.float32("nan"), math.nan],
                         ids=["float", "float64", "float32", "math"])
def test_nan_is_stored_as_null(tmp_path, nan):
    store = RunStore(tmp_path / "run")
    store.write([{"pair_id": 0, "score": nan, "decision": None, "seconds": nan, "raw_output": "r"}])
    with closing(sqlite3.connect(store.db_path)) as con:
        got = con.execute("SELECT score IS NULL, decision IS NULL, seconds IS NULL, typeof(score) FROM pairs").fetchone()
    assert got == (1, 1, 1, "null")
    df = store.rows()
    assert pd.isna(df["score"].iloc[0]) and pd.isna(df["seconds"].iloc[0])
    # A NULL score with no error is a finished pair (the model gave no score), not a pending one.
    assert store.done_ids() == {0}


def test_a_finished_row_is_never_overwritten(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write([row(1, score=0.9, decision=1, raw_output="first", seconds=1.0)])
    store.write([row(1, score=-5.0, decision=0, raw_output="second", seconds=9.0)])
    store.write([row(1, score=None, decision=None, raw_output="third", seconds=3.0, error="boom")])
    assert raw_rows(store) == [(1, 0.9, 1, "first", 1.0, None)]
    assert store.done_ids() == {1}


def test_an_error_row_is_retried_and_replaced_by_a_later_success(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write([row(1, score=None, decision=None, raw_output=None, error="cannot read image x.png"),
                 row(2, score=0.3, raw_output="ok")])
    assert store.done_ids() == {2}
    assert len(store.rows()) == 2  # the error row is stored, just not done
    # A second failure replaces the first one's message.
    store.write([row(1, score=None, decision=None, raw_output=None, error="timeout")])
    assert raw_rows(store)[0][5] == "timeout"
    assert store.done_ids() == {2}
    store.write([row(1, score=0.7, decision=1, raw_output="fixed", seconds=2.0)])
    assert raw_rows(store) == [(1, 0.7, 1, "fixed", 2.0, None), (2, 0.3, 1, "ok", 0.01, None)]
    assert store.done_ids() == {1, 2}
    # and once it succeeded, it is final
    store.write([row(1, score=0.0, error="late failure")])
    assert raw_rows(store)[0] == (1, 0.7, 1, "fixed", 2.0, None)


def test_a_mixed_batch_inserts_new_rows_and_keeps_finished_ones(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write([row(i, score=float(i), raw_output="old") for i in range(5)])
    store.write([row(i, score=-float(i), raw_output="new") for i in range(3, 8)])
    got = {r[0]: (r[1], r[3]) for r in raw_rows(store)}
    assert got == {0: (0.0, "old"), 1: (1.0, "old"), 2: (2.0, "old"), 3: (3.0, "old"), 4: (4.0, "old"),
                   5: (-5.0, "new"), 6: (-6.0, "new"), 7: (-7.0, "new")}


def test_empty_store_reads_as_empty_without_creating_files(tmp_path):
    store = RunStore(tmp_path / "never" / "written")
    assert store.done_ids() == set()
    df = store.rows()
    assert len(df) == 0 and list(df.columns) == ROW_COLUMNS
    assert store.read_manifest() == {}
    assert not (tmp_path / "never").exists()


def test_manifest_round_trip(tmp_path):
    store = RunStore(tmp_path / "run")
    store.write_manifest({"model": "dlib", "settings": {"b": 2, "a": 1}, "n": 3})
    assert store.read_manifest() == {"model": "dlib", "settings": {"b": 2, "a": 1}, "n": 3}
    store.write_manifest({"model": "other"})
    assert store.read_manifest() == {"model": "other"}
    assert sorted(p.name for p in store.dir.iterdir()) == ["manifest.json"]


# ------------------------------------------------------------------ folder names


@pytest.mark.parametrize("spec, slug", [
    ("dlib", "dlib"),
    ("hf:Qwen/Qwen2-VL-2B-Instruct", "hf-Qwen--Qwen2-VL-2B-Instruct"),
    ("hf:/abs/path/model", "hf---abs--path--model"),
    ("openai:gpt-4o mini", "openai-gpt-4o-mini"),
    ("hf:C:\\models\\x", "hf-C--models-x"),
    ("ollama:llava:13b", "ollama-llava-13b"),
    ("v1.2_x", "v1.2_x"),
])
def test_model_slug(spec, slug):
    assert model_slug(spec) == slug


@pytest.mark.parametrize("spec", ["hf:Qwen/Qwen2-VL-2B-Instruct", "hf:../../etc", "a:b/c:d\\e", " x y ", "hf:模型/名字",
                                  "hf:org/name@rev?x=1#y", "hf:~/models/m"])
def test_model_slug_is_one_safe_folder_name(spec, tmp_path):
    slug = model_slug(spec)
    assert slug and "/" not in slug and ":" not in slug and "\\" not in slug
    assert slug not in (".", "..")
    assert set(slug) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
    # It really is one folder below out/
    store = RunStore.for_run(tmp_path, spec, "demo", {"model": spec})
    assert store.dir.parent.parent.parent == tmp_path
    assert store.dir.parent.parent.name == slug


def test_for_run_separates_settings_and_ignores_dict_order(tmp_path):
    a = {"model": "dlib", "backend": "dlib", "settings": {"upsample": 1, "threshold": 0.6, "nested": {"x": 1, "y": 2}}}
    same = {"settings": {"nested": {"y": 2, "x": 1}, "threshold": 0.6, "upsample": 1}, "backend": "dlib", "model": "dlib"}
    other = {"model": "dlib", "backend": "dlib", "settings": {"upsample": 2, "threshold": 0.6, "nested": {"x": 1, "y": 2}}}
    sa = RunStore.for_run(tmp_path, "dlib", "demo", a)
    assert sa.dir == RunStore.for_run(tmp_path, "dlib", "demo", same).dir
    assert sa.dir != RunStore.for_run(tmp_path, "dlib", "demo", other).dir
    assert sa.dir != RunStore.for_run(tmp_path, "dlib", "lfw", a).dir
    assert sa.dir.parent == tmp_path / "dlib" / "demo"
    assert len(sa.dir.name) == 12
    assert sa.db_path == sa.dir / "pairs.sqlite" and sa.manifest_path == sa.dir / "manifest.json"
    # a model spec with '/' and ':' stays two levels below out/
    hf = RunStore.for_run(tmp_path, "hf:Qwen/Qwen2-VL-2B-Instruct", "demo", a)
    assert hf.dir.parent == tmp_path / "hf-Qwen--Qwen2-VL-2B-Instruct" / "demo"
    # nothing is created until something is written
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ two processes


def _writer(directories: list[str], name: str, barrier, errors) -> None:
    """For each store, write pair ids 0..199 in batches of 10 (ascending or descending),
    starting together with the other writer; every column says who wrote the row."""
    ids = list(range(200)) if name == "up" else list(range(199, -1, -1))
    offset = 0.25 if name == "up" else 0.75
    for directory in directories:
        barrier.wait(timeout=60)
        try:
            store = RunStore(directory)
            for start in range(0, len(ids), 10):
                store.write([{"pair_id": i, "score": i + offset, "decision": int(name == "up"), "raw_output": name,
                              "seconds": offset, "error": None} for i in ids[start:start + 10]])
        except Exception as exc:  # reported to the test, which fails on it
            errors.put(f"{name} on {directory}: {exc!r}")


def _check_shared_store(directory: Path) -> None:
    store = RunStore(directory)
    with closing(sqlite3.connect(store.db_path)) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT pair_id) FROM pairs").fetchone() == (200, 200)
        rows = con.execute("SELECT * FROM pairs ORDER BY pair_id").fetchall()
    assert [r[0] for r in rows] == list(range(200))
    for pid, score, decision, raw, seconds, error in rows:
        # each row comes whole from one writer: no mixing of two writers' columns
        assert raw in ("up", "down")
        offset = 0.25 if raw == "up" else 0.75
        assert (score, decision, seconds, error) == (pid + offset, int(raw == "up"), offset, None)
    assert store.done_ids() == set(range(200))
    df = store.rows()
    assert len(df) == 200 and not df["pair_id"].duplicated().any()


@pytest.mark.parametrize("fresh", [False, True], ids=["existing-store", "new-store"])
def test_two_processes_writing_overlapping_batches_into_one_store(tmp_path, fresh):
    # Several stores, one after the other, to give a race more than one chance to show.
    # existing-store: the (empty) store is there before the writers start, as when a second
    # process joins a run; new-store: both processes create the folder and the database.
    directories = [tmp_path / f"run{i}" for i in range(8)]
    if not fresh:
        for d in directories:
            RunStore(d).write([])
            assert RunStore(d).db_path.exists() and RunStore(d).done_ids() == set()
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=([str(d) for d in directories], name, barrier, errors))
             for name in ("up", "down")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    for d in directories:
        _check_shared_store(d)


def test_write_waits_for_another_process_creating_the_store(tmp_path):
    # Regression (fixed in c1fbe90): switching a new file to WAL takes a lock SQLite's busy
    # timeout does not wait for, so _connect failed at once with "database is locked".
    store = RunStore(tmp_path / "run")
    store.dir.mkdir()
    other = sqlite3.connect(store.db_path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other process is in the middle of creating the file
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    try:
        t0 = time.monotonic()
        store.write([{"pair_id": 1, "score": 0.5, "seconds": 0.1}])
        assert time.monotonic() - t0 >= 0.4  # it waited for the other writer
    finally:
        release.join()
        other.close()
    assert store.done_ids() == {1}
    with closing(sqlite3.connect(store.db_path)) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# ------------------------------------------------------------------ shards and merging


def test_shard_files_live_under_the_run_and_keep_its_folder_name(tmp_path):
    run = RunStore.for_run(tmp_path, "dlib", "demo", {"model": "dlib"})
    shard = run.shard(2, 4)
    assert shard.dir == run.dir  # so the settings hash (dir.name) is the run's
    assert shard.db_path == run.dir / "shards" / "2-of-4.sqlite"
    assert shard.manifest_path == run.dir / "shards" / "2-of-4.json"
    assert run.shards() == [] and not run.dir.exists()
    shard.write([row(2)])
    run.shard(0, 4).write([row(4)])
    (run.dir / "shards" / "notes-of-me.sqlite").write_text("not a shard")  # ignored: not k-of-N
    assert [s.name for s in run.shards()] == ["0-of-4", "2-of-4"]
    assert not run.db_path.exists()  # shards never write the run's own file


@pytest.mark.parametrize("index, count", [(4, 4), (-1, 4), (0, 0)])
def test_a_shard_index_outside_0_to_n_minus_1_is_refused(tmp_path, index, count):
    with pytest.raises(ValueError, match=f"shard {index} of {count}"):
        RunStore(tmp_path / "run").shard(index, count)


def test_a_shard_reads_through_to_its_run(tmp_path):
    run = RunStore(tmp_path / "run")
    run.write([row(1, raw_output="run"), row(3, score=None, error="timeout")])
    shard = run.shard(1, 2)
    assert shard.done_ids() == {1}  # the run's error row is not done: the shard retries pair 3
    shard.write([row(3, score=0.9, raw_output="shard"), row(5, raw_output="shard")])
    assert shard.done_ids() == {1, 3, 5}
    got = shard.rows()
    assert list(got.columns) == ROW_COLUMNS
    assert got["pair_id"].tolist() == [1, 3, 5]
    assert got["raw_output"].tolist() == ["run", "shard", "shard"]  # the shard's result beats the run's error
    assert run.done_ids() == {1}  # until merged


def test_merge_follows_the_write_rule_and_is_idempotent(tmp_path):
    run = RunStore(tmp_path / "run")
    run.write([row(0, raw_output="run"), row(2, score=None, decision=None, error="timeout")])
    a, b = run.shard(0, 2), run.shard(1, 2)
    a.write([row(0, score=-1.0, raw_output="late"), row(2, score=0.25, decision=0, raw_output="a")])
    b.write([row(1, raw_output="b"), row(3, score=None, decision=None, raw_output=None, error="bad image")])
    assert run.merge([a, b]) == 3  # pair 2 replaced, pairs 1 and 3 added; pair 0 kept
    assert raw_rows(run) == [(0, 0.5, 1, "run", 0.01, None), (1, 0.5, 1, "b", 0.01, None),
                             (2, 0.25, 0, "a", 0.01, None), (3, None, None, None, 0.01, "bad image")]
    assert run.merge([a, b]) == 1  # only the error row is rewritten; nothing finished changes
    assert raw_rows(run)[:3] == [(0, 0.5, 1, "run", 0.01, None), (1, 0.5, 1, "b", 0.01, None),
                                 (2, 0.25, 0, "a", 0.01, None)]
    assert run.done_ids() == {0, 1, 2}


def test_merge_shards_keeps_the_files_so_rows_written_later_are_merged_too(tmp_path):
    run = RunStore(tmp_path / "run")
    shard = run.shard(0, 3)
    shard.write([row(0)])
    shard.write_manifest({"shard": {"index": 0, "count": 3}, "status": "running"})
    assert run.merge_shards() == {"0-of-3": {"shard": {"index": 0, "count": 3}, "status": "running"}}
    shard.write([row(3)])  # the shard goes on writing after a merge
    run.merge_shards()
    assert run.done_ids() == {0, 3}
    assert shard.db_path.exists()
    with closing(sqlite3.connect(run.db_path)) as con:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert RunStore(tmp_path / "empty").merge_shards() == {}


# ------------------------------------------------------------------ the dataset a store's rows were made on


def test_rows_made_on_another_dataset_are_refused_by_the_store_itself(tmp_path):
    first, second = RunStore(tmp_path / "run"), RunStore(tmp_path / "run")  # e.g. two processes at once
    first.write([row(0), row(1)], "a" * 64)
    assert second.dataset_checksum() == "a" * 64
    second.write([row(2)], "a" * 64)
    (tmp_path / "run" / "manifest.json").unlink(missing_ok=True)  # the guard does not live in the manifest
    with pytest.raises(DatasetMismatchError) as info:
        second.write([row(3), row(2, score=9.0, error=None)], "b" * 64)
    assert str(first.db_path) in str(info.value) and "a" * 64 in str(info.value) and "b" * 64 in str(info.value)
    assert first.done_ids() == {0, 1, 2} and raw_rows(first)[2][1] == 0.5  # the whole batch was refused
    with pytest.raises(DatasetMismatchError):
        second.check_dataset("b" * 64)
    second.check_dataset("a" * 64)
    RunStore(tmp_path / "other").check_dataset("b" * 64)  # nothing stored, nothing to refuse


def test_merge_refuses_shards_made_on_another_dataset(tmp_path):
    run = RunStore(tmp_path / "run")
    run.shard(0, 2).write([row(0)], "a" * 64)
    legacy = run.shard(1, 2)  # a shard file from before the store recorded it: its manifest says
    with closing(sqlite3.connect(legacy.db_path)) as con:
        con.execute("CREATE TABLE pairs (pair_id INTEGER PRIMARY KEY, score REAL, decision INTEGER, "
                    "raw_output TEXT, seconds REAL, error TEXT)")
        con.execute("INSERT INTO pairs VALUES (1, 0.5, 1, '{}', 0.01, NULL)")
        con.commit()
    legacy.write_manifest({"dataset_checksum": "b" * 64})
    for checksum, culprit in (("b" * 64, "0-of-2"), ("a" * 64, "1-of-2")):
        with pytest.raises(DatasetMismatchError, match=f"shards/{culprit}.sqlite holds results made on a dataset"):
            run.merge_shards(checksum)
        assert not run.db_path.exists()  # nothing merged
    legacy.write_manifest({"dataset_checksum": "a" * 64})
    run.merge_shards("a" * 64)
    assert run.done_ids() == {0, 1} and run.dataset_checksum() == "a" * 64


# ------------------------------------------------------------------ reading never writes


def _legacy_store(folder: Path) -> RunStore:
    """A results file as an older facebench left it: rollback journal, no meta table."""
    folder.mkdir(parents=True)
    with closing(sqlite3.connect(folder / "pairs.sqlite")) as con:
        con.execute("CREATE TABLE pairs (pair_id INTEGER PRIMARY KEY, score REAL, decision INTEGER, "
                    "raw_output TEXT, seconds REAL, error TEXT)")
        con.executemany("INSERT INTO pairs VALUES (?, 0.5, 1, '{}', 0.01, NULL)", [(0,), (1,)])
        con.commit()
    return RunStore(folder)


def test_reading_changes_no_byte_and_makes_no_file(tmp_path):
    store = _legacy_store(tmp_path / "run")
    before = store.db_path.read_bytes()
    assert store.done_ids() == {0, 1} and len(store.rows()) == 2 and store.dataset_checksum() is None
    assert store.merge([]) == 0 and store.shard(0, 2).done_ids() == {0, 1}
    assert store.db_path.read_bytes() == before  # no switch to WAL, no meta table
    assert sorted(p.name for p in store.dir.iterdir()) == ["pairs.sqlite"]


def test_a_finished_run_in_a_read_only_folder_is_read_and_merged(tmp_path):
    from conftest import read_only

    run = RunStore(tmp_path / "run")
    run.shard(0, 2).write([row(0)], "a" * 64)
    run.shard(1, 2).write([row(1)], "a" * 64)
    run.merge_shards("a" * 64)
    run.write_manifest({"dataset_checksum": "a" * 64})
    with read_only(tmp_path / "run"):
        assert run.done_ids() == {0, 1} and run.rows()["pair_id"].tolist() == [0, 1]
        assert run.merge_shards("a" * 64).keys() == {"0-of-2", "1-of-2"}  # all merged already: nothing to write
        run.check_dataset("a" * 64)
        with pytest.raises(StoreError, match=str(run.db_path)):
            run.write([row(2)], "a" * 64)


# ------------------------------------------------------------------ broken files name themselves


@pytest.mark.parametrize("content", [b"garbage" * 200, b"SQLite format 3\x00" + bytes(84) + b"\xff" * 4000])
def test_a_file_that_is_not_a_results_database_is_named(tmp_path, content):
    store = RunStore(tmp_path / "run")
    store.dir.mkdir()
    store.db_path.write_bytes(content)
    for call in (store.done_ids, store.rows, lambda: store.write([row(0)], "a" * 64), store.dataset_checksum):
        with pytest.raises(StoreError, match=f"^{store.db_path}: cannot use this results file"):
            call()


@pytest.mark.parametrize("text, problem", [("{not json", "unreadable manifest"), ("[1, 2]", "holds a list"),
                                           ("", "unreadable manifest")])
def test_a_manifest_that_is_not_a_json_object_is_named(tmp_path, text, problem):
    store = RunStore(tmp_path / "run")
    store.dir.mkdir()
    store.manifest_path.write_text(text)
    with pytest.raises(StoreError, match=f"^{store.manifest_path}: .*{problem}"):
        store.read_manifest()
