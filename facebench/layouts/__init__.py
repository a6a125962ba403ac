"""The on-disk forms of the public verification sets, each read into facebench's pairs table.

A dataset's folder (``<data root>/<name>/``) may hold one of several layouts:
insightface's packed ``<name>.bin`` or the files the dataset's authors ship.
A loader tries its layouts in a fixed, documented order and reads the first
whose files are all present; a folder holding none of them is a
:class:`~facebench.datasets.DatasetError` that lists every file looked for.

One module per format family: :mod:`~facebench.layouts.insightface_bin`,
:mod:`~facebench.layouts.lfw` (LFW and RFW), :mod:`~facebench.layouts.calfw`
(CALFW and CPLFW), :mod:`~facebench.layouts.cfp` and
:mod:`~facebench.layouts.agedb`. Image keys are paths relative to the layout's
folder (``lfw/Aaron_Peirsol/Aaron_Peirsol_0001.jpg``), or ``#<index>`` for an
image packed in a ``.bin``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from facebench.datasets import Dataset, DatasetError, ImageSource, manifest
from facebench.files import file_sha256, read_regular

N_FOLDS = 10  # every protocol here is 10-fold


@dataclass(frozen=True)
class Layout:
    """One accepted form of a dataset: the files it needs and how to read them.

    ``needs`` are paths relative to ``<dataset folder>/<base>``; ``read(folder,
    layout, doc)`` gets that folder, this layout and the dataset's manifest.
    """

    name: str
    needs: tuple[str, ...]
    read: Callable[[Path, "Layout", dict], Dataset]
    base: str = ""

    def folder(self, dataset_folder: Path) -> Path:
        return dataset_folder / self.base if self.base else dataset_folder

    def found(self, dataset_folder: Path) -> bool:
        folder = self.folder(dataset_folder)
        return all((folder / p).exists() for p in self.needs)

    def describe(self, dataset_folder: Path) -> str:
        """``name: file + file (missing) + …``, the needed files as paths under the dataset folder."""
        folder, annotate = self.folder(dataset_folder), dataset_folder.is_dir()
        parts = [f"{self.base}/{p}" if self.base else p for p in self.needs]
        marks = ["" if not annotate or (folder / p).exists() else " (missing)" for p in self.needs]
        return f"{self.name}: " + " + ".join(part + mark for part, mark in zip(parts, marks))


def load_first(name: str, root: Path, layouts: Sequence[Layout]) -> Dataset:
    """Read dataset ``name`` from ``root / name`` in the first layout found there.

    Raises
    ------
    DatasetError
        No layout is complete; the message lists, per layout, the files looked
        for and which of them are missing. Or the layout found holds no pairs.
    """
    folder = Path(root) / name
    doc = manifest(name)
    for layout in layouts:
        if layout.found(folder):
            dataset = layout.read(layout.folder(folder), layout, doc)
            if dataset.pairs.empty:  # nothing to score would read as a complete run
                raise DatasetError(f"{name}: the {layout.name} files in {layout.folder(folder)} hold no pairs")
            return dataset
    where = f"{folder} does not exist" if not folder.is_dir() else f"nothing usable in {folder}"
    looked = "\n  ".join(layout.describe(folder) for layout in layouts)
    raise DatasetError(f"{name}: {where}; the accepted layouts, tried in this order, are:\n  {looked}\n"
                       f"(see data_manifests/{name}.yaml for where to obtain the files)")


def info(doc: dict, layout: Layout, location: Path, *, protocol_files: list[str], image_files: bool,
         **extra) -> dict:
    """A loader's ``Dataset.info``: what the manifest expects and what was found where.

    ``protocol_files`` are the list files read (relative to ``location``);
    ``image_files`` says whether image keys are file paths under ``location``
    (what ``facebench data check --pin`` hashes).
    """
    return {"full_name": doc["full_name"], "expected_pairs": doc.get("expected_pairs"),
            "n_folds_expected": doc.get("n_folds"), "layout": layout.name, "location": str(location),
            "protocol_files": protocol_files, "image_files": image_files,
            "published_sha256": dict(doc.get("checksums") or {}), **extra}


def folder_images(location: Path, within: str, *,
                  landmarks: Callable[[str], np.ndarray | None] | None = None) -> ImageSource:
    """Images stored as regular files, keyed by their path relative to ``location``.

    Every key must name a file inside the layout's image folder ``location /
    within`` once resolved: a pair list naming ``../``, an absolute path or a
    symlink that leads out of it is refused (:func:`contained_path`), so no
    file outside the dataset is read, scored or uploaded. The image folder
    itself may be a symlink (e.g. to another disk).
    """
    root = (location / within).resolve()

    def path(key: str) -> Path:
        return contained_path(location, key, root)

    return ImageSource(lambda k: read_regular(path(k)), lambda k: str(location / k),
                       exists=lambda k: path(k).is_file(), landmarks=landmarks, path=path)


def contained_path(location: Path, key: str, root: Path) -> Path:
    """``location / key`` resolved (symlinks followed) if it lies inside ``root``, else DatasetError naming it.

    >>> contained_path(Path("/data/lfw"), "lfw/../../../etc/passwd", Path("/data/lfw/lfw"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    facebench.datasets.DatasetError: /data/lfw/lfw/../../../etc/passwd: resolves to /etc/passwd, outside the ...
    """
    path = (location / key).resolve()
    if not path.is_relative_to(root):
        raise DatasetError(f"{location / key}: resolves to {path}, outside the dataset's image folder {root}; refused")
    return path


def protocol_checksum(location: Path, files: list[str], layout: Layout) -> str:
    """sha256 over the layout's name and its list files: cheap, and changes when the pairs or
    the image folder in use change (image bytes are covered by ``data check --pin``)."""
    h = hashlib.sha256(f"layout: {layout.name}\n".encode())
    for rel in files:
        h.update(f"{rel}:{file_sha256(location / rel)}\n".encode())
    return h.hexdigest()


def pairs_frame(fold, image_a, image_b, same, group=None) -> pd.DataFrame:
    """The pairs table from per-pair columns, pair ids in protocol order."""
    n = len(fold)
    return pd.DataFrame({"pair_id": np.arange(n), "fold": fold, "image_a": image_a, "image_b": image_b,
                         "same": same, "group": group if group is not None else [None] * n})


def contiguous_folds(n: int, n_folds: int = N_FOLDS) -> np.ndarray:
    """Fold of each of ``n`` items split into ``n_folds`` contiguous, equal blocks in order.

    >>> contiguous_folds(6, 3).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    return np.arange(n) * n_folds // max(n, 1)


def read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a text list with their 1-based line numbers (any line ending)."""
    try:
        text = read_regular(path).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a text file ({exc})") from exc
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
