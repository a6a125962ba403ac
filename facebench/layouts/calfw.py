"""CALFW and CPLFW pair lists: ``pairs_CALFW.txt`` / ``pairs_CPLFW.txt`` with their image folder.

Two consecutive lines ``filename label`` make a pair; the label is 0 on both
lines of a mismatched pair and positive on both lines of a matched one (the
published lists give 1; a positive label is accepted whatever its value). The
list has the 3,000 matched pairs first, then the 3,000 mismatched ones; fold
``k`` is the ``k``-th tenth of each: matched[300k:300k+300] +
mismatched[300k:300k+300]. Images lie flat in ``aligned images/`` (the
aligned crops the authors ship) or ``images/``.
"""
from __future__ import annotations

from pathlib import Path

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


def read_two_line_pairs(path: Path) -> list[tuple[str, str, bool]]:
    """(file_a, file_b, same) for each pair of consecutive ``filename label`` lines.

    Raises
    ------
    DatasetError
        A line is not ``filename label``, the number of lines is odd, or the
        two lines of a pair disagree on matched/mismatched; the message names
        the file and lines.
    """
    lines = read_lines(path)
    if len(lines) % 2:
        raise DatasetError(f"{path}: {len(lines)} lines; pairs take two lines each, so the count must be even")
    entries = []
    for lineno, line in lines:
        fields = line.split()
        try:
            if len(fields) != 2 or int(fields[1]) < 0:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: expected 'filename label' with label 0 or positive, "
                               f"got {line!r}") from None
        entries.append((lineno, fields[0], int(fields[1]) > 0))
    pairs = []
    for (la, a, same_a), (lb, b, same_b) in zip(entries[0::2], entries[1::2]):
        if same_a != same_b:
            raise DatasetError(f"{path}:{la}-{lb}: the two lines of pair {len(pairs)} disagree: one says matched "
                               "(label > 0), the other mismatched (label 0)")
        pairs.append((a, b, same_a))
    return pairs


def class_folds(same: list[bool]) -> list[int]:
    """Fold ``k`` = the ``k``-th tenth of the matched pairs and of the mismatched pairs, in list order.

    >>> class_folds([True] * 20 + [False] * 20)[::2]
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    folds = [0] * len(same)
    for label in (True, False):
        members = [i for i, s in enumerate(same) if s == label]
        for i, fold in zip(members, contiguous_folds(len(members))):
            folds[i] = int(fold)
    return folds


def read_calfw(folder: Path, layout: Layout, doc: dict) -> Dataset:
    """A :class:`Layout` reader for a two-line pair list + an image folder."""
    pairs_file, images = layout.needs
    pairs = read_two_line_pairs(folder / pairs_file)
    same = [s for _, _, s in pairs]
    table = pairs_frame(class_folds(same), [f"{images}/{a}" for a, _, _ in pairs],
                        [f"{images}/{b}" for _, b, _ in pairs], same)
    meta = info(doc, layout, folder, protocol_files=[pairs_file], image_files=True)
    return Dataset(doc["name"], table, folder_images(folder, images), meta,
                   source_checksum=protocol_checksum(folder, [pairs_file], layout))


def layouts(name: str, pairs_file: str) -> list[Layout]:
    label = name.upper()
    return [
        bin_layout(name),
        Layout(f"{label} {pairs_file} + aligned images/", (pairs_file, "aligned images"), read_calfw),
        Layout(f"{label} {pairs_file} + images/", (pairs_file, "images"), read_calfw),
    ]


CALFW_LAYOUTS = layouts("calfw", "pairs_CALFW.txt")
CPLFW_LAYOUTS = layouts("cplfw", "pairs_CPLFW.txt")


@LOADERS.register("calfw")
def load_calfw(root: Path) -> Dataset:
    """Cross-Age LFW, 6,000 pairs: ``calfw.bin``, else ``pairs_CALFW.txt`` + ``aligned images/`` or ``images/``."""
    return load_first("calfw", root, CALFW_LAYOUTS)


@LOADERS.register("cplfw")
def load_cplfw(root: Path) -> Dataset:
    """Cross-Pose LFW, 6,000 pairs: ``cplfw.bin``, else ``pairs_CPLFW.txt`` + ``aligned images/`` or ``images/``."""
    return load_first("cplfw", root, CPLFW_LAYOUTS)
