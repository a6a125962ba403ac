"""Score a dataset's pairs with a model, resumably, and read the results back."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from PIL import Image

from facebench import models
from facebench.datasets import Dataset, DatasetError, load_dataset
from facebench.metrics import verification_report
from facebench.paths import DEFAULT_RESULTS_DIR
from facebench.progress import progress
from facebench.provenance import git_state, now, redact, versions
from facebench.store import RunStore


class RunError(RuntimeError):
    """A run that cannot start or continue as asked; the message says why."""


@dataclass
class Run:
    """One model on one dataset: the pairs, the stored results and their manifest."""

    model: str
    dataset: Dataset  # the pairs this run covers (a subset with --limit)
    store: RunStore
    full_dataset: Dataset

    @property
    def manifest(self) -> dict:
        return self.store.read_manifest()

    @cached_property
    def table(self) -> pd.DataFrame:
        """The dataset's pairs joined with their stored results (NaN where not run)."""
        return self.dataset.pairs.merge(self.store.rows(), on="pair_id", how="left")

    def metrics(self) -> dict:
        """:func:`~facebench.metrics.verification_report` on this run's pairs, plus who and what."""
        # Pairs not attempted yet are left out; pairs that failed count as not acquired.
        t = self.table[self.table["seconds"].notna()]
        decides = t["decision"].notna().any()
        decisions = t["decision"].to_numpy(float) if decides else None
        report = verification_report(t["score"].to_numpy(float), t["same"].to_numpy(), t["fold"].to_numpy(),
                                     decisions=decisions)
        return {"dataset": self.dataset.name, "model": self.model, **report,
                "n_errors": int(t["error"].notna().sum()), "complete": len(t) == len(self.table),
                "run_dir": str(self.store.dir)}


def run_identity(spec: models.ModelSpec, extra: dict | None = None) -> dict:
    """What makes two runs the same run: the model and every setting that changes scores."""
    return {"model": spec.spec, "backend": spec.backend, "settings": redact(spec.settings), **(extra or {})}


def open_run(model: str, dataset: str | Dataset, *, root=None, limit: int | None = None, out=None) -> Run:
    """The :class:`Run` of ``model`` on ``dataset`` as stored in ``out``, without scoring anything."""
    spec = models.resolve(model)
    full = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, root)
    store = RunStore.for_run(out or DEFAULT_RESULTS_DIR, spec.spec, full.name, run_identity(spec))
    return Run(spec.spec, full.subset(limit), store, full)


def evaluate(model: str, dataset: str | Dataset, *, root=None, limit: int | None = None, batch_size: int = 16,
             out=None, verifier: models.Verifier | None = None) -> Run:
    """Score every pending pair of ``dataset`` with ``model`` and return the :class:`Run`.

    Finished pairs in ``out`` are kept and skipped, so an interrupted run picks
    up where it stopped. ``limit`` scores a subset balanced over folds and labels.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    run = open_run(model, dataset, root=root, limit=limit, out=out)
    spec, full, store = models.resolve(model), run.full_dataset, run.store
    previous = store.read_manifest()
    if previous and previous.get("dataset_checksum") != full.checksum:
        raise RunError(
            f"{store.dir} holds results for {full.name} with checksum {previous.get('dataset_checksum')}, "
            f"but the dataset now has checksum {full.checksum}: the pairs or images changed. "
            "Use another --out, or move that folder away to start over."
        )
    pending = run.dataset.pairs[~run.dataset.pairs["pair_id"].isin(store.done_ids())]
    manifest = {
        **previous, **run_identity(spec), "settings_hash": store.dir.name, "dataset": full.name,
        "dataset_checksum": full.checksum, "dataset_pairs": len(full.pairs), "dataset_info": _jsonable(full.info),
        "created": previous.get("created", now()), "versions": versions(), "git": git_state(),
    }
    if len(pending):
        verifier = verifier or spec.load()
        manifest.update(verifier.info())
        manifest.update(status="running", updated=now())
        store.write_manifest(manifest)
        _score(verifier, run.dataset, pending, store, batch_size=batch_size)
    done = len(store.done_ids())
    manifest.update(status="complete" if done >= len(full.pairs) else f"partial ({done} of {len(full.pairs)} pairs)",
                    updated=now())
    store.write_manifest(manifest)
    return run


def _jsonable(info: dict) -> dict:
    return json.loads(json.dumps(info, default=str))


def _score(verifier, ds: Dataset, pending: pd.DataFrame, store: RunStore, *, batch_size: int) -> None:
    bar = progress(total=len(pending), desc=f"{ds.name}", unit="pair")
    cache: dict[str, tuple[np.ndarray | None, str]] = {}  # image key → (embedding or None, note or error)
    for start in range(0, len(pending), batch_size):
        batch = pending.iloc[start:start + batch_size]
        t0 = time.perf_counter()
        if verifier.kind == "embedding":
            rows = _embedding_rows(verifier, ds, batch, cache, batch_size)
        else:
            rows = _pair_rows(verifier, ds, batch)
        seconds = (time.perf_counter() - t0) / len(batch)
        store.write([{**r, "seconds": seconds} for r in rows])
        bar.update(len(batch))
    bar.close()


def _embedding_rows(verifier, ds, batch, cache, batch_size) -> list[dict]:
    # Each unique image is embedded once per process, however many pairs use it.
    todo = [k for k in dict.fromkeys(batch[["image_a", "image_b"]].to_numpy().ravel()) if k not in cache]
    for i in range(0, len(todo), batch_size):
        keys, images = [], []
        for key in todo[i:i + batch_size]:
            try:
                images.append(ds.images.load(key))
                keys.append(key)
            except DatasetError as exc:
                cache[key] = (None, str(exc))
        if images:
            emb, notes = verifier.embed(images)
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
    images = [(ds.images.load(a), ds.images.load(b)) for a, b in batch[["image_a", "image_b"]].to_numpy()]
    return [{"pair_id": pid, **out} for pid, out in zip(batch["pair_id"], verifier.score_pairs(images))]


class Scorer:
    """One-call scoring: ``get_scorer("dlib")([(img_a, img_b), ...])`` → one score per pair."""

    def __init__(self, model: str):
        self.spec = models.resolve(model)
        self.verifier = self.spec.load()

    def __call__(self, pairs: list[tuple[Image.Image, Image.Image]]) -> np.ndarray:
        if self.verifier.kind == "embedding":
            flat = [im for pair in pairs for im in pair]
            emb, _ = self.verifier.embed(flat)
            return self.verifier.similarity(emb[0::2], emb[1::2])
        return np.array([out["score"] for out in self.verifier.score_pairs(pairs)], float)


def get_scorer(model: str) -> Scorer:
    """A callable that scores image pairs with ``model`` (higher = more likely the same person)."""
    return Scorer(model)
