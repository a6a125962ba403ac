"""Dataset integrity: is a dataset on disk the one its protocol and its user expect?

Three entry points, from most thorough to cheapest:

* :func:`check_dataset` — ``facebench data check NAME``: the layout and pair
  list, every image decoded (failures named with the pairs they break), the
  dataset's landmarks, the manifest's image checksums, the user's pinned
  checksums; and, as warnings, departures from the protocol (pair, fold and
  per-group counts, one-class folds, list files that differ from their
  published sha256).
* :func:`pin_dataset` — ``facebench data check --pin NAME``: after a clean
  check, records the sha256 of every file the dataset reads in the data root's
  lock file (:data:`LOCK_FILE`), so a later check or pre-flight notices a file
  that changed, went missing or was swapped for another layout.
* :func:`preflight` — run by :func:`facebench.scoring.evaluate` before
  scoring: layout and pair list, the manifest's checksums, every image present
  and the pinned checksums, without decoding the images.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from facebench.datasets import LOADERS, Dataset, DatasetError
from facebench.files import file_sha256, write_json_atomic
from facebench.paths import data_root
from facebench.progress import progress
from facebench.provenance import now

# Where `facebench data check --pin` records a user's checksums, in the data root (git-ignored).
LOCK_FILE = "facebench.lock.json"


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
    files = {rel: Path(location) / rel for rel in ds.info.get("protocol_files") or []}
    for key in ds.image_keys() if images and ds.info.get("image_files") else []:
        try:
            ds.images.path(key)
        except DatasetError:  # leads out of the dataset: refused where images are read, never hashed
            continue
        files.setdefault(key, Path(location) / key)
    return files


def _read_lock(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable lock file ({exc}); move it away and pin again") from exc
    entries = doc.get("datasets", {}) if isinstance(doc, dict) else None
    if not (isinstance(entries, dict) and all(isinstance(e, dict) and isinstance(e.get("files", {}), dict)
                                              for e in entries.values())):
        raise DatasetError(f'{path}: not a facebench lock file ({{"datasets": {{NAME: {{"files": {{...}}}}}}}}); '
                           "move it away and pin again")
    return doc


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
    keys, missing = dataset.image_keys(), []
    for key in keys:
        try:
            if not dataset.images.exists(key):
                missing.append(key)
        except DatasetError as exc:  # e.g. a path leading out of the dataset
            raise fail("image files", f"{exc}; used by pairs {pairs_by_image(dataset.pairs)[key][:5]}") from exc
    if missing:
        used_by = pairs_by_image(dataset.pairs)
        shown = "; ".join(f"{dataset.images.describe(k)} (pairs {used_by[k][:5]})" for k in missing[:5])
        raise fail("image files", f"{len(missing)} of {len(keys)} images are missing: {shown}"
                   + ("; …" if len(missing) > 5 else ""))
    errors = lock_errors(dataset, root)
    if errors:
        raise fail("pinned checksums", "; ".join(errors[:5]) + ("; …" if len(errors) > 5 else ""))
    return dataset
