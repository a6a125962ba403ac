"""Verification datasets as one pairs table, with images decoded on demand.

Every dataset, whatever its on-disk layout, loads into the same table:

========  =======================================================
pair_id   int, unique, protocol order
fold      int, the protocol's fold (0-based)
image_a   str, key of the first image
image_b   str, key of the second image
same      bool, True for a genuine (same person) pair
group     str or None, e.g. the RFW race
========  =======================================================
"""
from __future__ import annotations

import hashlib
import io
import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from facebench.paths import DEMO_DIR, MANIFESTS_DIR, data_root
from facebench.progress import progress
from facebench.provenance import now
from facebench.registry import Registry
from facebench.store import write_json_atomic

PAIR_COLUMNS = ["pair_id", "fold", "image_a", "image_b", "same", "group"]
# Each public set's loader lives with its file format in facebench.layouts and is imported on first use.
LOADERS: Registry[Callable[..., "Dataset"]] = Registry("dataset", lazy={
    "lfw": "facebench.layouts.lfw", "rfw": "facebench.layouts.lfw",
    "calfw": "facebench.layouts.calfw", "cplfw": "facebench.layouts.calfw",
    "cfp_ff": "facebench.layouts.cfp", "cfp_fp": "facebench.layouts.cfp",
    "agedb_30": "facebench.layouts.agedb", "vgg2_fp": "facebench.layouts.insightface_bin",
})
# Where `facebench data check --pin` records a user's checksums, in the data root (git-ignored).
LOCK_FILE = "facebench.lock.json"


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message names the file or pair."""


class ImageSource:
    """Decode images by key on first use, keeping the most recent ones in memory.

    ``read(key)`` returns the encoded bytes; ``describe(key)`` names where the
    image lives, for error messages; ``landmarks(key)``, where the dataset ships
    them, gives the face's 5 points (eyes, nose, mouth corners) as a (5, 2)
    array in the image's pixel coordinates, else None; ``exists(key)`` is a
    cheap presence test (a file's existence), by default a successful read.
    """

    def __init__(self, read: Callable[[str], bytes], describe: Callable[[str], str], *,
                 landmarks: Callable[[str], np.ndarray | None] | None = None,
                 exists: Callable[[str], bool] | None = None, cache_size: int = 256):
        self._read, self.describe, self._cache_size = read, describe, cache_size
        self._landmarks, self._exists = landmarks, exists
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()

    def landmarks(self, key: str) -> np.ndarray | None:
        return self._landmarks(key) if self._landmarks else None

    def exists(self, key: str) -> bool:
        if self._exists is not None:
            return self._exists(key)
        try:
            self._read(key)
        except OSError:
            return False
        return True

    def read_bytes(self, key: str) -> bytes:
        return self._read(key)

    def load(self, key: str) -> Image.Image:
        """The image as RGB; a missing or undecodable file raises :class:`DatasetError`."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            image = Image.open(io.BytesIO(self._read(key)))
            image.load()  # decode now: a truncated file fails here, not later
        except (OSError, SyntaxError, ValueError) as exc:
            raise DatasetError(f"cannot read image {self.describe(key)}: {exc}") from exc
        image = image.convert("RGB")
        self._cache[key] = image
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return image


@dataclass
class Dataset:
    """A pair list with its images; see the module docstring for the table."""

    name: str
    pairs: pd.DataFrame
    images: ImageSource
    info: dict = field(default_factory=dict)
    expected_sha256: dict[str, str] = field(default_factory=dict)  # image key → sha256, where known
    source_checksum: str = ""  # e.g. the sha256 of a packed file the images come from

    def __post_init__(self):
        self.pairs = validate_pairs(self.pairs, source=self.name)

    @cached_property
    def checksum(self) -> str:
        """sha256 over the pairs table and what is known of the images' content."""
        h = hashlib.sha256(self.pairs.to_csv(index=False).encode())
        for key in sorted(self.expected_sha256):
            h.update(f"{key}:{self.expected_sha256[key]}\n".encode())
        h.update(self.source_checksum.encode())
        return h.hexdigest()

    @property
    def n_folds(self) -> int:
        return int(self.pairs["fold"].nunique())

    def pairs_using(self, key: str) -> list[int]:
        p = self.pairs
        return p.loc[(p["image_a"] == key) | (p["image_b"] == key), "pair_id"].tolist()

    def checksum_errors(self, keys=None) -> list[str]:
        """One message per image whose bytes differ from the recorded sha256."""
        errors = []
        for key in keys if keys is not None else self.expected_sha256:
            try:
                actual = hashlib.sha256(self.images.read_bytes(key)).hexdigest()
            except OSError as exc:
                errors.append(f"{self.images.describe(key)}: cannot read ({exc}); used by pairs {self.pairs_using(key)}")
                continue
            if actual != self.expected_sha256[key]:
                errors.append(f"{self.images.describe(key)}: sha256 {actual} does not match the manifest's "
                              f"{self.expected_sha256[key]}; used by pairs {self.pairs_using(key)}")
        return errors

    def image_keys(self) -> list[str]:
        """Every image the pairs use, once, in order of first use."""
        return list(dict.fromkeys(self.pairs[["image_a", "image_b"]].to_numpy().ravel()))

    def subset(self, limit: int | None) -> "Dataset":
        """The first ``limit`` pairs taken evenly across folds and labels, so a
        quick run still has every fold and both classes."""
        if limit is None or limit >= len(self.pairs):
            return self
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        rank = self.pairs.groupby(["fold", "same"]).cumcount()
        order = np.lexsort((self.pairs["pair_id"], self.pairs["fold"], rank))
        keep = self.pairs.iloc[order[:limit]].sort_values("pair_id")
        return replace(self, pairs=keep.reset_index(drop=True), info={**self.info, "limit": limit})


def validate_pairs(pairs: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Check and normalise a pairs table; errors name ``source`` and the bad pairs."""
    pairs = pairs.copy()
    if "group" not in pairs:
        pairs["group"] = None
    missing = [c for c in PAIR_COLUMNS if c not in pairs]
    if missing:
        raise DatasetError(f"{source}: pairs table lacks column(s) {missing}")
    dup = pairs["pair_id"][pairs["pair_id"].duplicated()]
    if len(dup):
        raise DatasetError(f"{source}: duplicate pair ids {dup.tolist()[:5]}")
    bad = pairs[~pairs["same"].isin([True, False])]
    if len(bad):
        raise DatasetError(f"{source}: pairs {bad['pair_id'].tolist()[:5]} have a label that is not true/false")
    for column in ("pair_id", "fold", "image_a", "image_b"):
        empty = pairs[pairs[column].isna()]
        if len(empty):
            where = f"rows {empty.index.tolist()[:5]}" if column == "pair_id" else f"pairs {empty['pair_id'].tolist()[:5]}"
            raise DatasetError(f"{source}: {where} have no {column}")
    pairs = pairs[PAIR_COLUMNS].astype({"pair_id": int, "fold": int, "same": bool, "image_a": str, "image_b": str})
    return pairs.reset_index(drop=True)


def manifest(name: str) -> dict:
    """The data manifest ``data_manifests/<name>.yaml``."""
    path = MANIFESTS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise DatasetError(f"no data manifest for dataset {name!r} at {path}")
    return yaml.safe_load(path.read_text())


def known_datasets() -> list[str]:
    return LOADERS.names()


def load_dataset(name: str, root=None, *, verify: bool = True) -> Dataset:
    """Load dataset ``name`` from ``root / name`` (the demo set is built in).

    ``verify`` checks the image checksums the manifest records; a mismatch
    raises :class:`DatasetError` naming the file.
    """
    dataset = LOADERS.get(name)(data_root(root))
    errors = dataset.checksum_errors() if verify else []
    if errors:
        raise DatasetError(f"dataset {name!r}: " + "; ".join(errors))
    return dataset


def check_dataset(name: str, root=None, *, pin: bool = False) -> dict:
    """Everything ``facebench data check`` reports: facts, warnings and errors.

    Errors make a dataset unusable: no accepted layout, a malformed pair list,
    an image that is missing or does not decode (named with the pairs it
    breaks), unreadable landmarks, a checksum that differs from the manifest's
    or from the user's pin. Warnings flag departures from the protocol: pair,
    fold or per-group counts, a fold missing a class, a list file that differs
    from its published checksum.

    ``pin`` records the sha256 of every file the dataset reads in the data
    root's lock file (replacing an earlier pin of it) if no error was found;
    the comparison with an earlier pin is skipped then.
    """
    report = {"dataset": name, "errors": [], "warnings": [], "facts": {}}
    try:
        ds = LOADERS.get(name)(data_root(root))
    except (DatasetError, OSError) as exc:
        report["errors"].append(str(exc))
        return report
    p, facts, errors = ds.pairs, report["facts"], report["errors"]
    facts.update(layout=ds.info.get("layout"), location=ds.info.get("location"), pairs=len(p),
                 folds=ds.n_folds, genuine=int(p["same"].sum()), impostor=int((~p["same"]).sum()),
                 images=len(ds.image_keys()), checksum=ds.checksum)
    facts["per_fold"] = {int(f): _balance(part) for f, part in p.groupby("fold")}
    if p["group"].notna().any():
        facts["groups"] = {str(g): f"{len(part)} pairs, {part['fold'].nunique()} folds, {_balance(part)}"
                           for g, part in p.groupby("group")}
    report["warnings"] += protocol_warnings(ds) + published_checksum_warnings(ds)
    errors += ds.checksum_errors()
    if not pin:
        errors += lock_errors(ds, root)
    used_by = pairs_by_image(p)
    for key in progress(ds.image_keys(), desc=f"decoding {name}", unit="img"):
        try:
            ds.images.load(key)
        except DatasetError as exc:
            errors.append(f"{exc}; used by pairs {used_by[key]}")
    landmark_errors = {}  # one message per broken landmark file, however many images it covers
    for key in ds.image_keys():
        try:
            ds.images.landmarks(key)
        except DatasetError as exc:
            landmark_errors.setdefault(f"landmarks: {exc}", None)
    errors += list(landmark_errors)
    if pin:
        if errors:
            errors.append(f"not pinned: {name} has errors; fix them and pin again")
        else:
            facts["pinned"] = pin_dataset(ds, root)
    return report


def _balance(part: pd.DataFrame) -> str:
    genuine = int(part["same"].sum())
    return f"{genuine} genuine / {len(part) - genuine} impostor"


def protocol_warnings(ds: Dataset) -> list[str]:
    """Where ``ds`` departs from its protocol: pair and fold counts, per group too, and one-class folds."""
    p, info, warnings = ds.pairs, ds.info, []
    expected = info.get("expected_pairs")
    if expected and expected != len(p):
        warnings.append(f"{len(p)} pairs, the protocol has {expected}")
    if info.get("n_folds_expected") not in (None, ds.n_folds):
        warnings.append(f"{ds.n_folds} folds, the protocol has {info['n_folds_expected']}")
    for group, n in (info.get("expected_pairs_per_group") or {}).items():
        found = int((p["group"] == group).sum())
        if found != n:
            warnings.append(f"group {group}: {found} pairs, the protocol has {n}")
    grouped = p["group"].notna().any()
    for keys, part in p.groupby(["group", "fold"] if grouped else "fold"):
        if part["same"].nunique() == 1:
            warnings.append(f"group {keys[0]} fold {keys[1]} holds one class only" if grouped
                            else f"fold {keys} holds one class only")
    return warnings


def published_checksum_warnings(ds: Dataset) -> list[str]:
    """A list file whose sha256 differs from the one published for it (manifest ``checksums``)."""
    files, warnings = dataset_files(ds, images=False), []
    for rel, published in (ds.info.get("published_sha256") or {}).items():
        if rel in files and files[rel].is_file():
            actual = file_sha256(files[rel])
            if actual != published:
                warnings.append(f"{files[rel]}: sha256 {actual} differs from the published {published} "
                                f"(data_manifests/{ds.name}.yaml); is it the official file?")
    return warnings


def pairs_by_image(pairs: pd.DataFrame) -> dict[str, list[int]]:
    """Image key → the ids of the pairs that use it, in pair order.

    >>> pairs_by_image(pd.DataFrame({"pair_id": [7, 8], "image_a": ["a", "a"], "image_b": ["b", "c"]}))
    {'a': [7, 8], 'b': [7], 'c': [8]}
    """
    index: dict[str, list[int]] = {}
    for pid, a, b in zip(pairs["pair_id"].tolist(), pairs["image_a"], pairs["image_b"]):
        index.setdefault(a, []).append(pid)
        if b != a:
            index.setdefault(b, []).append(pid)
    return index


# ------------------------------------------------------------------ pinned checksums (the lock file)


def lock_path(root=None) -> Path:
    """The lock file of the data root: ``<data root>/facebench.lock.json``."""
    return data_root(root) / LOCK_FILE


def dataset_files(ds: Dataset, *, images: bool = True) -> dict[str, Path]:
    """The files ``ds`` reads, by path relative to its location: its list files (or ``.bin``) and,
    where image keys are file paths, every image the pairs use."""
    location = ds.info.get("location")
    if not location:
        return {}
    rels = list(ds.info.get("protocol_files") or [])
    if images and ds.info.get("image_files"):
        rels += ds.image_keys()
    return {rel: Path(location) / rel for rel in dict.fromkeys(rels)}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_lock(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable lock file ({exc}); move it away and pin again") from exc
    return doc if isinstance(doc, dict) else {}


def pin_dataset(ds: Dataset, root=None) -> str:
    """Record the sha256 of every file ``ds`` reads in the lock file; returns what was written where."""
    files = dataset_files(ds)
    if not files:
        raise DatasetError(f"{ds.name}: nothing to pin, its layout names no files "
                           "(the demo set's checksums are in its manifest)")
    hashes = {rel: file_sha256(path) for rel, path in progress(files.items(), desc=f"pinning {ds.name}",
                                                                unit="file")}
    path = lock_path(root)
    doc = _read_lock(path)
    doc.setdefault("datasets", {})[ds.name] = {"layout": ds.info.get("layout"), "location": ds.info.get("location"),
                                               "pinned": now(), "files": hashes}
    write_json_atomic(path, doc)
    return f"{len(hashes)} files recorded in {path}"


def lock_errors(ds: Dataset, root=None) -> list[str]:
    """Files of ``ds`` that are missing, changed or new since ``facebench data check --pin``; [] if not pinned."""
    path = lock_path(root)
    entry = _read_lock(path).get("datasets", {}).get(ds.name)
    if not entry:
        return []
    if entry.get("layout") != ds.info.get("layout"):
        return [f"{ds.name} was pinned as {entry.get('layout')!r} in {entry.get('location')}, but is now read as "
                f"{ds.info.get('layout')!r} in {ds.info.get('location')} (lock file {path})"]
    files, pinned, used_by = dataset_files(ds), entry.get("files", {}), pairs_by_image(ds.pairs)
    errors = []
    for rel, file in progress(files.items(), desc=f"verifying {ds.name}", unit="file"):
        pairs = f"; used by pairs {used_by[rel]}" if rel in used_by else ""
        if rel not in pinned:
            errors.append(f"{file}: used but not in the pin recorded in {path}{pairs}")
        elif not file.is_file():
            errors.append(f"{file}: missing; it was pinned in {path}{pairs}")
        elif (actual := file_sha256(file)) != pinned[rel]:
            errors.append(f"{file}: changed since it was pinned (sha256 {actual}, pinned {pinned[rel]} in {path})"
                          f"{pairs}")
    return errors


def preflight(dataset: str | Dataset, root=None) -> Dataset:
    """The cheap checks ``evaluate`` runs before scoring; the dataset if they pass.

    Layout found and pair list valid (loading ``dataset`` if it is a name),
    the manifest's image checksums, every image present (decoding them all is
    ``facebench data check``'s job), and the lock file's checksums where the
    dataset was pinned.

    Raises
    ------
    DatasetError
        Naming the check that failed, what failed, and suggesting ``facebench data check``.

    Examples
    --------
    >>> len(preflight("demo").pairs)
    54
    >>> preflight("lfw", "/nonexistent")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    facebench.datasets.DatasetError: dataset 'lfw' failed its layout and pair list check: lfw: /nonexistent/lfw does not exist; ...
    """
    name = dataset if isinstance(dataset, str) else dataset.name

    def fail(check: str, detail) -> DatasetError:
        return DatasetError(f"dataset {name!r} failed its {check} check: {detail}\n"
                            f"Run `facebench data check {name}` for the full report.")

    if isinstance(dataset, str):
        try:
            dataset = LOADERS.get(name)(data_root(root))
        except (DatasetError, OSError) as exc:
            raise fail("layout and pair list", exc) from exc
    errors = dataset.checksum_errors()
    if errors:
        raise fail("manifest checksum", "; ".join(errors))
    keys = dataset.image_keys()
    missing = [k for k in keys if not dataset.images.exists(k)]
    if missing:
        used_by = pairs_by_image(dataset.pairs)
        shown = "; ".join(f"{dataset.images.describe(k)} (pairs {used_by[k][:5]})" for k in missing[:5])
        raise fail("image files", f"{len(missing)} of {len(keys)} images are missing: {shown}"
                   + ("; …" if len(missing) > 5 else ""))
    errors = lock_errors(dataset, root)
    if errors:
        raise fail("pinned checksums", "; ".join(errors[:5]) + ("; …" if len(errors) > 5 else ""))
    return dataset


@LOADERS.register("demo")
def load_demo(root: Path | None = None, *, folder: Path = DEMO_DIR, doc: dict | None = None) -> Dataset:
    """The bundled demo set (``data_manifests/demo.yaml``); ``root`` is not used."""
    doc = doc or manifest("demo")
    files = {im["id"]: im["file"] for im in doc["images"]}
    rows = [dict(pair_id=i, fold=f, image_a=a, image_b=b, same=s) for i, (f, a, b, s) in enumerate(doc["pairs"])]
    unknown = {k for r in rows for k in (r["image_a"], r["image_b"])} - set(files)
    if unknown:
        raise DatasetError(f"{MANIFESTS_DIR / 'demo.yaml'}: pairs use image ids not listed under images: {sorted(unknown)}")
    pairs = pd.DataFrame(rows)
    hashes = {im["id"]: im["sha256"] for im in doc["images"]}
    images = ImageSource(lambda k: (folder / files[k]).read_bytes(), lambda k: str(folder / files[k]),
                         exists=lambda k: (folder / files[k]).is_file())
    info = {"full_name": doc["full_name"], "expected_pairs": doc["expected_pairs"], "n_folds_expected": doc["n_folds"],
            "layout": "facebench demo (PNG crops + manifest)", "location": str(folder),
            "identities": {im["id"]: im["identity"] for im in doc["images"]}}
    return Dataset("demo", pairs, images, info, hashes)
