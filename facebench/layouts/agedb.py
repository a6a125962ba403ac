"""AgeDB-30 from its MATLAB protocol: ``04_FINAL_protocol_30_years.mat`` + ``03_Protocol_Images/``.

The ``.mat`` holds ``splits``, one entry per fold; each is a struct whose
first field is a 2 × 600 cell of image structs (first field: the file name
without ``.jpg``, second: the age) and whose second field is the 600 labels,
1 for the same person and -1 for different people. This is how
insightface's ``agedb2pack2.py`` and other public converters index the file;
the field names are not relied on. The images are ``03_Protocol_Images/<name>.jpg``;
where a ``<name>.pts`` (68 points, iBUG format) lies next to an image, its five
points are derived the way ``agedb2pack2.py`` does: eye centres from points
37/40 and 43/46, the nose from point 34, mouth corners 49 and 55 (1-based).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from facebench.datasets import LOADERS, Dataset, DatasetError
from facebench.files import read_regular
from facebench.layouts import (
    Layout,
    contained_path,
    folder_images,
    info,
    load_first,
    pairs_frame,
    protocol_checksum,
)
from facebench.layouts.insightface_bin import bin_layout

PROTOCOL, IMAGES = "04_FINAL_protocol_30_years.mat", "03_Protocol_Images"


def _only(value):
    """Strip the 1-element array wrappers scipy puts around MATLAB cells, structs and strings."""
    while isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(-1)[0]
    return value


def read_protocol(path: Path) -> list[tuple[int, str, str, bool]]:
    """(fold, name_a, name_b, same) per pair of the AgeDB ``.mat`` protocol, fold by fold.

    Raises
    ------
    DatasetError
        The file is not a MATLAB file or not shaped as described in the module
        docstring; the message names the file, and the split and pair where it went wrong.
    """
    from scipy.io import loadmat  # scipy is only needed for this layout
    from scipy.io.matlab import MatReadError

    try:
        splits = loadmat(io.BytesIO(read_regular(path)))["splits"]
    except (MatReadError, ValueError, TypeError, OSError, KeyError, NotImplementedError) as exc:
        raise DatasetError(f"{path}: not an AgeDB protocol .mat with a 'splits' variable ({exc})") from exc
    rows = []
    for k, entry in enumerate(np.ravel(splits)):
        j = None
        try:
            record = _only(entry)
            cells, labels = record[0], np.ravel(record[1])
            if cells.shape[0] != 2 and cells.shape[-1] == 2:
                cells = cells.T
            if cells.shape[1] != labels.size:
                raise ValueError(f"{cells.shape[1]} pairs but {labels.size} labels")
            for j in range(cells.shape[1]):
                a, b = (str(_only(_only(cells[r, j])[0])) for r in (0, 1))
                if labels[j] not in (1, -1):
                    raise ValueError(f"label {labels[j]!r}, expected 1 or -1")
                rows.append((k, a, b, bool(labels[j] == 1)))
        except (IndexError, TypeError, ValueError, AttributeError) as exc:
            where = f"split {k + 1}" + (f", pair {j + 1}" if j is not None else "")
            raise DatasetError(f"{path}: unexpected structure at {where}: {exc}") from exc
    return rows


def read_pts(path: Path) -> np.ndarray:
    """Five points (eye centres, nose, mouth corners) from a 68-point iBUG ``.pts`` file."""
    text = read_regular(path).decode("utf-8", "replace").replace("{", " ").replace("}", " ").splitlines()
    numbers = [line.split() for line in text if line.split() and _is_point(line.split())]
    if len(numbers) != 68:
        raise DatasetError(f"{path}: expected 68 points, found {len(numbers)}")
    p = np.array(numbers, float)
    return np.array([p[[36, 39]].mean(0), p[[42, 45]].mean(0), p[33], p[48], p[54]])


def _is_point(fields: list[str]) -> bool:
    try:
        return len(fields) == 2 and all(np.isfinite(float(v)) for v in fields)
    except ValueError:
        return False


def read_agedb(folder: Path, layout: Layout, doc: dict) -> Dataset:
    """A :class:`Layout` reader for the ``.mat`` protocol + ``03_Protocol_Images/``."""
    rows = read_protocol(folder / PROTOCOL)
    fold = [r[0] for r in rows]
    table = pairs_frame(fold, [f"{IMAGES}/{r[1]}.jpg" for r in rows], [f"{IMAGES}/{r[2]}.jpg" for r in rows],
                        [r[3] for r in rows])

    def landmarks(key: str) -> np.ndarray | None:
        pts = contained_path(folder, str(Path(key).with_suffix(".pts")), (folder / IMAGES).resolve())
        return read_pts(pts) if pts.is_file() else None

    meta = info(doc, layout, folder, protocol_files=[PROTOCOL], image_files=True)
    return Dataset(doc["name"], table, folder_images(folder, IMAGES, landmarks=landmarks), meta,
                   source_checksum=protocol_checksum(folder, [PROTOCOL], layout))


AGEDB_LAYOUTS = [
    bin_layout("agedb_30"),
    Layout("AgeDB 04_FINAL_protocol_30_years.mat + 03_Protocol_Images/", (PROTOCOL, IMAGES), read_agedb),
]


@LOADERS.register("agedb_30")
def load_agedb_30(root: Path) -> Dataset:
    """AgeDB-30, 6,000 pairs in 10 folds: ``agedb_30.bin``, else the ``.mat`` protocol + ``03_Protocol_Images/``."""
    return load_first("agedb_30", root, AGEDB_LAYOUTS)
