"""Where a grid's cells are scored: here, one after another, or as tasks on a Ray cluster.

:func:`facebench.grid.run_grid` decides which cells to score, then hands them
to an executor's ``score(jobs, log=...)``, which returns the cells that failed
(job index → (error, traceback text)). Both executors run the same
:func:`score_task`; neither renders anything, so a cell's page is the same
whichever scored it.

``local`` (:class:`LocalExecutor`)
    Scores the cells one after another in this process, with progress bars.
``ray`` (:class:`RayExecutor`)
    One task per (model, dataset) cell, or per shard of it, asking for the
    CPUs and GPUs of the model's ``resources`` (:func:`task_resources`). Each
    task sends every finished batch of rows to a :class:`StoreServer` actor on
    the driver's machine, which writes them into the driver's results store:
    workers need the datasets but no shared file system, and a finished batch
    is never lost. A task holds its CPUs and GPUs until it ends, its waits on
    that actor included (:class:`RemoteStore`), so a node runs no more tasks
    than its resources allow. When a sharded cell's tasks are all done, the
    driver merges its shards (scoring nothing). A failed task is retried
    once (resuming from the store), then its cell counts as failed. Ctrl-C
    cancels every outstanding task.

Ray is imported only when a Ray session starts.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from facebench.registry import Registry
from facebench.store import RunStore

EXECUTORS: Registry[type] = Registry("executor")
RETRIES = 1  # a failed task runs once more (resuming from the store) before its cell counts as failed
CANCEL_WAIT_S = 10  # how long Ctrl-C waits for cancelled tasks to stop before the driver goes on
# Ray puts unix sockets at <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, about 65
# characters below its temp dir, and Linux allows 107 in a socket path (sun_path), so the dir gets 40.
MAX_RAY_TEMP_DIR = 40
# Backends whose models want a GPU when the cluster has one: the MLLMs run through transformers.
GPU_BACKENDS = frozenset({"hf"})


@dataclass
class Job:
    """One grid cell to run: its log label, name, notebook parameters and number of shards."""

    index: int
    label: str  # "[i/n] model__dataset", for log lines
    name: str
    parameters: dict
    shards: int = 1
    started: float = field(default_factory=time.perf_counter)  # reset when the executor starts the job


@EXECUTORS.register("local")
class LocalExecutor:
    """Each cell scored in this process, one after another."""

    name = "local"
    remote = False  # scores where the grid runs: the grid's own availability check is the one that counts

    def __init__(self, address: str | None = None, **_):
        if address:
            raise ValueError(f"--address {address}: the local executor runs here; use --executor ray for a cluster")

    @contextmanager
    def session(self):
        yield self

    def unavailable(self, model: str) -> str | None:
        return None

    def score(self, jobs: list[Job], *, log: Callable) -> dict[int, tuple[BaseException, str]]:
        failures = {}
        for job in jobs:
            job.started = time.perf_counter()
            log(f"{job.label}: scoring")
            try:
                done = score_task(scoring_parameters(job.parameters, keep_out=True))
                log(f"{job.label}: {done['pairs']} pairs stored ({done['seconds']} s)")
            except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the grid
                failures[job.index] = (exc, traceback.format_exc())
        return failures


@EXECUTORS.register("ray")
class RayExecutor:
    """Cells scored as Ray tasks (see the module docstring).

    Parameters
    ----------
    address : str, optional
        A running cluster's address (``HEAD:6379``, or ``auto`` for the one
        ``ray start`` runs on this machine); None starts a local Ray on
        127.0.0.1 for the duration of the grid (:func:`ray_session`). A Ray
        session already open in this process is used as it is.
    num_cpus : int, optional
        CPUs of a local Ray (default: all).
    temp_dir : path, optional
        Where a local Ray keeps its sockets and logs (the grid passes
        ``<output_dir>/.ray``); a path too long for a unix socket is replaced by
        a folder under /tmp, removed afterwards.
    log_to_driver : bool
        Show the workers' output here.
    task : callable, optional
        The function a task runs, :func:`score_task` by default (tests swap it).
    """

    name = "ray"
    remote = True  # a model's availability is decided on the node that runs its task (NodeError)

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, temp_dir=None,
                 log_to_driver: bool = True, task: Callable | None = None):
        self.address, self.num_cpus, self.temp_dir = address, num_cpus, temp_dir
        self.log_to_driver, self.task = log_to_driver, task or score_task
        self._nodes: list[dict] = []  # ray.nodes() entries of the alive nodes when the session began

    @contextmanager
    def session(self):
        with ray_session(self.address, num_cpus=self.num_cpus, temp_dir=self.temp_dir,
                         log_to_driver=self.log_to_driver) as ray:
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            yield self

    def resources(self, model: str) -> dict:
        from facebench.models import resolve

        gpus = sum(n["Resources"].get("GPU", 0) for n in self._nodes)
        return task_resources(resolve(model), cluster_gpus=gpus)

    def unavailable(self, model: str) -> str | None:
        """Why no node of the cluster, as it was when the session began, can take a task of ``model``, or None."""
        return infeasible(self.resources(model), [n["Resources"] for n in self._nodes])

    def score(self, jobs: list[Job], *, log: Callable) -> dict[int, tuple[BaseException, str]]:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from facebench.scoring import evaluate, run_store

        # The writer sits on this machine, next to the results folder; with 0 CPUs it never holds back a task.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        server = ray.remote(StoreServer).options(num_cpus=0, scheduling_strategy=here).remote()
        task = ray.remote(self.task)
        running: dict = {}  # ObjectRef → (job, shard, attempt, store folder)
        refused: dict[tuple, dict[str, NodeError]] = {}  # (job index, shard) → node id → why that node failed
        left: dict[int, int] = {}  # job index → tasks not finished
        errors: dict[int, tuple] = {}  # job index → (error, traceback) of its first task that failed for good
        sharded: dict[int, Job] = {}

        def submit(job, shard, attempt, store_dir, node=None):
            res = self.resources(job.parameters["model"])
            where = {} if node is None else {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}
            ref = task.options(num_cpus=res["cpus"], num_gpus=res["gpus"], max_retries=0,
                               name=f"{job.name}{_shard_label(shard)}", **where).remote(
                scoring_parameters(job.parameters), shard, store_dir, server)
            running[ref] = (job, shard, attempt, store_dir)

        try:
            for job in jobs:
                job.started = time.perf_counter()
                p = job.parameters
                try:
                    store_dir = str(run_store(p["model"], p["dataset"], out=p.get("out"),
                                              settings=p.get("settings")).dir)
                    res = self.resources(p["model"])
                except Exception as exc:  # noqa: BLE001 - a bad cell fails alone, as with the local executor
                    errors[job.index] = (exc, traceback.format_exc())
                    continue
                if job.shards > 1:
                    sharded[job.index] = job
                shards = [None] if job.shards == 1 else [(k, job.shards) for k in range(job.shards)]
                left[job.index] = len(shards)
                for shard in shards:
                    submit(job, shard, 1, store_dir)
                log(f"{job.label}: submitted {len(shards)} Ray task(s), {res['cpus']} CPU and {res['gpus']} GPU each")
            while running:
                # A timeout, so that Ctrl-C is seen between waits.
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                if not ready:
                    continue
                job, shard, attempt, store_dir = running.pop(ready[0])
                try:
                    done = ray.get(ready[0])
                    log(f"{job.label}{_shard_label(shard)}: {done['pairs']} pairs stored ({done['seconds']} s)")
                except Exception as exc:  # noqa: BLE001 - task errors and lost workers alike
                    error, trace = unwrap_error(exc)
                    if isinstance(error, NodeError):
                        # That node cannot run it (no weights, no dataset, other settings): another one may.
                        failed_on = refused.setdefault((job.index, shard), {})
                        failed_on[error.node_id] = error
                        other = pick_node(self._nodes, self.resources(job.parameters["model"]), exclude=failed_on)
                        if other is not None:
                            # The id too: nodes of one machine, or of cloned images, share a host name.
                            log(f"{job.label}{_shard_label(shard)}: {error}; retrying on node "
                                f"{other['NodeManagerHostname']} ({other['NodeID'][:8]})")
                            submit(job, shard, attempt, store_dir, node=other["NodeID"])
                            continue
                        error = NodeError.every_node(failed_on.values())
                    elif attempt <= RETRIES:
                        log(f"{job.label}{_shard_label(shard)}: {type(error).__name__}: {_first_line(error)}; "
                            f"retrying (attempt {attempt + 1} of {RETRIES + 1})")
                        submit(job, shard, attempt + 1, store_dir)
                        continue
                    errors.setdefault(job.index, (error, trace))
                left[job.index] -= 1
                if not left[job.index] and job.index in sharded and job.index not in errors:
                    try:  # the shards into the run, scoring nothing, so the run reads as one
                        evaluate(**scoring_parameters(job.parameters, keep_out=True), score=False)
                    except Exception as exc:  # noqa: BLE001
                        errors[job.index] = (exc, traceback.format_exc())
        except KeyboardInterrupt:
            refs = list(running)
            log(f"interrupted: cancelling {len(refs)} Ray task(s); their finished batches are stored")
            for ref in refs:
                # force: a running task stops now, not when its model call returns; the batch it was
                # scoring is lost, every batch before it is already in the store.
                ray.cancel(ref, force=True)
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=CANCEL_WAIT_S)
            raise
        finally:
            ray.kill(server)
        return errors


def make_executor(name: str, **options):
    """The executor registered as ``name`` (``local`` or ``ray``), built with ``options``."""
    return EXECUTORS.get(name)(**options)


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, temp_dir=None,
                log_to_driver: bool = True):
    """Ray for the duration of the block: the cluster at ``address``, or a local one.

    A local Ray listens on 127.0.0.1 only (by default it binds the machine's
    address on every interface; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set
    here before Ray is imported, keeps it on loopback), sends no usage
    statistics (``RAY_USAGE_STATS_ENABLED=0``), has no dashboard, and keeps its
    files in ``temp_dir`` (see :class:`RayExecutor`). On the way out, Ctrl-C
    included, a local Ray this function started is shut down and a connection
    it opened to a cluster is closed (the cluster keeps running); a session
    already open in this process is used and left open. Yields the ``ray`` module.
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        yield sys.modules["ray"]
        return
    if address and address.startswith("ray://"):
        raise ValueError(f"--address {address}: Ray Client addresses are not supported, since results are written "
                         "on the driver's machine; run facebench on a node of the cluster with --address HEAD:6379")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    remove = None
    if address is None:
        from ray._private import ray_constants

        if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
            raise RuntimeError("a local Ray would listen on every network interface: ray was imported before "
                               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set (or it is set to 1)")
        tmp, remove = ray_temp_dir(temp_dir)
        ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(tmp), log_to_driver=log_to_driver)
    else:
        try:
            ray.init(address=address, log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError) as exc:
            raise RuntimeError(
                f"--address {address}: cannot join the Ray cluster ({_first_line(exc)}). Check that the head runs "
                "(`ray status` there), that this machine reaches it, that its Ray is the same version "
                f"({ray.__version__} here), and, where the head uses token auth, that RAY_AUTH_MODE=token and the "
                "head's ~/.ray/auth_token are set here too (README: 'Running the full study on a cluster')"
            ) from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if remove:
            import shutil

            shutil.rmtree(remove, ignore_errors=True)


def ray_temp_dir(preferred=None) -> tuple[Path, Path | None]:
    """A temp dir for a local Ray short enough for its unix sockets, and the folder to remove afterwards.

    >>> path, remove = ray_temp_dir("/" + "long-folder-name/" * 4 + ".ray")
    >>> len(str(path)) <= MAX_RAY_TEMP_DIR, path == remove
    (True, True)
    >>> path.rmdir()
    """
    if preferred is not None and len(str(Path(preferred).absolute())) <= MAX_RAY_TEMP_DIR:
        path = Path(preferred).absolute()
        path.mkdir(parents=True, exist_ok=True)
        return path, None
    base = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
    path = Path(tempfile.mkdtemp(prefix="fbray-", dir=base))
    if len(str(path)) > MAX_RAY_TEMP_DIR:
        path.rmdir()
        raise RuntimeError(f"no temp dir for Ray shorter than {MAX_RAY_TEMP_DIR} characters (tried {path})")
    return path, path


def task_resources(spec, *, cluster_gpus: float) -> dict:
    """The CPUs and GPUs one task of the model ``spec`` asks Ray for.

    A registry entry's ``resources: {gpus: N, cpus: N}`` (facebench/models.yaml;
    fractions share a GPU) where given; otherwise 1 CPU, and 1 GPU for an
    ``hf`` backend model when the cluster has any GPU, else none (a CPU-only
    cluster runs every model on CPUs).

    >>> from facebench.models import ModelSpec
    >>> task_resources(ModelSpec("hf:org/model", "hf"), cluster_gpus=8)
    {'cpus': 1, 'gpus': 1}
    >>> task_resources(ModelSpec("hf:org/model", "hf"), cluster_gpus=0)
    {'cpus': 1, 'gpus': 0}
    >>> task_resources(ModelSpec("big", "hf", entry={"resources": {"gpus": 2, "cpus": 8}}), cluster_gpus=8)
    {'cpus': 8, 'gpus': 2}
    """
    wanted = dict(spec.entry.get("resources") or {})
    unknown = sorted(set(wanted) - {"cpus", "gpus"})
    if unknown:
        raise ValueError(f"facebench/models.yaml, model {spec.spec!r}: unknown resources {unknown}; "
                         "the keys are gpus and cpus")
    res = {"cpus": wanted.get("cpus", 1),
           "gpus": wanted.get("gpus", 1 if spec.backend in GPU_BACKENDS and cluster_gpus > 0 else 0)}
    for key, value in res.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"facebench/models.yaml, model {spec.spec!r}: resources.{key} must be a number "
                             f">= 0, got {value!r}")
    return res


def infeasible(res: dict, nodes: list[dict]) -> str | None:
    """Why no node (its Ray resources, e.g. ``{"CPU": 16, "GPU": 2}``) can run a task needing ``res``, or None.

    >>> infeasible({"cpus": 1, "gpus": 1}, [{"CPU": 8}, {"CPU": 4, "GPU": 1}]) is None
    True
    >>> infeasible({"cpus": 1, "gpus": 2}, [{"CPU": 4, "GPU": 1}])
    'a task needs 1 CPU(s) and 2 GPU(s) on one node; the Ray cluster has no such node (its largest: 4 CPUs, 1 GPUs)'
    """
    if any(n.get("CPU", 0) >= res["cpus"] and n.get("GPU", 0) >= res["gpus"] for n in nodes):
        return None
    cpus, gpus = (max((n.get(k, 0) for n in nodes), default=0) for k in ("CPU", "GPU"))
    return (f"a task needs {res['cpus']} CPU(s) and {res['gpus']} GPU(s) on one node; the Ray cluster has no "
            f"such node (its largest: {cpus:g} CPUs, {gpus:g} GPUs)")


SCORING_KEYS = ("model", "dataset", "root", "limit", "batch_size", "settings", "out")


def scoring_parameters(parameters: dict, *, keep_out: bool = False) -> dict:
    """A cell's parameters that :func:`facebench.evaluate` takes; ``out`` only with ``keep_out``
    (a Ray task reaches the driver's results folder through the :class:`StoreServer`)."""
    return {k: v for k, v in parameters.items() if k in SCORING_KEYS and (keep_out or k != "out")}


def score_task(parameters: dict, shard: tuple[int, int] | None = None, store_dir: str | None = None,
               server=None) -> dict:
    """What scoring one cell (or one shard of it) runs, here or in a Ray task.

    With ``server``, rows and manifests go through it into the store at
    ``store_dir`` on the driver's machine, and no progress bar is drawn (it
    would flood the driver's console); it resumes from what that store holds.
    """
    from facebench.datasets import DatasetError
    from facebench.scoring import RunError, evaluate

    t0 = time.perf_counter()
    if server is None:
        run = evaluate(**parameters, shard=shard)
    else:
        from facebench.grid import unavailable_reason

        node, host = _this_node()
        why = unavailable_reason(parameters["model"])  # decided here, where the model would run
        if why:
            raise NodeError(node, host, f"cannot run {parameters['model']}: {why}", True)
        try:
            run = evaluate(**parameters, shard=shard, store=RemoteStore(server, store_dir), progress=False)
        except (DatasetError, RunError, OSError) as exc:  # this node's data, settings or files
            raise NodeError(node, host, f"{type(exc).__name__}: {exc}") from exc
    return {"pairs": len(run.dataset.pairs), "seconds": round(time.perf_counter() - t0, 2)}


class StoreServer:
    """The results store, served to workers by a Ray actor on the driver's machine.

    One actor handles one call at a time, so the driver's SQLite files have a
    single writer however many workers report at once.
    """

    METHODS = frozenset({"done_ids", "write", "rows", "read_manifest", "write_manifest", "merge_shards",
                         "check_dataset"})

    def call(self, directory: str, shard: tuple[int, int] | None, method: str, *args):
        if method not in self.METHODS:
            raise ValueError(f"StoreServer: {method!r} is not a store method it serves")
        store = RunStore(directory)
        return getattr(store.shard(*shard) if shard else store, method)(*args)


class RemoteStore:
    """A :class:`~facebench.store.RunStore` (or shard) on the driver's machine, used from a worker.

    It has the methods :func:`facebench.evaluate` calls; each runs on the
    :class:`StoreServer` and returns once done, so a batch a worker has written
    is stored before it scores the next.

    The task keeps its CPUs meanwhile: Ray hands a task's CPUs to the next
    task while the task's main thread waits in ``ray.get``, and the task then
    runs on alongside that one (two models on a node sized for one). Only a
    wait on the main thread gives them up
    (``WorkerContext::ShouldReleaseResourcesOnBlockingCalls`` in Ray's core
    worker), so :func:`_wait` waits on another thread. Holding them cannot
    deadlock: the server asks for no CPU.
    """

    def __init__(self, server, directory, shard: tuple[int, int] | None = None):
        self.server, self.dir, self._shard = server, Path(directory), shard

    def shard(self, index: int, count: int) -> "RemoteStore":
        return RemoteStore(self.server, self.dir, (index, count))

    @property
    def parent(self) -> "RemoteStore":
        return RemoteStore(self.server, self.dir)

    def _call(self, method: str, *args):
        return _wait(self.server.call.remote(str(self.dir), self._shard, method, *args))

    def done_ids(self) -> set[int]:
        return self._call("done_ids")

    def write(self, rows: list[dict], dataset_checksum: str | None = None) -> None:
        self._call("write", rows, dataset_checksum)

    def rows(self):
        return self._call("rows")

    def read_manifest(self) -> dict:
        return self._call("read_manifest")

    def write_manifest(self, doc: dict) -> None:
        self._call("write_manifest", doc)

    def merge_shards(self, dataset_checksum: str | None = None) -> dict[str, dict]:
        return self._call("merge_shards", dataset_checksum)

    def check_dataset(self, checksum: str) -> None:
        self._call("check_dataset", checksum)


_waiter = None  # this worker process's thread for waiting on the StoreServer (see RemoteStore)


def _wait(ref):
    """``ray.get(ref)`` without giving up the calling task's CPUs (see :class:`RemoteStore`)."""
    global _waiter
    import ray

    if _waiter is None:
        from concurrent.futures import ThreadPoolExecutor

        _waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facebench-store-wait")
    return _waiter.submit(ray.get, ref).result()


def pick_node(nodes: list[dict], res: dict, *, exclude) -> dict | None:
    """The first of ``nodes`` (``ray.nodes()`` entries) not in ``exclude`` (node ids) with the CPUs and
    GPUs a task needing ``res`` asks for, or None.

    >>> nodes = [{"NodeID": "a", "Resources": {"CPU": 8, "GPU": 1}}, {"NodeID": "b", "Resources": {"CPU": 8}}]
    >>> pick_node(nodes, {"cpus": 1, "gpus": 0}, exclude={"a"})["NodeID"]
    'b'
    >>> pick_node(nodes, {"cpus": 1, "gpus": 1}, exclude={"a"}) is None
    True
    """
    return next((n for n in nodes if n["NodeID"] not in exclude
                 and infeasible(res, [n["Resources"]]) is None), None)


class NodeError(RuntimeError):
    """A task that failed because of the node it ran on: the node cannot run the model (``unavailable``),
    lacks the dataset, or has other settings. The executor retries it on another node."""

    def __init__(self, node_id: str, host: str, message: str, unavailable: bool = False):
        super().__init__(node_id, host, message, unavailable)  # all in args, so Ray can pickle it
        self.node_id, self.host, self.message, self.unavailable = node_id, host, message, unavailable

    def __str__(self) -> str:
        return f"on node {self.host} ({self.node_id[:8]}): {self.message}"

    @classmethod
    def every_node(cls, errors) -> "NodeError":
        """One error for a task no node could run; ``unavailable`` when no node could run its model."""
        errors = list(errors)
        text = "; ".join(str(e) for e in errors)
        return cls(errors[-1].node_id, errors[-1].host, f"no node could run it: {text}" if len(errors) > 1
                   else errors[-1].message, all(e.unavailable for e in errors))


def _this_node() -> tuple[str, str]:
    import socket

    import ray

    return ray.get_runtime_context().get_node_id(), socket.gethostname()


def unwrap_error(exc: BaseException) -> tuple[BaseException, str]:
    """The error a task raised (not Ray's wrapper) and the text of its remote traceback."""
    cause = getattr(exc, "cause", None)
    return (cause if isinstance(cause, BaseException) else exc), str(exc)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def _shard_label(shard) -> str:
    return f" shard {shard[0]}/{shard[1]}" if shard else ""
