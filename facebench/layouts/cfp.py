"""CFP (Celebrities in Frontal-Profile) as its authors ship it: ``Protocol/`` + ``Data/Images/``.

``Protocol/Pair_list_F.txt`` and ``Pair_list_P.txt`` number the frontal and
profile images, one ``index path`` per line, the path relative to
``Protocol/`` (``../Data/Images/001/frontal/01.jpg``).
``Protocol/Split/{FF,FP}/01..10/{same,diff}.txt`` hold the pairs of each fold
as ``i,j`` lines: for FF both indices are frontal, for FP ``i`` is frontal and
``j`` profile. Each fold has 350 same and 350 different pairs (7,000 in all);
pairs are numbered fold by fold, same before diff. The archive unpacks to
``cfp-dataset/``, which is accepted as well as its contents.
"""
from __future__ import annotations

import posixpath
from pathlib import Path

from facebench.datasets import LOADERS, Dataset, DatasetError
from facebench.layouts import Layout, folder_images, info, load_first, pairs_frame, protocol_checksum, read_lines
from facebench.layouts.insightface_bin import bin_layout

FRONTAL, PROFILE = "Protocol/Pair_list_F.txt", "Protocol/Pair_list_P.txt"


def read_pair_list(folder: Path, rel: str) -> dict[int, str]:
    """Image index → image path relative to ``folder``, from a ``Pair_list_*.txt``."""
    path, images = folder / rel, {}
    for lineno, line in read_lines(path):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f"{path}:{lineno}: expected 'index path', got {line!r}")
        index, image = int(fields[0]), posixpath.normpath(posixpath.join("Protocol", fields[1].replace("\\", "/")))
        if image.startswith("../") or posixpath.isabs(image):
            raise DatasetError(f"{path}:{lineno}: image path {fields[1]!r} points outside {folder}")
        if index in images:
            raise DatasetError(f"{path}:{lineno}: index {index} is listed twice")
        images[index] = image
    return images


def split_folders(folder: Path, protocol: str) -> list[Path]:
    """``Protocol/Split/<protocol>/01`` … in fold order."""
    split = folder / "Protocol" / "Split" / protocol
    return sorted((p for p in split.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def read_cfp(folder: Path, layout: Layout, doc: dict) -> Dataset:
    """A :class:`Layout` reader for CFP's protocol files; ``doc["cfp_protocol"]`` is FF or FP."""
    protocol = doc["cfp_protocol"]
    first = read_pair_list(folder, FRONTAL)
    second = first if protocol == "FF" else read_pair_list(folder, PROFILE)
    lists = [FRONTAL] if protocol == "FF" else [FRONTAL, PROFILE]
    fold, image_a, image_b, same, files = [], [], [], [], []
    for k, split in enumerate(split_folders(folder, protocol)):
        for kind in ("same", "diff"):
            path = split / f"{kind}.txt"
            if not path.is_file():
                raise DatasetError(f"{path} is missing: every fold of Protocol/Split/{protocol} has same.txt "
                                   "and diff.txt")
            files.append(path.relative_to(folder).as_posix())
            for lineno, line in read_lines(path):
                try:
                    i, j = (int(v) for v in line.replace(",", " ").split())
                except ValueError:
                    raise DatasetError(f"{path}:{lineno}: expected 'i,j' image indices, got {line!r}") from None
                for index, images, listed in ((i, first, FRONTAL), (j, second, lists[-1])):
                    if index not in images:
                        raise DatasetError(f"{path}:{lineno}: index {index} is not in {listed}")
                fold.append(k)
                image_a.append(first[i])
                image_b.append(second[j])
                same.append(kind == "same")
    if not fold:
        raise DatasetError(f"{folder / 'Protocol' / 'Split' / protocol}: no fold folders (01, 02, …) with pairs")
    meta = info(doc, layout, folder, protocol_files=lists + files, image_files=True)
    return Dataset(doc["name"], pairs_frame(fold, image_a, image_b, same), folder_images(folder, "Data/Images"), meta,
                   source_checksum=protocol_checksum(folder, lists + files, layout))


def layouts(name: str, protocol: str) -> list[Layout]:
    needs = (FRONTAL,) + ((PROFILE,) if protocol == "FP" else ()) + (f"Protocol/Split/{protocol}", "Data/Images")
    return [
        bin_layout(name),
        Layout(f"CFP Protocol/ + Data/Images/ ({protocol})", needs, read_cfp),
        Layout(f"CFP cfp-dataset/Protocol/ + Data/Images/ ({protocol}, as unpacked)", needs, read_cfp,
               base="cfp-dataset"),
    ]


CFP_FF_LAYOUTS = layouts("cfp_ff", "FF")
CFP_FP_LAYOUTS = layouts("cfp_fp", "FP")


@LOADERS.register("cfp_ff")
def load_cfp_ff(root: Path) -> Dataset:
    """CFP frontal–frontal, 7,000 pairs: ``cfp_ff.bin``, else CFP's ``Protocol/`` (Split/FF) + ``Data/Images/``."""
    return load_first("cfp_ff", root, CFP_FF_LAYOUTS)


@LOADERS.register("cfp_fp")
def load_cfp_fp(root: Path) -> Dataset:
    """CFP frontal–profile, 7,000 pairs: ``cfp_fp.bin``, else CFP's ``Protocol/`` (Split/FP) + ``Data/Images/``."""
    return load_first("cfp_fp", root, CFP_FP_LAYOUTS)
