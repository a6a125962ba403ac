"""Score a dataset's pairs with a model, resumably, and read the results back."""
from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from functools import cached_property

import numpy as np
import pandas as pd
from PIL import Image

from facebench import models
from facebench.datasets import Dataset, DatasetError, load_dataset
from facebench.extraction import answer_text, is_refusal
from facebench.integrity import preflight
from facebench.metrics import verification_report
from facebench.paths import DEFAULT_RESULTS_DIR
from facebench.progress import progress as progress_bar
from facebench.provenance import git_state, now, redact, versions
from facebench.store import RunStore, ShardStore


class RunError(RuntimeError):
    """A run that cannot start or continue as asked; the message says why."""


@dataclass
class Run:
    """One model on one dataset: the pairs, the stored results and their manifest."""

    model: str
    dataset: Dataset  # the pairs this run covers (a subset with --limit)
    store: RunStore
    full_dataset: Dataset
    spec: models.ModelSpec | None = None  # the model with its settings, as resolved

    @property
    def manifest(self) -> dict:
        return self.store.read_manifest()

    @cached_property
    def table(self) -> pd.DataFrame:
        """The dataset's pairs joined with their stored results (NaN where not run);
        ``stored`` is True for the pairs the store holds a row for (a result or an error)."""
        rows = self.store.rows().assign(stored=True)
        table = self.dataset.pairs.merge(rows, on="pair_id", how="left")
        return table.assign(stored=table["stored"].eq(True))

    def metrics(self) -> dict:
        """:func:`~facebench.metrics.verification_report` on this run's pairs, plus who and what."""
        # Pairs not attempted yet are left out; pairs that failed count as not acquired.
        t = self.table[self.table["stored"]]
        decides = t["decision"].notna().any()
        decisions = t["decision"].to_numpy(float) if decides else None
        report = verification_report(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy(),
                                     decisions=decisions)
        if t["raw_output"].fillna("").str.contains('"score_from": "decision"', regex=False).any():
            report["flags"].append("the server returned no log-probs, so scores are the model's yes/no "
                                   "decisions: ROC, EER and k-fold accuracy rest on hard decisions")
        answers = t["raw_output"].map(answer_text)
        if decides and answers.notna().any():  # MLLM answers: refusals apart from other invalid answers
            refused = int((t["decision"].eq(-1) & answers.map(is_refusal)).sum())
            report |= {"n_refusals": refused, "refusal_rate": refused / len(t)}
        return {"dataset": self.dataset.name, "model": self.model, **report,
                "n_errors": int(t["error"].notna().sum()), "complete": 0 < len(t) == len(self.table),
                "run_dir": str(self.store.dir)}


def run_identity(spec: models.ModelSpec, extra: dict | None = None) -> dict:
    """What makes two runs the same run: the model and every setting that changes scores."""
    return {"model": spec.spec, "backend": spec.backend, **redact(spec.identity()), **(extra or {})}


def run_store(model: str, dataset: str, *, out=None, settings: dict | None = None) -> RunStore:
    """The store of ``model`` on the dataset named ``dataset`` in ``out``, without loading the dataset."""
    spec = models.resolve(model, settings)
    return RunStore.for_run(out or DEFAULT_RESULTS_DIR, spec.spec, dataset, run_identity(spec))


def parse_shard(text: str) -> tuple[int, int]:
    """``"k/N"`` (as ``facebench evaluate --shard`` takes it) → ``(k, N)``, with 0 ≤ k < N.

    >>> parse_shard("1/4")
    (1, 4)
    """
    k, sep, n = str(text).partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(k) < int(n):
        raise ValueError(f"shard {text!r}: expected k/N with 0 <= k < N, e.g. 0/4 to 3/4 for four shards")
    return int(k), int(n)


def shard_pairs(ds: Dataset, shard: tuple[int, int]) -> Dataset:
    """Shard ``k`` of ``n`` of ``ds``: the pairs with ``pair_id % n == k``.

    By pair id, not by position or a hash, so every process, machine and
    ``--limit`` agrees on it, and shards of a run never overlap. Pairs are in
    protocol order, fold after fold, so each shard gets an even share of every
    fold and of the work.

    >>> import pandas as pd
    >>> from facebench.datasets import ImageSource
    >>> pairs = pd.DataFrame({"pair_id": range(6), "fold": 0, "image_a": "a", "image_b": "b", "same": True})
    >>> shard_pairs(Dataset("toy", pairs, ImageSource(bytes, str)), (1, 4)).pairs["pair_id"].tolist()
    [1, 5]
    """
    k, n = shard
    if not 0 <= k < n:
        raise ValueError(f"shard {k} of {n}: the index must be 0 to {n - 1}")
    keep = ds.pairs[ds.pairs["pair_id"] % n == k].reset_index(drop=True)
    return replace(ds, pairs=keep, info={**ds.info, "shard": f"{k}/{n}"})


def open_run(model: str, dataset: str | Dataset, *, root=None, limit: int | None = None, out=None,
             settings: dict | None = None, shard: tuple[int, int] | None = None, store=None) -> Run:
    """The :class:`Run` of ``model`` on ``dataset`` as stored in ``out``, without scoring anything.

    ``settings`` override the model's (see :func:`facebench.models.resolve`); a
    changed setting is another run, in its own folder. ``shard=(k, n)`` is the
    run's shard ``k`` of ``n`` (:func:`shard_pairs`, stored in a
    :class:`~facebench.store.ShardStore`). ``store`` stands in for the run's
    folder under ``out`` (the Ray executor passes the driver's store); it must
    be the same run, i.e. end in the same model/dataset/settings-hash folders.
    """
    spec = models.resolve(model, settings)
    full = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, root)
    own = RunStore.for_run(out or DEFAULT_RESULTS_DIR, spec.spec, full.name, run_identity(spec))
    if store is None:
        store = own
    elif Path(store.dir).parts[-3:] != own.dir.parts[-3:]:
        raise RunError(f"this process would store {model} on {full.name} in .../{'/'.join(own.dir.parts[-3:])}, "
                       f"but was handed {store.dir}: the settings differ (are models.yaml and the installed "
                       "packages the same on every machine?)")
    ds = full.subset(limit)
    if shard is not None:
        ds, store = shard_pairs(ds, shard), store.shard(*shard)
    return Run(spec.spec, ds, store, full, spec)


def run_manifest(run: Run) -> dict:
    """The manifest fields every way of making a run records (scoring, merging, importing):
    who and what (the run's identity and runtime settings) and on which data."""
    spec, full, previous = run.spec or models.resolve(run.model), run.full_dataset, run.store.read_manifest()
    return {**run_identity(spec), "runtime_settings": redact(spec.runtime_settings()),
            "settings_hash": run.store.dir.name, "dataset": full.name, "dataset_checksum": full.checksum,
            "dataset_pairs": len(full.pairs), "dataset_info": _jsonable(full.info),
            "created": previous.get("created", now())}


def check_dataset_identity(run: Run) -> None:
    """Refuse a run whose stored results were made on other data than its dataset now holds:
    by the checksum its manifests record and the one its results files record (which every write
    checks again, see :meth:`~facebench.store.RunStore.write`)."""
    stores = [run.store] + ([run.store.parent] if isinstance(run.store, ShardStore) or run.dataset.info.get("shard")
                            else [])
    for store in stores:
        store.check_dataset(run.full_dataset.checksum)
    for doc in (store.read_manifest() for store in stores):
        if doc and doc.get("dataset_checksum") != run.full_dataset.checksum:
            raise RunError(
                f"{run.store.dir} holds results for {run.full_dataset.name} with checksum "
                f"{doc.get('dataset_checksum')}, but the dataset now has checksum {run.full_dataset.checksum}: "
                "the pairs or images changed. Use another --out, or move that folder away to start over."
            )


def evaluate(model: str, dataset: str | Dataset, *, root=None, limit: int | None = None, batch_size: int = 16,
             out=None, settings: dict | None = None, shard: tuple[int, int] | None = None, score: bool = True,
             store=None, verifier: models.Verifier | None = None, progress: bool = True) -> Run:
    """Score every pending pair of ``dataset`` with ``model`` and return the :class:`Run`.

    Finished pairs in ``out`` are kept and skipped, so an interrupted run picks
    up where it stopped. ``limit`` scores a subset balanced over folds and labels.

    ``shard=(k, n)`` scores only the pairs with ``pair_id % n == k``
    (:func:`shard_pairs`) into ``<run>/shards/k-of-n.sqlite``, under the same
    run folder (the shard is not a setting), so ``n`` processes or machines can
    share a run. A call without ``shard`` first merges every shard file of the
    run into its ``pairs.sqlite`` (:meth:`~facebench.store.RunStore.merge_shards`)
    and records the shards under ``sharded`` in the manifest; the merged rows
    are the rows an unsharded run stores, pair for pair.

    ``score=False`` scores nothing (``facebench merge``): the run is merged and
    reported as stored, and no model is loaded. ``store`` is for executors: see
    :func:`open_run`. ``progress=False`` draws no progress bar. The manifest is
    rewritten, and its ``updated`` time moves, only when something changed, so
    a finished run stays as it was and its pages stay fresh (see
    :mod:`facebench.grid`).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    run = open_run(model, preflight(dataset, root), root=root, limit=limit, out=out, settings=settings, shard=shard,
                   store=store)
    check_dataset_identity(run)
    full, store = run.full_dataset, run.store
    previous = store.read_manifest()
    merged = {} if shard else store.merge_shards(full.checksum)
    pending = run.dataset.pairs[~run.dataset.pairs["pair_id"].isin(store.done_ids())]
    manifest = {**_shared_fields(merged), **previous, **run_manifest(run)}
    target = full.pairs if shard is None else shard_pairs(full, shard).pairs
    if shard:
        manifest["shard"] = {"index": shard[0], "count": shard[1], "pairs": len(target), "host": socket.gethostname()}
    if len(pending) and score:
        verifier = verifier or run.spec.load()
        manifest.update(verifier.info())
        # Versions and commit are those of the process that scored.
        # The status is what the rows say, never "running": a process killed now leaves nothing stale.
        done = len(store.done_ids() & set(target["pair_id"]))
        manifest.update(versions=versions(), git=git_state(), status=status_of(done, len(target)), updated=now())
        store.write_manifest(manifest)
        _score(verifier, run.dataset, pending, store, batch_size=batch_size, progress=progress,
               dataset_checksum=full.checksum)
    manifest.setdefault("versions", versions())
    manifest.setdefault("git", git_state())
    done = len(store.done_ids() & set(target["pair_id"]))
    manifest["status"] = status_of(done, len(target))
    if merged:
        # Per shard, what differs from the run as a whole (shard, host, status, versions, device).
        shards = {name: {k: v for k, v in doc.items() if k in ("shard", "status", "updated") or manifest.get(k) != v}
                  for name, doc in merged.items()}
        manifest["sharded"] = {**previous.get("sharded", {}), **shards}
    if {k: v for k, v in manifest.items() if k != "updated"} != {k: v for k, v in previous.items() if k != "updated"}:
        store.write_manifest({**manifest, "updated": now()})
    return run


def _shared_fields(shard_manifests: dict[str, dict]) -> dict:
    """What a merged run takes from its shards' manifests (model id, device, versions), shard details left out."""
    shared = {}
    for doc in shard_manifests.values():
        shared.update({k: v for k, v in doc.items() if k not in ("shard", "status", "created", "updated")})
    return shared


def _jsonable(info: dict) -> dict:
    return json.loads(json.dumps(info, default=str))


def status_of(done: int, wanted: int) -> str:
    """A run's status from its stored rows: ``done`` of the ``wanted`` pairs are scored.

    >>> status_of(54, 54), status_of(3, 54), status_of(0, 0)
    ('complete', 'partial (3 of 54 pairs)', 'partial (0 of 0 pairs)')
    """
    return "complete" if 0 < wanted <= done else f"partial ({done} of {wanted} pairs)"


def _score(verifier, ds: Dataset, pending: pd.DataFrame, store: RunStore, *, batch_size: int,
           progress: bool, dataset_checksum: str) -> None:
    bar = progress_bar(total=len(pending), desc=f"{ds.name}", unit="pair", **({} if progress else {"disable": True}))
    cache: dict[str, tuple[np.ndarray | None, str]] = {}  # image key → (embedding or None, note or error)
    for start in range(0, len(pending), batch_size):
        batch = pending.iloc[start:start + batch_size]
        t0 = time.perf_counter()
        if verifier.kind == "embedding":
            rows = _embedding_rows(verifier, ds, batch, cache, batch_size)
        else:
            rows = _pair_rows(verifier, ds, batch)
        seconds = (time.perf_counter() - t0) / len(batch)
        store.write([{**r, "seconds": seconds} for r in rows], dataset_checksum)
        bar.update(len(batch))
    bar.close()


def _embedding_rows(verifier, ds, batch, cache, batch_size) -> list[dict]:
    # Each unique image is embedded once per process, however many pairs use it.
    todo = [k for k in dict.fromkeys(batch[["image_a", "image_b"]].to_numpy().ravel()) if k not in cache]
    for i in range(0, len(todo), batch_size):
        keys, images, points = [], [], []
        for key in todo[i:i + batch_size]:
            try:
                image, lmk = ds.images.load(key), ds.images.landmarks(key)
            except DatasetError as exc:
                cache[key] = (None, str(exc))
                continue
            keys.append(key)
            images.append(image)
            points.append(lmk)
        if images:
            # Landmarks only where the dataset ships them (RFW, AgeDB), so an
            # embed(images) written before they existed still runs elsewhere.
            extra = {"landmarks": points} if any(p is not None for p in points) else {}
            emb, notes = verifier.embed(images, **extra)
            cache.update({k: (e, n) for k, e, n in zip(keys, emb, notes)})
    rows = []
    for pid, a, b in batch[["pair_id", "image_a", "image_b"]].itertuples(index=False):
        (ea, na), (eb, nb) = cache[a], cache[b]
        if ea is None or eb is None:
            rows.append({"pair_id": pid, "error": na if ea is None else nb})
            continue
        score = float(verifier.similarity(ea[None], eb[None])[0])
        decision = verifier.decide(np.array([score]))
        rows.append({"pair_id": pid, "score": score, "raw_output": json.dumps({"a": na, "b": nb}),
                     "decision": None if decision is None else int(decision[0])})
    return rows


def _pair_rows(verifier, ds, batch) -> list[dict]:
    # A pair with an image that cannot be read is stored with that error (it names the file); the rest are scored.
    rows, ready = {}, {}
    for pid, a, b in batch[["pair_id", "image_a", "image_b"]].itertuples(index=False):
        try:
            ready[pid] = (ds.images.load(a), ds.images.load(b))
        except DatasetError as exc:
            rows[pid] = {"pair_id": pid, "error": str(exc)}
    if ready:
        rows |= {pid: {"pair_id": pid, **out} for pid, out in zip(ready, verifier.score_pairs(list(ready.values())))}
    return [rows[pid] for pid in batch["pair_id"]]


class Scorer:
    """One-call scoring: ``get_scorer("dlib")([(img_a, img_b), ...])`` → one score per pair."""

    def __init__(self, model: str, **settings):
        self.spec = models.resolve(model, settings)
        self.verifier = self.spec.load()

    def __call__(self, pairs: list[tuple[Image.Image, Image.Image]], landmarks=None) -> np.ndarray:
        """One score per pair; ``landmarks``, for embedding models, gives per pair the
        two images' five points ((5, 2) arrays or None), used to align unaligned photos."""
        if self.verifier.kind == "embedding":
            flat = [im for pair in pairs for im in pair]
            extra = {"landmarks": [p for pair in landmarks for p in pair]} if landmarks is not None else {}
            emb, _ = self.verifier.embed(flat, **extra)
            return self.verifier.similarity(emb[0::2], emb[1::2])
        return np.array([out["score"] for out in self.verifier.score_pairs(pairs)], float)


def get_scorer(model: str, **settings) -> Scorer:
    """A callable that scores image pairs with ``model`` (higher = more likely the same person);
    keyword arguments override the model's settings, e.g. ``prompt="fr-ouinon"``."""
    return Scorer(model, **settings)
