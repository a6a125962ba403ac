"""LFW's ``pairs.txt`` and RFW, which lists its pairs in the same line format.

LFW ``pairs.txt`` (http://vis-www.cs.umass.edu/lfw/README.txt, section 3c):
a header ``<sets>\\t<pairs per kind>``, then per set first the matched pairs
``name\\tn1\\tn2``, then the mismatched ones ``name1\\tn1\\tname2\\tn2``; set
``k`` is fold ``k``. Image ``n`` of ``name`` is ``<name>/<name>_<nnnn>.jpg``
in ``lfw/`` (the original) or ``lfw-deepfunneled/``.

RFW (http://whdeng.cn/RFW/): per race ``txts/<Race>/<Race>_pairs.txt`` with
the same two line forms and no header, images
``data/<Race>/<id>/<id>_<nnnn>.jpg``; 6,000 pairs per race, folds are 10
contiguous blocks of each race's list (300 matched then 300 mismatched pairs
each in the published lists). ``txts/<Race>/<Race>_lmk.txt`` gives five
points per image: ``path  label  x1 y1 … x5 y5`` (left eye, right eye, nose,
left and right mouth corner, in image pixels), the order bob.bio.face's RFW
interface and other public readers use.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facebench.datasets import LOADERS, Dataset, DatasetError
from facebench.layouts import (
    Layout,
    contiguous_folds,
    folder_images,
    info,
    load_first,
    pairs_frame,
    protocol_checksum,
    read_lines,
)
from facebench.layouts.insightface_bin import bin_layout

RFW_RACES = ("African", "Asian", "Caucasian", "Indian")


def parse_pair_line(line: str, *, where: str) -> tuple[str, int, str, int, bool]:
    """``name n1 n2`` (same person) or ``name1 n1 name2 n2`` → (name_a, n_a, name_b, n_b, same).

    >>> parse_pair_line("George_W_Bush\\t10\\t24", where="pairs.txt:2")
    ('George_W_Bush', 10, 'George_W_Bush', 24, True)
    """
    fields = line.split()
    try:
        if len(fields) == 3:
            return fields[0], int(fields[1]), fields[0], int(fields[2]), True
        if len(fields) == 4:
            return fields[0], int(fields[1]), fields[2], int(fields[3]), False
    except ValueError:
        pass
    raise DatasetError(f"{where}: expected 'name n1 n2' or 'name1 n1 name2 n2' (image numbers), got {line!r}")


def image_path(folder: str, name: str, number: int) -> str:
    """Image ``number`` of ``name`` under ``folder``, as LFW and RFW name their files.

    >>> image_path("lfw", "George_W_Bush", 10)
    'lfw/George_W_Bush/George_W_Bush_0010.jpg'
    """
    return f"{folder}/{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(path: Path) -> tuple[list[tuple[str, int, str, int, bool]], list[int]]:
    """The pairs of an LFW ``pairs.txt`` and each pair's fold (its set).

    Raises
    ------
    DatasetError
        The header is not ``<sets> <pairs per kind>``, the file does not hold
        what the header announces, or a set's pair is of the wrong kind; the
        message names the file and line.
    """
    lines = read_lines(path)
    if not lines:
        raise DatasetError(f"{path}: empty file")
    (hline, header), body = lines[0], lines[1:]
    try:
        n_sets, per_kind = (int(v) for v in header.split())
    except ValueError:
        raise DatasetError(f"{path}:{hline}: expected the header '<sets> <pairs per kind>', got {header!r}") from None
    if len(body) != n_sets * 2 * per_kind:
        raise DatasetError(f"{path}: the header announces {n_sets} sets of {per_kind} matched + {per_kind} "
                           f"mismatched pairs ({n_sets * 2 * per_kind} lines), the file has {len(body)} pair lines")
    pairs, folds = [], []
    for i, (lineno, line) in enumerate(body):
        fold, position = divmod(i, 2 * per_kind)
        same_expected = position < per_kind
        pair = parse_pair_line(line, where=f"{path}:{lineno}")
        if pair[4] != same_expected:
            kind = "a matched pair 'name n1 n2'" if same_expected else "a mismatched pair 'name1 n1 name2 n2'"
            raise DatasetError(f"{path}:{lineno}: set {fold + 1} expects {kind} here, got {line!r}")
        pairs.append(pair)
        folds.append(fold)
    return pairs, folds


def read_lfw(folder: Path, layout: Layout, doc: dict) -> Dataset:
    """A :class:`Layout` reader for ``pairs.txt`` + an image folder."""
    pairs_file, images = layout.needs
    pairs, folds = read_lfw_pairs(folder / pairs_file)
    table = pairs_frame(folds, [image_path(images, a, na) for a, na, _, _, _ in pairs],
                        [image_path(images, b, nb) for _, _, b, nb, _ in pairs], [p[4] for p in pairs])
    meta = info(doc, layout, folder, protocol_files=[pairs_file], image_files=True)
    return Dataset(doc["name"], table, folder_images(folder, images), meta,
                   source_checksum=protocol_checksum(folder, [pairs_file], layout))


LFW_LAYOUTS = [
    bin_layout("lfw"),
    Layout("LFW pairs.txt + lfw/", ("pairs.txt", "lfw"), read_lfw),
    Layout("LFW pairs.txt + lfw-deepfunneled/", ("pairs.txt", "lfw-deepfunneled"), read_lfw),
]


@LOADERS.register("lfw")
def load_lfw(root: Path) -> Dataset:
    """LFW, 6,000 pairs in 10 folds: ``lfw.bin``, else ``pairs.txt`` with ``lfw/``, else with ``lfw-deepfunneled/``."""
    return load_first("lfw", root, LFW_LAYOUTS)


# ------------------------------------------------------------------ RFW


def rfw_pairs_file(race: str) -> str:
    return f"txts/{race}/{race}_pairs.txt"


def rfw_landmarks_file(race: str) -> str:
    return f"txts/{race}/{race}_lmk.txt"


def read_rfw_landmarks(path: Path, race: str) -> dict[str, np.ndarray]:
    """Image key (``data/<Race>/<id>/<file>``) → (5, 2) points, from ``<Race>_lmk.txt``.

    Lines are ``path  label  x1 y1 … x5 y5``; only the last two parts of the
    path (``<id>/<file>``) are used, since the published files prefix them
    differently.
    """
    points = {}
    for lineno, line in read_lines(path):
        fields = line.split()
        try:
            if len(fields) != 12:
                raise ValueError(f"{len(fields)} fields")
            xy = np.array([float(v) for v in fields[2:]]).reshape(5, 2)
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: expected 'path label x1 y1 ... x5 y5' ({exc}), "
                               f"got {line!r}") from None
        ident, file = fields[0].replace("\\", "/").split("/")[-2:]
        points[f"data/{race}/{ident}/{file}"] = xy
    return points


def read_rfw(folder: Path, layout: Layout, doc: dict) -> Dataset:
    """A :class:`Layout` reader for RFW's ``txts/`` + ``data/``: one group per race."""
    fold, image_a, image_b, same, group = [], [], [], [], []
    for race in RFW_RACES:
        path = folder / rfw_pairs_file(race)
        pairs = [parse_pair_line(line, where=f"{path}:{lineno}") for lineno, line in read_lines(path)]
        fold += contiguous_folds(len(pairs)).tolist()
        image_a += [image_path(f"data/{race}", a, na) for a, na, _, _, _ in pairs]
        image_b += [image_path(f"data/{race}", b, nb) for _, _, b, nb, _ in pairs]
        same += [p[4] for p in pairs]
        group += [race] * len(pairs)

    parsed: dict[str, dict | DatasetError] = {}  # per race, parsed on first use; a broken file fails fast after

    def race_landmarks(race: str) -> dict[str, np.ndarray]:
        if race not in parsed:
            path = folder / rfw_landmarks_file(race)
            try:
                parsed[race] = read_rfw_landmarks(path, race) if path.is_file() else {}
            except DatasetError as exc:
                parsed[race] = exc
        if isinstance(parsed[race], DatasetError):
            raise parsed[race]
        return parsed[race]

    def landmarks(key: str) -> np.ndarray | None:
        race = key.split("/")[1]
        return race_landmarks(race).get(key) if race in RFW_RACES else None

    files = [rfw_pairs_file(r) for r in RFW_RACES]
    landmark_files = [rfw_landmarks_file(r) for r in RFW_RACES if (folder / rfw_landmarks_file(r)).is_file()]
    meta = info(doc, layout, folder, protocol_files=files + landmark_files, image_files=True,
                expected_pairs_per_group=doc.get("expected_pairs_per_group"))
    return Dataset(doc["name"], pairs_frame(fold, image_a, image_b, same, group),
                   folder_images(folder, "data", landmarks=landmarks), meta,
                   source_checksum=protocol_checksum(folder, files, layout))


RFW_LAYOUTS = [
    Layout("RFW txts/ + data/", (*(rfw_pairs_file(r) for r in RFW_RACES), "data"), read_rfw),
    Layout("RFW test/txts/ + test/data/ (as unpacked)", (*(rfw_pairs_file(r) for r in RFW_RACES), "data"), read_rfw,
           base="test"),
]


@LOADERS.register("rfw")
def load_rfw(root: Path) -> Dataset:
    """RFW, about 6,000 pairs per race in 10 folds each; ``group`` is the race."""
    return load_first("rfw", root, RFW_LAYOUTS)
