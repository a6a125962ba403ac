"""insightface's packed validation sets: ``<name>.bin`` (lfw, cfp_fp, cfp_ff, agedb_30, calfw, cplfw, vgg2_fp).

A ``.bin`` is a pickle of ``(images, issame)``: ``2N`` encoded images (JPEG or
PNG; ``bytes`` from Python 2, or a uint8 numpy array such as
``cv2.imencode`` returns) and ``N`` booleans. Pair ``i`` is images ``2i`` and
``2i+1``; the folds are 10 contiguous blocks in file order, as insightface's
``verification.py`` evaluates them. The images are aligned 112×112 crops.

The file is read through :mod:`facebench.safe_pickle`, so a ``.bin`` that
carries anything but plain data is refused without running it. The whole file
is read (the pickle is the metadata), so its sha256 is computed on the way
at little extra cost (~0.1 s per 100 MB) and becomes the dataset's
``source_checksum``. The encoded images stay in memory; they are decoded
one at a time when used.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from facebench import safe_pickle
from facebench.files import read_regular
from facebench.datasets import LOADERS, Dataset, DatasetError, ImageSource
from facebench.layouts import Layout, contiguous_folds, info, load_first, pairs_frame


def read_bin(path: Path) -> tuple[list, list[bool], str]:
    """The images, labels and sha256 of an insightface ``.bin``.

    Raises
    ------
    DatasetError
        The file is not a pickle of ``(images, issame)`` with ``2 * len(issame)``
        images, an image is neither bytes nor a uint8 array of encoded bytes, or a
        label is not a boolean; the message names the file, the pair and the position.
    """
    data = read_regular(path)
    digest = hashlib.sha256(data).hexdigest()
    try:
        loaded = safe_pickle.loads(data, source=str(path))
    except safe_pickle.UnsafePickleError as exc:
        raise DatasetError(str(exc)) from exc
    except Exception as exc:  # a truncated or foreign file fails in many ways inside pickle
        raise DatasetError(f"{path}: not a readable insightface .bin pickle ({type(exc).__name__}: {exc})") from exc
    del data
    if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
        raise DatasetError(f"{path}: expected a pickle of (images, issame), got {type(loaded).__name__}")
    blobs, issame = loaded
    if not isinstance(blobs, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise DatasetError(f"{path}: expected (list of images, list of booleans), got "
                           f"({type(blobs).__name__}, {type(issame).__name__})")
    if len(blobs) != 2 * len(issame):
        raise DatasetError(f"{path}: {len(blobs)} images for {len(issame)} pairs; a .bin holds 2 images per pair")
    labels = []
    for i, same in enumerate(issame):
        if isinstance(same, (bool, np.bool_)) or (isinstance(same, (int, np.integer)) and same in (0, 1)):
            labels.append(bool(same))
        else:
            raise DatasetError(f"{path}: pair {i} has label {same!r}, expected a boolean")
    for i, blob in enumerate(blobs):
        problem = _blob_problem(blob)
        if problem:
            raise DatasetError(f"{path}: {_position(i)} {problem}")
    return list(blobs), labels, digest


def _blob_problem(blob) -> str | None:
    if isinstance(blob, (bytes, bytearray)):
        return None
    if isinstance(blob, np.ndarray):
        if blob.dtype != np.uint8:
            return f"is a numpy array of {blob.dtype}, expected uint8 encoded bytes"
        if blob.ndim > 1 and blob.size != max(blob.shape):  # cv2.imencode gives (n, 1); (h, w, 3) is pixels
            return f"is a {blob.shape} array of pixels, expected encoded bytes (JPEG/PNG)"
        return None
    return f"is a {type(blob).__name__}, expected bytes or a uint8 numpy array"


def _position(index: int) -> str:
    return f"image #{index} (pair {index // 2}, {'first' if index % 2 == 0 else 'second'} image)"


def bin_images(path: Path, blobs: list) -> ImageSource:
    """Images keyed ``#<index>``; ``read`` gives the blob's encoded bytes."""
    def read(key: str) -> bytes:
        blob = blobs[int(key[1:])]
        return blob.tobytes() if isinstance(blob, np.ndarray) else bytes(blob)

    return ImageSource(read, lambda key: f"{path} {_position(int(key[1:]))}",
                       exists=lambda key: len(blobs[int(key[1:])]) > 0)


def read_bin_dataset(folder: Path, layout: Layout, doc: dict) -> Dataset:
    """A :class:`Layout` reader for ``<name>.bin``."""
    name = doc["name"]
    path = folder / layout.needs[0]
    blobs, labels, digest = read_bin(path)
    n = len(labels)
    pairs = pairs_frame(contiguous_folds(n), [f"#{2 * i}" for i in range(n)], [f"#{2 * i + 1}" for i in range(n)],
                        labels)
    meta = info(doc, layout, folder, protocol_files=[layout.needs[0]], image_files=False, bin_sha256=digest)
    return Dataset(name, pairs, bin_images(path, blobs), meta, source_checksum=digest)


def bin_layout(name: str) -> Layout:
    """The ``<name>.bin`` layout, which every loader but RFW's tries first."""
    return Layout(f"insightface {name}.bin", (f"{name}.bin",), read_bin_dataset)


@LOADERS.register("vgg2_fp")
def load_vgg2_fp(root: Path) -> Dataset:
    """VGGFace2 frontal–profile pairs, from insightface's ``vgg2_fp.bin`` only."""
    return load_first("vgg2_fp", root, [bin_layout("vgg2_fp")])
