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
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

from facebench.files import read_regular, read_yaml
from facebench.paths import DEMO_DIR, MANIFESTS_DIR, data_root
from facebench.registry import Registry

PAIR_COLUMNS = ["pair_id", "fold", "image_a", "image_b", "same", "group"]
# Each public set's loader lives with its file format in facebench.layouts and is imported on first use.
LOADERS: Registry[Callable[..., "Dataset"]] = Registry("dataset", lazy={
    "lfw": "facebench.layouts.lfw", "rfw": "facebench.layouts.lfw",
    "calfw": "facebench.layouts.calfw", "cplfw": "facebench.layouts.calfw",
    "cfp_ff": "facebench.layouts.cfp", "cfp_fp": "facebench.layouts.cfp",
    "agedb_30": "facebench.layouts.agedb", "vgg2_fp": "facebench.layouts.insightface_bin",
})


class DatasetError(ValueError):
    """A dataset that cannot be used as it is; the message names the file or pair."""


# Face crops and photos in these sets are well under these limits; a larger image is hostile or a mistake.
MAX_SIDE = 2048  # pixels on the long side: larger images are downscaled to it before any model sees them
MAX_PIXELS = 64_000_000  # pixels decoded at most (a JPEG counts at the reduced scale it is decoded at)


def _rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, with 16-bit and float images scaled rather than clipped."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        high = 1.0 if image.mode == "F" else 65535.0
        if not np.isfinite(values).all() or values.min(initial=0) < 0 or values.max(initial=0) > high:
            reads = "float images in 0–1" if high == 1 else "integer images in 0–65535"
            raise ValueError(f"a {image.mode} image with values from {values.min():g} to {values.max():g}: "
                             f"facebench reads {reads}")
        image = Image.fromarray(np.rint(values * (255.0 / high)).astype(np.uint8))
    return image.convert("RGB")


class ImageSource:
    """Decode images by key on first use, keeping the most recent ones in memory.

    ``read(key)`` returns the encoded bytes; ``describe(key)`` names where the
    image lives, for error messages; ``landmarks(key)``, where the dataset ships
    them, gives the face's 5 points (eyes, nose, mouth corners) as a (5, 2)
    array in the image's pixel coordinates, else None; ``exists(key)`` is a
    cheap presence test (a file's existence), by default a successful read;
    ``path(key)``, for images stored as files, is the file (None otherwise).
    Each may raise :class:`DatasetError` for a key it refuses (e.g. a path
    leading out of the dataset).
    """

    def __init__(self, read: Callable[[str], bytes], describe: Callable[[str], str], *,
                 landmarks: Callable[[str], np.ndarray | None] | None = None,
                 exists: Callable[[str], bool] | None = None, path: Callable[[str], Path] | None = None,
                 cache_size: int = 256):
        self._read, self.describe, self._cache_size = read, describe, cache_size
        self._landmarks, self._exists, self._path = landmarks, exists, path
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()
        self._scale: dict[str, tuple[float, float]] = {}  # key → (x, y) factor, for images :meth:`load` downscaled

    def landmarks(self, key: str) -> np.ndarray | None:
        """The face's 5 points, in the coordinates of the image :meth:`load` returns."""
        points = self._landmarks(key) if self._landmarks else None
        return points * np.array(self._scale[key]) if points is not None and key in self._scale else points

    def path(self, key: str) -> Path | None:
        return self._path(key) if self._path else None

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
        """The image as 8-bit RGB, at most :data:`MAX_SIDE` pixels on its long side.

        16-bit images (and 32-bit integer ones holding 0–65535) are scaled from
        0–65535, float images from 0–1. A larger image is downscaled (a JPEG
        while it is decoded, so it never takes its full size in memory), and
        its landmarks with it; one that would take more than :data:`MAX_PIXELS`
        to decode is refused. A missing, non-regular, undecodable or refused
        file raises :class:`DatasetError` naming it.
        """
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            with warnings.catch_warnings():  # PIL's own bomb warning; the limit below is facebench's
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(self._read(key)))
            full = image.size
            if image.format == "JPEG" and max(full) > MAX_SIDE:
                image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale
            if image.size[0] * image.size[1] > MAX_PIXELS:
                raise ValueError(f"{full[0]}×{full[1]} pixels is more than facebench decodes "
                                 f"({MAX_PIXELS // 10**6} megapixels); downscale it")
            image.load()  # decode now: a truncated file fails here, not later
            image = _rgb(image)
        except DatasetError:  # the source refused the key; it says why
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder fed a hostile file fails in many ways
            raise DatasetError(f"cannot read image {self.describe(key)}: {exc}") from exc
        if max(image.size) > MAX_SIDE:
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        if image.size != full:
            self._scale[key] = (image.size[0] / full[0], image.size[1] / full[1])
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
    return read_yaml(path)


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
    images = ImageSource(lambda k: read_regular(folder / files[k]), lambda k: str(folder / files[k]),
                         exists=lambda k: (folder / files[k]).is_file())
    info = {"full_name": doc["full_name"], "expected_pairs": doc["expected_pairs"], "n_folds_expected": doc["n_folds"],
            "layout": "facebench demo (PNG crops + manifest)", "location": str(folder),
            "identities": {im["id"]: im["identity"] for im in doc["images"]}}
    return Dataset("demo", pairs, images, info, hashes)
