"""Small copies of the public verification sets in their real on-disk formats, built in a temp folder.

Each ``make_*`` writes the files a user would have (with the exact line
formats of the published lists) and returns what the loader must read back:
a list of ``(fold, image_a, image_b, same, group)`` rows in protocol order.
"""
from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg_bytes(seed: int, size: int = 32) -> bytes:
    """A small, valid JPEG of noise (noise so that truncating it breaks the decode)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def seed_of(*parts) -> int:
    """A seed that is the same in every process (``hash`` of a str is not)."""
    return zlib.crc32(repr(parts).encode())


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(seed))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------ insightface .bin


def py2_bin(blobs: list[bytes], issame: list[bool]) -> bytes:
    """``pickle.dump((bins, issame_list), f, protocol=2)`` as Python 2 writes it: ``str`` blobs as
    (SHORT_)BINSTRING, each object memoised with (LONG_)BINPUT, as insightface's packing scripts produced."""
    out, memo = [b"\x80\x02"], 0

    def put():
        nonlocal memo
        out.append(b"q" + bytes([memo]) if memo < 256 else b"r" + struct.pack("<I", memo))
        memo += 1

    out.append(b"]")
    put()
    out.append(b"(")
    for blob in blobs:
        out.append(b"U" + bytes([len(blob)]) + blob if len(blob) < 256 else b"T" + struct.pack("<I", len(blob)) + blob)
        put()
    out.append(b"e]")
    put()
    out.append(b"(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e\x86")
    put()
    out.append(b".")
    return b"".join(out)


def make_bin(folder: Path, name: str, n_pairs: int, *, style: str = "py2", n_distinct: int | None = None):
    """``<folder>/<name>.bin`` with ``n_pairs`` pairs; returns (rows, blobs).

    ``style`` is ``py2`` (bytes blobs as Python 2 wrote them), ``numpy``
    (cv2.imencode-like (n, 1) uint8 arrays, protocol 4) or ``numpy2`` (the same
    at protocol 2, as Python 3 writes it). ``n_distinct`` cycles that many
    different JPEGs (quicker for large files).
    """
    folder.mkdir(parents=True, exist_ok=True)
    distinct = [jpeg_bytes(i, size=16) for i in range(min(2 * n_pairs, n_distinct or 2 * n_pairs))]
    blobs = [distinct[i % len(distinct)] for i in range(2 * n_pairs)]
    issame = [(i // 2) % 2 == 0 for i in range(n_pairs)]  # alternate, so every fold has both classes
    if style == "py2":
        data = py2_bin(blobs, issame)
    else:
        arrays = [np.frombuffer(b, np.uint8).reshape(-1, 1) for b in blobs]
        data = pickle.dumps((arrays, [np.bool_(s) for s in issame]), protocol=4 if style == "numpy" else 2)
    (folder / f"{name}.bin").write_bytes(data)
    folds = [i * 10 // n_pairs for i in range(n_pairs)]
    return [(folds[i], f"#{2 * i}", f"#{2 * i + 1}", issame[i], None) for i in range(n_pairs)], blobs


# ------------------------------------------------------------------ LFW and RFW


def lfw_pairs(n_sets: int, per_kind: int, *, names=("Aaron_Peirsol", "George_W_Bush", "Serena_Williams",
                                                   "Zico")) -> list[list[tuple]]:
    """Per set: ``per_kind`` matched pairs ``(name, n1, n2)`` then ``per_kind`` mismatched ``(a, n1, b, n2)``."""
    sets = []
    for s in range(n_sets):
        same = [(names[(s + i) % len(names)], i + 1, i + 2 + s) for i in range(per_kind)]
        diff = [(names[i % len(names)], s + 1, names[(i + 1) % len(names)], i + 1) for i in range(per_kind)]
        sets.append(same + diff)
    return sets


def lfw_line(pair: tuple) -> str:
    return "\t".join(str(v) for v in pair)


def lfw_key(folder: str, name: str, n: int) -> str:
    return f"{folder}/{name}/{name}_{n:04d}.jpg"


def make_lfw(folder: Path, n_sets: int = 10, per_kind: int = 2, *, images: str = "lfw",
             write_images: bool = True, names: tuple[str, ...] | None = None) -> list[tuple]:
    """``pairs.txt`` (header ``<sets>\\t<per kind>``) and the JPEGs it names under ``images/``;
    ``names`` (default: four) are the people of :func:`lfw_pairs`."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = lfw_pairs(n_sets, per_kind, **({"names": names} if names else {}))
    lines = [f"{n_sets}\t{per_kind}"] + [lfw_line(p) for pairs in sets for p in pairs]
    (folder / "pairs.txt").write_text("\n".join(lines) + "\n")
    rows = []
    for fold, pairs in enumerate(sets):
        for p in pairs:
            a, b = (lfw_key(images, p[0], p[1]), lfw_key(images, p[0], p[2])) if len(p) == 3 else \
                (lfw_key(images, p[0], p[1]), lfw_key(images, p[2], p[3]))
            rows.append((fold, a, b, len(p) == 3, None))
    if write_images:
        for key in dict.fromkeys(k for r in rows for k in r[1:3]):
            write_image(folder / key, seed=seed_of(key))
    return rows


RACES = ("African", "Asian", "Caucasian", "Indian")


def rfw_landmarks(ident: str, n: int) -> np.ndarray:
    """Distinct, plausible 5 points (400×400 RFW images) for image ``n`` of ``ident``."""
    base = np.array([[150.0, 180.0], [250.0, 180.0], [200.0, 230.0], [160.0, 280.0], [240.0, 280.0]])
    return base + n + (sum(map(ord, ident)) % 7) / 4


def make_rfw(folder: Path, per_race: int = 20, *, landmarks: bool = True, n_ids: int = 3) -> list[tuple]:
    """``txts/<Race>/<Race>_pairs.txt`` (LFW lines, no header), ``txts/<Race>/<Race>_lmk.txt`` and
    ``data/<Race>/<id>/<id>_<nnnn>.jpg`` (``n_ids`` people of two images per race); per race, each
    tenth is half matched, half mismatched."""
    rows = []
    for race in RACES:
        ids = [f"m.0{race[:2].lower()}{k}x" for k in range(n_ids)]
        lines, race_rows = [], []
        block = per_race // 10
        for i in range(per_race):
            fold = i * 10 // per_race
            if i % block < block // 2:
                p = (ids[i % n_ids], 1, 2)
                a, b = (p[0], 1), (p[0], 2)
            else:
                p = (ids[i % n_ids], 1, ids[(i + 1) % n_ids], 2)
                a, b = (p[0], 1), (p[2], 2)
            lines.append(lfw_line(p))
            race_rows.append((fold, lfw_key(f"data/{race}", *a), lfw_key(f"data/{race}", *b), len(p) == 3, race))
        txts = folder / "txts" / race
        txts.mkdir(parents=True, exist_ok=True)
        (txts / f"{race}_pairs.txt").write_text("\n".join(lines) + "\n")
        lmk = []
        for index, ident in enumerate(ids):
            for n in (1, 2):
                write_image(folder / lfw_key(f"data/{race}", ident, n), seed=seed_of((race, ident, n)))
                xy = rfw_landmarks(ident, n).ravel()
                lmk.append("\t".join([f"./{race}/{ident}/{ident}_{n:04d}.jpg", str(index)]
                                     + [f"{v:.2f}" for v in xy]))
        if landmarks:
            (txts / f"{race}_lmk.txt").write_text("\n".join(lmk) + "\n")
        rows += race_rows
    return rows


# ------------------------------------------------------------------ CALFW / CPLFW


def make_calfw(folder: Path, pairs_file: str = "pairs_CALFW.txt", *, n_pos: int = 20, n_neg: int = 20,
               images: str = "aligned images", numbered: bool = False) -> list[tuple]:
    """A two-line-per-pair list (matched first, then mismatched) and its flat image folder.
    ``numbered`` labels matched pairs 1, 2, 3, … instead of 1."""
    names = ["Abel_Pacheco", "Carl_Reiner", "Ian_Smith", "Bernard_Law"]
    lines, rows = [], []
    for i in range(n_pos):
        name, label = names[i % 4], (i + 1 if numbered else 1)
        a, b = f"{name}_{i + 1:04d}.jpg", f"{name}_{i + 2:04d}.jpg"
        lines += [f"{a} {label}", f"{b} {label}"]
        rows.append((i * 10 // n_pos, f"{images}/{a}", f"{images}/{b}", True, None))
    for i in range(n_neg):
        a, b = f"{names[i % 4]}_{i + 1:04d}.jpg", f"{names[(i + 1) % 4]}_{i + 3:04d}.jpg"
        lines += [f"{a} 0", f"{b} 0"]
        rows.append((i * 10 // n_neg, f"{images}/{a}", f"{images}/{b}", False, None))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / pairs_file).write_text("\n".join(lines) + "\n")
    for key in dict.fromkeys(k for r in rows for k in r[1:3]):
        write_image(folder / key, seed=seed_of(key))
    return rows


# ------------------------------------------------------------------ CFP


def make_cfp(folder: Path, protocol: str, *, n_ids: int = 4, per_kind: int = 2, n_folds: int = 10) -> list[tuple]:
    """``Protocol/Pair_list_{F,P}.txt`` (``index path``, paths relative to Protocol/),
    ``Protocol/Split/{FF,FP}/NN/{same,diff}.txt`` (``i,j``) and ``Data/Images/<id>/{frontal,profile}/NN.jpg``."""
    frontal, profile = {}, {}
    for ident in range(1, n_ids + 1):
        for n in (1, 2):
            frontal[len(frontal) + 1] = f"Data/Images/{ident:03d}/frontal/{n:02d}.jpg"
            profile[len(profile) + 1] = f"Data/Images/{ident:03d}/profile/{n:02d}.jpg"
    proto = folder / "Protocol"
    proto.mkdir(parents=True, exist_ok=True)
    for file, images in (("Pair_list_F.txt", frontal), ("Pair_list_P.txt", profile)):
        (proto / file).write_text("".join(f"{i} ../{p}\n" for i, p in images.items()))
        for p in images.values():
            write_image(folder / p, seed=seed_of(p))
    second = frontal if protocol == "FF" else profile
    rows = []
    for k in range(n_folds):
        split = proto / "Split" / protocol / f"{k + 1:02d}"
        split.mkdir(parents=True, exist_ok=True)
        same = [(2 * ((k + i) % n_ids) + 1, 2 * ((k + i) % n_ids) + 2) for i in range(per_kind)]
        diff = [(2 * ((k + i) % n_ids) + 1, 2 * ((k + i + 1) % n_ids) + 2) for i in range(per_kind)]
        for kind, pairs in (("same", same), ("diff", diff)):
            (split / f"{kind}.txt").write_text("".join(f"{i},{j}\n" for i, j in pairs))
            rows += [(k, frontal[i], second[j], kind == "same", None) for i, j in pairs]
    return rows


# ------------------------------------------------------------------ AgeDB


def pts_text(points: np.ndarray) -> str:
    """A 68-point iBUG ``.pts`` file."""
    return "version: 1\nn_points:  68\n{\n" + "".join(f"{x:.3f} {y:.3f}\n" for x, y in points) + "}\n"


def make_agedb(folder: Path, *, n_folds: int = 10, per_kind: int = 2, pts: bool = True,
               n_people: int | None = None) -> list[tuple]:
    """``04_FINAL_protocol_30_years.mat`` (``splits``: per fold a struct of a 2×N cell of image
    structs and N labels ±1, as read by insightface's agedb2pack2.py) and ``03_Protocol_Images/``;
    ``n_people`` (default: four named ones) people of two images each."""
    from scipy.io import savemat

    people = [f"Person{k:04d}" for k in range(n_people)] if n_people else \
        ["MariaCallas", "AlbertEinstein", "BetteDavis", "CaryGrant"]
    number, n_p = {person: k for k, person in enumerate(people)}, len(people)
    splits = np.empty((n_folds, 1), dtype=object)
    rows = []
    for k in range(n_folds):
        pairs = [((people[(k + i) % n_p], 0), (people[(k + i) % n_p], 1), 1) for i in range(per_kind)]
        pairs += [((people[(k + i) % n_p], 0), (people[(k + i + 1) % n_p], 1), -1) for i in range(per_kind)]
        cell = np.empty((2, len(pairs)), dtype=object)
        for j, (a, b, _) in enumerate(pairs):
            for r, (person, n) in enumerate((a, b)):
                name = f"{number[person]}{n}_{person}_{30 + 40 * n}_m"
                cell[r, j] = {"name": name, "age": float(30 + 40 * n)}
        labels = np.array([[lab for _, _, lab in pairs]], dtype=float)
        splits[k, 0] = {"pairs": cell, "labels": labels}
        rows += [(k, f"03_Protocol_Images/{cell[0, j]['name']}.jpg", f"03_Protocol_Images/{cell[1, j]['name']}.jpg",
                  lab == 1, None) for j, (_, _, lab) in enumerate(pairs)]
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / "04_FINAL_protocol_30_years.mat", {"splits": splits})
    for key in dict.fromkeys(k for r in rows for k in r[1:3]):
        write_image(folder / key, seed=seed_of(key))
        if pts:
            (folder / key).with_suffix(".pts").write_text(pts_text(agedb_points(key)))
    return rows


def agedb_points(key: str) -> np.ndarray:
    """68 distinct points for an image; the five derived ones are checked against these."""
    rng = np.random.default_rng(sum(map(ord, key)))
    return rng.uniform(20, 200, (68, 2)).round(3)
