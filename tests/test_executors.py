"""Sharded runs and the grid's executors: shards of dlib on the demo set merge into the unsharded run;
the grid on a local Ray (CPU-only tasks, one session for the module) stores the same rows and makes the
same pages as the local executor, retries a failed task once, cancels on Ctrl-C and stays on loopback; a task
keeps its CPUs while it waits on the store, and one that fails because of its node runs on another node."""
import json
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import nbformat
import pytest

from facebench import cli
from facebench.executors import (RayExecutor, infeasible, make_executor, ray_session, score_task,
                                 scoring_parameters, task_resources)
from facebench.grid import STATUS_FILE, load_grid, run_grid
from facebench.models import ModelSpec
from facebench.report import collect
from facebench.scoring import evaluate, open_run

from conftest import ROOT, copy_book_sources, write_grid

N_PAIRS = 54  # the demo set
NOT_TIMING = "pair_id, score, decision, raw_output, error"  # every stored column but seconds


def stored(db: Path) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        return con.execute(f"SELECT {NOT_TIMING} FROM pairs ORDER BY pair_id").fetchall()


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory):
    """dlib on the demo set, one process, no shards: what every sharded run must reproduce."""
    out = tmp_path_factory.mktemp("unsharded")
    run = evaluate("dlib", "demo", out=out)
    rows = stored(run.store.db_path)
    assert len(rows) == N_PAIRS
    return {"rows": rows, "metrics": run.metrics(), "out": out}


def same_metrics(a: dict, b: dict) -> bool:
    """Equal but for the folder (NaN as the CLI prints it: null)."""
    def norm(m):
        return json.loads(cli._json_line({**m, "run_dir": None}))
    return norm(a) == norm(b)


# ------------------------------------------------------------------ shards without Ray


def test_shards_from_the_command_line_merge_into_the_unsharded_run(tmp_path, unsharded, capsys):
    out = tmp_path / "results"
    base = ["--model", "dlib", "--dataset", "demo", "--out", str(out), "--batch-size", "4"]
    assert cli.main(["evaluate", *base, "--shard", "1/2", "--json"]) == 0
    printed = capsys.readouterr().out
    assert "shards/1-of-2.sqlite" in printed
    assert json.loads(printed.strip().splitlines()[-1])["n_pairs"] == N_PAIRS // 2
    run = open_run("dlib", "demo", out=out)
    assert sorted(p.name for p in (run.store.dir / "shards").iterdir()) == ["1-of-2.json", "1-of-2.sqlite"]
    assert stored(run.store.dir / "shards" / "1-of-2.sqlite") == [r for r in unsharded["rows"] if r[0] % 2 == 1]

    # Merging what is there so far: a partial run, whose manifest has the model's info from the shard.
    assert cli.main(["merge", "--model", "dlib", "--dataset", "demo", "--out", str(out)]) == 0
    assert "merged shards    1-of-2 (partial (27 of 54 pairs))" in capsys.readouterr().out
    manifest = run.store.read_manifest()
    assert manifest["status"] == "partial (27 of 54 pairs)" and manifest["model_id"]
    shard = manifest["sharded"]["1-of-2"]["shard"]
    assert {k: shard[k] for k in ("index", "count", "pairs")} == {"index": 1, "count": 2, "pairs": 27}
    assert shard["host"]

    assert cli.main(["evaluate", *base, "--shard", "0/2"]) == 0
    assert cli.main(["merge", "--model", "dlib", "--dataset", "demo", "--out", str(out), "--json"]) == 0
    merged_metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stored(run.store.db_path) == unsharded["rows"]  # scores, decisions, raw outputs, errors
    assert same_metrics(merged_metrics, unsharded["metrics"])
    manifest = run.store.read_manifest()
    assert manifest["status"] == "complete" and sorted(manifest["sharded"]) == ["0-of-2", "1-of-2"]
    assert manifest["settings_hash"] == run.store.dir.name  # both shards in the one run folder


def test_a_shard_scores_only_what_its_run_lacks(tmp_path, unsharded):
    out = tmp_path / "results"
    run = open_run("dlib", "demo", out=out, limit=30)
    # An earlier, unsharded run stopped after pair 19.
    run.store.write([dict(zip(NOT_TIMING.split(", "), r), seconds=0.1) for r in unsharded["rows"] if r[0] < 20])
    shard = evaluate("dlib", "demo", out=out, limit=30, shard=(0, 2))
    expected = {i for i in run.dataset.pairs["pair_id"] if i % 2 == 0 and i >= 20}
    assert {r[0] for r in stored(shard.store.db_path)} == expected
    assert shard.metrics()["complete"] and shard.metrics()["n_pairs"] == len(shard.dataset.pairs)
    merged = evaluate("dlib", "demo", out=out, score=False)
    assert merged.manifest["status"] == f"partial ({20 + len(expected)} of {N_PAIRS} pairs)"


def test_merging_scores_nothing_and_loads_no_model(tmp_path, monkeypatch):
    monkeypatch.setattr(ModelSpec, "load", lambda self: pytest.fail("a model was loaded"))
    run = evaluate("dlib", "demo", out=tmp_path, score=False)
    assert run.manifest["status"] == f"partial (0 of {N_PAIRS} pairs)"


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_cli_refuses_a_bad_shard(text, capsys):
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", "dlib", "--dataset", "demo", "--shard", text])
    assert "--shard" in capsys.readouterr().err


# ------------------------------------------------------------------ grid files, resources, CLI


def test_shards_in_the_grid_file_model_entry_over_dataset_entry_over_grid(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", base=str(ROOT), shards=3,
                      models=["dlib", {"model": "dlib", "label": "dlib-5", "shards": 5}],
                      datasets=["demo", {"dataset": "lfw", "shards": 2}])
    cells = load_grid(grid)["cells"]
    assert [c["shards"] for c in cells] == [3, 2, 5, 5]
    assert "shards" not in cells[0]["parameters"]  # not a notebook parameter
    assert [c["shards"] for c in load_grid(write_grid(tmp_path / "one.yaml", base=str(ROOT)))["cells"]] == [1]


@pytest.mark.parametrize("changes, message", [
    ({"shards": 0}, r"g\.yaml: shards must be a whole number >= 1, got 0"),
    ({"models": [{"model": "dlib", "shards": "4"}]}, r"g\.yaml: shards must be .* got '4'"),
    ({"models": [{"model": "dlib", "shard": 4}]}, r"g\.yaml: model entry 'dlib' has unknown key\(s\) 'shard' \(did you mean 'shards'\?\)"),
])
def test_bad_shards_in_a_grid_file_name_the_file(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        load_grid(write_grid(tmp_path / "g.yaml", base=str(ROOT), **changes))


def test_resources_come_from_the_registry_entry_or_the_default():
    assert task_resources(ModelSpec("dlib", "dlib"), cluster_gpus=4) == {"cpus": 1, "gpus": 0}
    assert task_resources(ModelSpec("m", "hf", entry={"resources": {"gpus": 0.5}}), cluster_gpus=4) == \
        {"cpus": 1, "gpus": 0.5}
    with pytest.raises(ValueError, match=r"models\.yaml, model 'm': unknown resources \['gpu'\]"):
        task_resources(ModelSpec("m", "hf", entry={"resources": {"gpu": 1}}), cluster_gpus=4)
    with pytest.raises(ValueError, match=r"model 'm': resources\.cpus must be a number >= 0, got -1"):
        task_resources(ModelSpec("m", "hf", entry={"resources": {"cpus": -1}}), cluster_gpus=4)
    assert infeasible({"cpus": 2, "gpus": 1}, [{"CPU": 1, "GPU": 1}, {"CPU": 8}]).startswith(
        "a task needs 2 CPU(s) and 1 GPU(s) on one node")


def test_scoring_parameters_are_the_ones_evaluate_takes():
    params = {"model": "dlib", "dataset": "demo", "limit": 6, "batch_size": 4, "out": "/x", "root": None,
              "settings": {"upsample": 0}}
    assert scoring_parameters(params) == {k: v for k, v in params.items() if k != "out"}
    assert scoring_parameters(params, keep_out=True) == params


def test_cli_grid_hands_executor_address_and_shards_to_run_grid(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr("facebench.grid.run_grid", lambda grid, **kw: calls.append((grid, kw)) or {"cells": []})
    assert cli.main(["grid", "g.yaml", "--executor", "ray", "--address", "head:6379", "--shards", "4"]) == 0
    assert calls == [(Path("g.yaml").absolute(), {"force": False, "executor": "ray", "address": "head:6379",
                                                  "shards": 4, "only": None, "score": True})]
    assert cli.main(["grid", "g.yaml", "--address", "head:6379"]) == 2
    assert "--address head:6379 needs --executor ray" in capsys.readouterr().err
    assert cli.main(["grid", "g.yaml", "--shards", "2"]) == 2
    assert "--shards 2 needs --executor ray" in capsys.readouterr().err


def test_ray_client_addresses_are_refused_before_ray_starts():
    with pytest.raises(ValueError, match="Ray Client"):
        with ray_session("ray://head:10001"):
            pass
    with pytest.raises(ValueError, match="use --executor ray"):
        make_executor("local", address="head:6379")


# ------------------------------------------------------------------ the grid on a local Ray


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs, loopback only) for every test below, started the way the executor starts one."""
    temp_dir = tempfile.mkdtemp(prefix="fbt-", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    with ray_session(num_cpus=2, temp_dir=temp_dir, log_to_driver=False) as ray:
        yield ray
    assert not ray.is_initialized()  # a session ray_session started, it shuts down
    shutil.rmtree(temp_dir, ignore_errors=True)


def executor(**kw) -> RayExecutor:
    return RayExecutor(log_to_driver=False, **kw)


def ray_project(tmp_path: Path, **changes) -> Path:
    project = copy_book_sources(tmp_path)
    return write_grid(project / "grids" / "ray.yaml", summaries=[], **changes)


LOOPBACK = ("127.0.0.1", "::ffff:127.0.0.1", "::1")


def listening_addresses() -> list[tuple[str, str, int]]:
    """(process name, address, pid) of every socket that a process started from this one listens on."""
    import psutil

    listening = []
    for proc in psutil.Process().children(recursive=True):
        try:
            listening += [(proc.name(), c.laddr.ip, proc.pid) for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN]
        except psutil.Error:  # a worker that exited meanwhile
            continue
    return listening


def test_local_ray_listens_on_loopback_only(ray_cluster):
    listening = listening_addresses()
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    assert all(ip in LOOPBACK for _, ip, _ in listening), listening


def test_sharded_grid_on_ray_stores_the_unsharded_rows_and_makes_the_local_page(ray_cluster, tmp_path, unsharded):
    limit = 24  # a quicker run; the unsharded rows of the same pairs are the reference
    grid = ray_project(tmp_path, shards=2, parameters={"limit": limit})
    lines = []
    status = run_grid(grid, executor=executor(), log=lines.append)
    assert [c["status"] for c in status["cells"]] == ["complete"]
    assert status["executor"] == "ray"
    assert sum("pairs stored" in line for line in lines) == 2  # one task per shard
    run = open_run("dlib", "demo", out=tmp_path / "results", limit=limit)
    reference = open_run("dlib", "demo", out=unsharded["out"], limit=limit)
    assert stored(run.store.db_path) == [r for r in unsharded["rows"] if r[0] in set(run.dataset.pairs["pair_id"])]
    manifest = run.store.read_manifest()
    assert manifest["status"] == f"partial ({limit} of {N_PAIRS} pairs)"
    assert sorted(manifest["sharded"]) == ["0-of-2", "1-of-2"]
    assert same_metrics(run.metrics(), reference.metrics())
    # The page: the local executor's page of the same run, cell for cell, and not failed.
    page_path = tmp_path / "book" / "runs" / "dlib__demo.ipynb"
    page = nbformat.read(page_path, as_version=4)
    assert not page.metadata.papermill.exception
    run_grid(grid, force=True, log=lambda *_: None)  # local: every pair of the run is stored, nothing is scored
    local = nbformat.read(page_path, as_version=4)
    assert [c.source for c in page.cells if "injected-parameters" not in c.metadata.get("tags", [])] == \
        [c.source for c in local.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    def kinds(nb):
        return [sorted({k for o in c.get("outputs", []) for k in o.get("data", {})}) for c in nb.cells]
    assert kinds(page) == kinds(local)
    recorded = json.loads((tmp_path / "book" / "runs" / STATUS_FILE).read_text())
    assert recorded["cells"][0]["status"] == "complete" and "finished" in recorded
    # A second run skips the complete cell without submitting anything.
    lines.clear()
    run_grid(grid, executor=executor(), log=lines.append)
    assert any("page is fresh" in line for line in lines) and not any("rendering" in line for line in lines)


def flaky(marker_dir: Path):
    """A task that fails the first time it runs for each cell, then scores as usual."""
    def task(parameters, shard, store_dir, server):
        marker = marker_dir / parameters["dataset"]
        if not marker.exists():
            marker.write_text("failed once")
            raise RuntimeError("flaky worker")
        return score_task(parameters, shard, store_dir, server)
    return task


def test_a_failed_task_is_retried_once_then_its_cell_is_recorded_as_failed(ray_cluster, tmp_path):
    grid = ray_project(tmp_path, parameters={"limit": 6},
                       datasets=["demo", {"dataset": "lfw", "parameters": {"root": str(tmp_path / "nowhere")}}])
    markers = tmp_path / "markers"
    markers.mkdir()
    lines = []
    status = run_grid(grid, executor=executor(task=flaky(markers)), log=lines.append)
    by_name = {c["name"]: c for c in status["cells"]}
    assert by_name["dlib__demo"]["status"] == "complete"  # failed once, then succeeded
    assert by_name["dlib__lfw"]["status"] == "failed"
    assert "nowhere/lfw does not exist" in by_name["dlib__lfw"]["error"]  # the second attempt's real error
    retries = [line for line in lines if "retrying" in line]
    assert len(retries) == 2 and all("flaky worker" in line for line in retries)  # one retry per cell, no more
    assert len(stored(open_run("dlib", "demo", out=tmp_path / "results", limit=6).store.db_path)) == 6
    # The failed cell has the page the local executor writes for a failed cell.
    page = nbformat.read(tmp_path / "book" / "runs" / "dlib__lfw.ipynb", as_version=4)
    assert page.metadata.papermill.exception is True and page.cells[0].source == "# dlib on lfw"
    assert "Scoring failed" in page.cells[1].source and "DatasetError" in page.cells[2].source
    results = collect(grid).set_index("cell")
    assert results.loc["dlib__lfw", "status"] == "failed"
    assert results.loc["dlib__demo", "status"] == "complete" and results.loc["dlib__demo", "n_pairs"] == 6


def test_model_no_node_can_run_is_recorded_as_not_available(ray_cluster, tmp_path, monkeypatch):
    from facebench import models

    entry = {**models.registry_entries()["dlib"], "resources": {"gpus": 1}}
    monkeypatch.setattr(models, "registry_entries", lambda: {"dlib": entry})
    status = run_grid(ray_project(tmp_path), executor=executor(), log=lambda *_: None)
    assert status["cells"][0]["status"] == "not available"
    assert "needs 1 CPU(s) and 1 GPU(s)" in status["cells"][0]["error"]


def test_a_task_waiting_on_the_store_keeps_its_cpus(ray_cluster, tmp_path, monkeypatch):
    """Ray lends a task's CPUs to the next task while the task waits in ``ray.get``; a task waiting on the
    store server must not, or a node with room for one task of a model runs two (both shards at once here)."""
    from facebench import models
    from facebench.executors import Job

    entry = {**models.registry_entries()["dlib"], "resources": {"cpus": 2}}  # all the node has: one at a time
    monkeypatch.setattr(models, "registry_entries", lambda: {"dlib": entry})
    spans = tmp_path / "spans"
    spans.mkdir()

    def timed(parameters, shard, store_dir, server):
        start = time.time()  # wall clock: the two tasks run in two processes
        try:
            return score_task(parameters, shard, store_dir, server)
        finally:
            (spans / str(shard[0])).write_text(f"{start} {time.time()}")

    # Batches of 1: every task waits on the server several times, before, while and after scoring.
    parameters = {"model": "dlib", "dataset": "demo", "limit": 4, "batch_size": 1, "out": str(tmp_path / "results")}
    runner = executor(task=timed)
    with runner.session():
        failures = runner.score([Job(0, "[1/1] dlib__demo", "dlib__demo", parameters, shards=2)],
                                log=lambda *_: None)
    assert not failures, failures
    (first_start, first_end), (second_start, _) = sorted(
        tuple(map(float, p.read_text().split())) for p in spans.iterdir())
    assert first_end <= second_start, (f"the two 2-CPU tasks overlapped {first_end - second_start:.2f} s "
                                       "on a 2-CPU node")
    run = open_run("dlib", "demo", out=tmp_path / "results", limit=4)
    assert len(stored(run.store.db_path)) == 4  # the shards merged: every pair stored


def test_ctrl_c_cancels_the_running_tasks_and_records_the_status(ray_cluster, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()

    def slow(parameters, shard, store_dir, server):
        (markers / f"started-{shard[0]}").touch()
        time.sleep(60)
        (markers / f"finished-{shard[0]}").touch()

    def interrupt_once_running(line):
        # Ctrl-C when both tasks run (the driver is waiting on them).
        if "submitted" in line:
            deadline = time.monotonic() + 60
            while len(list(markers.glob("started-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            raise KeyboardInterrupt

    grid = ray_project(tmp_path, shards=2)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, executor=executor(task=slow), log=interrupt_once_running)
    assert len(list(markers.glob("started-*"))) == 2
    recorded = json.loads((tmp_path / "book" / "runs" / STATUS_FILE).read_text())
    assert recorded["cells"][0]["status"] == "interrupted" and "interrupted" in recorded
    # The cancelled tasks gave their CPUs back long before their 60 s were up, and never finished.
    deadline = time.monotonic() + 20
    while ray_cluster.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_cluster.available_resources().get("CPU", 0) == 2
    assert not list(markers.glob("finished-*"))
    assert ray_cluster.is_initialized()  # a session the grid did not start, it leaves open


def test_availability_is_decided_on_the_node_that_would_run_the_task(ray_cluster, tmp_path):
    """The driver only warns; a node that cannot run the model says so, named, and with no other node
    to try, the cell is not available (a node-bound error is never retried on the same node)."""
    import socket

    lines = []
    status = run_grid(ray_project(tmp_path, models=["arcface-r50"]), executor=executor(), log=lines.append)
    assert any("not available on this machine" in line and "nodes decide" in line for line in lines)
    cell = status["cells"][0]
    assert cell["status"] == "not available"
    assert f"on node {socket.gethostname()}" in cell["error"] and "w600k_r50.onnx" in cell["error"]
    assert not any("retrying" in line for line in lines)


def test_a_task_that_fails_because_of_its_node_runs_on_another_node(ray_cluster, tmp_path, open_models):
    """Two nodes on this machine: the session's, and one more raylet joining it on 127.0.0.1 whose
    FACEBENCH_MODELS is an empty folder, so it has no sface. A task sent there fails naming that node,
    and the driver sends it to the session's node, where it scores."""
    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group, remove_placement_group

    from facebench.executors import Job

    no_models = tmp_path / "no-models"
    no_models.mkdir()
    # One Ray per process, and this module's is running: a Cluster started empty adopts its node as
    # the head, and adds the second node to it.
    cluster = Cluster()
    cluster.head_node = ray._private.worker._global_node
    added = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars={"FACEBENCH_MODELS": str(no_models)})
    # Both CPUs of the session's node (the only one with 2) reserved, so the task goes to the added node first.
    full = placement_group([{"CPU": 2}])
    lines = []

    def log(line):
        lines.append(line)
        if "retrying on node" in line:
            remove_placement_group(full)  # room for the retry

    try:
        assert full.wait(60), "the placement group of the session node's 2 CPUs was not placed in 60 s"
        head = ray.get_runtime_context().get_node_id()
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
        (other,) = set(nodes) - {head}
        assert {n["NodeManagerAddress"] for n in nodes.values()} == {"127.0.0.1"}
        parameters = {"model": "sface", "dataset": "demo", "limit": 2, "out": str(tmp_path / "results")}
        runner = executor()
        with runner.session():
            failures = runner.score([Job(0, "[1/1] sface__demo", "sface__demo", parameters)], log=log)
        listening, raylet = listening_addresses(), added.all_processes["raylet"][0].process.pid
    finally:
        if not any("retrying on node" in line for line in lines):
            remove_placement_group(full)
        cluster.remove_node(added)
    assert not failures, failures
    (retry,) = [line for line in lines if "retrying" in line]
    failed_on, retried_on = retry.split("; retrying on node ")
    assert f"({other[:8]}): cannot run sface" in failed_on and f"under {no_models}/" in failed_on
    assert retried_on.endswith(f"({head[:8]})")
    assert "2 pairs stored" in lines[-1]
    run = open_run("sface", "demo", out=tmp_path / "results", limit=2)
    assert run.store.read_manifest()["status"] == "partial (2 of 54 pairs)" and len(stored(run.store.db_path)) == 2
    assert raylet in {pid for _, _, pid in listening}
    assert all(ip in LOOPBACK for _, ip, _ in listening), listening  # the added node's processes too
