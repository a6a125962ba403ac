"""Per-pair results made elsewhere, stored as a facebench run (``facebench import``).

Scores from vLLM on a cluster, or another lab's per-pair outputs, become an
ordinary run folder (``pairs.sqlite`` and ``manifest.json``, see
:mod:`facebench.store`), so grids, books and :func:`facebench.open_run` read
them like a run scored here. The manifest records the imported file and its
sha256 under ``imported``. A file is checked whole before anything is written:
every pair of the dataset exactly once, every value readable.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

from facebench.files import file_sha256
from facebench.integrity import preflight
from facebench.provenance import git_state, now, versions
from facebench.scoring import Run, RunError, check_dataset_identity, open_run, run_manifest

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}
COLUMNS = ("pair_id", "image_a", "image_b", "score", "decision", "raw_output")
DECISIONS = {"1": 1, "0": 0, "-1": -1, "true": 1, "false": 0, "yes": 1, "no": 0, "same": 1, "different": 0,
             "invalid": -1}
MISSING = {"", "nan", "null", "none", "na"}  # an empty cell, or what exporters write for a missing value
SHOWN = 10  # errors listed in one message; the rest are counted


def import_results(path, *, model: str, dataset, root=None, out=None, settings: dict | None = None) -> Run:
    """Store the per-pair results in ``path`` as the run of ``model`` on ``dataset``.

    Parameters
    ----------
    path : str or Path
        A CSV (``.csv``, header on line 1) or JSON Lines (``.jsonl``) file with
        one row per pair of the dataset: ``pair_id``, or ``image_a`` and
        ``image_b`` (the dataset's image keys, in either order); ``score``
        (higher = more likely the same person; empty, NaN or null where the
        model gave no usable output); optional ``decision`` (1/0/-1,
        true/false, yes/no, same/different, invalid) and ``raw_output`` (a
        non-string JSON value is stored as its JSON text).
    model : str
        The model that made the results, as any spec :func:`facebench.models.resolve`
        takes (``qwen2.5-vl-7b``, ``hf:<hub id>``, ``api:...``); its weights need not be here.
    dataset : str or Dataset
        The dataset the pairs belong to; it must pass :func:`~facebench.integrity.preflight`.
    root, out, settings
        As for :func:`facebench.scoring.open_run`: the data root, the results
        folder, and model settings (which make the run's identity).

    Returns
    -------
    Run
        The stored run; ``run.metrics()`` gives what scoring those results would.

    Raises
    ------
    ValueError
        Naming the file, and per bad row its line and pair (up to ten, then a
        count): an unknown extension or column, a pair not in the dataset or
        given twice, pairs missing, a score or decision that cannot be read.
        Nothing is written.
    RunError
        When the run's folder already holds results (an import never mixes
        with them), or they were made on other data.
    """
    path = Path(path).absolute()
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot import a {path.suffix or 'extensionless'} file; "
                         "accepted formats: CSV (.csv) and JSON Lines (.jsonl)")
    run = open_run(model, preflight(dataset, root), root=root, out=out, settings=settings)
    check_dataset_identity(run)
    store = run.store
    if store.manifest_path.exists() or len(store.rows()) or store.shards():
        raise RunError(f"{store.dir} already holds a run of {run.model} on {run.dataset.name} "
                       f"({store.read_manifest().get('status', 'no manifest')}); an import never mixes with other "
                       "results: use another --out, or move that folder away")
    try:
        records, errors = (_read_csv if fmt == "csv" else _read_jsonl)(path)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc}); save it as UTF-8") from None
    rows, found = _check(records, run, path, errors)
    errors = [text for _, text in sorted(found, key=lambda e: e[0])]  # in file order, whichever check found them
    if errors:
        more = f"\n  … and {len(errors) - SHOWN} more" if len(errors) > SHOWN else ""
        raise ValueError(f"cannot import {path}; nothing was imported:\n"
                         + "\n".join(f"  {e}" for e in errors[:SHOWN]) + f"{more}\n{len(errors)} error(s) in all")
    # The topmost folder this import creates, removed again if writing fails, so a failed
    # import leaves no run behind for a grid or a later import to trip over.
    new = next((p for p in reversed([store.dir, *store.dir.parents]) if not p.exists()), None)
    try:
        store.write(rows, run.full_dataset.checksum)
        store.write_manifest({**run_manifest(run), "versions": versions(), "git": git_state(), "status": "complete",
                              "updated": now(), "imported": {"file": str(path), "sha256": file_sha256(path),
                                                             "format": fmt, "rows": len(rows), "imported_at": now()}})
    except BaseException:
        if new is not None:
            shutil.rmtree(new, ignore_errors=True)
        raise
    return run


def _read_csv(path: Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line, cells) per row, empty cells left out, and (line, message) per error; a bad header raises."""
    records, errors = [], []
    # utf-8-sig: spreadsheets often save a byte-order mark, which would glue itself to the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file; expected a header line with {', '.join(COLUMNS)}")
            _check_columns(path, 1, header)
            line = reader.line_num + 1  # where the next record starts: a quoted value may span lines
            for fields in reader:
                if len(fields) != len(header) and any(fields):
                    errors.append((line, f"{path}:{line}: {len(fields)} fields, but the header has {len(header)}"))
                elif any(fields):
                    # Only empty cells are missing here: "None" may well be a model's raw output.
                    records.append((line, {k: v for k, v in zip(header, fields) if v != ""}))
                line = reader.line_num + 1
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
    return records, errors


def _read_jsonl(path: Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line, keys) per object, null values left out, and (line, message) per error."""
    records, errors = [], []
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                doc = json.loads(text)
            except ValueError as exc:
                errors.append((line, f"{path}:{line}: not a JSON object ({exc})"))
                continue
            if not isinstance(doc, dict):
                errors.append((line, f"{path}:{line}: not a JSON object but {type(doc).__name__}"))
                continue
            try:
                _check_columns(path, line, list(doc))
            except ValueError as exc:
                errors.append((line, str(exc)))
                continue
            records.append((line, {k: v for k, v in doc.items() if v is not None}))
    return records, errors


def _check_columns(path: Path, line: int, names: list[str]) -> None:
    unknown = [n for n in dict.fromkeys(names) if n not in COLUMNS]
    hint = (" (an imported pair is a result: leave its score empty where the model gave no usable output)"
            if "error" in unknown else "")
    for problem in (f"unknown column(s) {unknown}{hint}" if unknown else "",
                    "a column given twice" if len(set(names)) < len(names) else "",
                    "no score column" if "score" not in names else "",
                    "no pair_id, nor image_a and image_b" if not ("pair_id" in names or
                                                                  {"image_a", "image_b"} <= set(names)) else ""):
        if problem:
            raise ValueError(f"{path}:{line}: {problem}; accepted columns: {', '.join(COLUMNS)}")


def _check(records: list[tuple[int, dict]], run: Run, path: Path, errors: list) -> tuple[list[dict], list]:
    """The store rows of ``records``, and ``errors`` (line, message) with every problem of theirs added."""
    pairs = run.full_dataset.pairs
    images = dict(zip(pairs["pair_id"], zip(pairs["image_a"], pairs["image_b"])))
    by_images = defaultdict(list)
    for pid, (a, b) in images.items():
        by_images[a, b].append(pid)
    rows, seen = [], {}
    for line, rec in records:
        where = f"{path}:{line}"
        pid = rec.get("pair_id")
        key = tuple(None if rec.get(k) is None else str(rec[k]) for k in ("image_a", "image_b"))
        if pid is not None:
            pid = _integer(pid)
            if pid not in images:
                errors.append((line, f"{where}: pair_id {rec['pair_id']!r} is no pair of {run.full_dataset.name}"))
                continue
            if None not in key and key not in (images[pid], images[pid][::-1]):
                errors.append((line, f"{where}: pair {pid}: image_a, image_b {key} are not its images {images[pid]}"))
                continue
        else:
            found = by_images.get(key) or by_images.get(key[::-1]) or []
            if len(found) != 1:
                why = (f"no pair of {run.full_dataset.name}" if not found
                       else f"ambiguous, pairs {found} use these images; give pair_id")
                errors.append((line, f"{where}: pair {key}: {why}"))
                continue
            pid = found[0]
        if pid in seen:
            errors.append((line, f"{where}: pair {pid} given twice (first on line {seen[pid]})"))
            continue
        seen[pid] = line
        row = {"pair_id": pid, "seconds": None, "error": None}  # timing unknown; an imported pair is a result
        for column, parse in (("score", _score), ("decision", _decision)):
            try:
                row[column] = parse(rec.get(column))
            except ValueError as exc:
                errors.append((line, f"{where}: pair {pid}: {column} {rec[column]!r} {exc}"))
        raw = rec.get("raw_output")
        row["raw_output"] = raw if raw is None or isinstance(raw, str) else json.dumps(raw)
        rows.append(row)
    missing = pairs.loc[~pairs["pair_id"].isin(list(seen)), "pair_id"].tolist()
    if missing and (records or not errors):  # a file of nothing but bad lines says so already
        errors.append((math.inf, f"{path}: {len(missing)} of the {len(pairs)} pairs of {run.full_dataset.name} "
                                 f"have no row in the file, e.g. pair ids {missing[:5]}"))
    return rows, errors


def _integer(value) -> int | None:
    """``value`` as a whole number (``3``, ``"3"``, ``3.0`` as pandas writes ids beside NaNs), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _score(value) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in MISSING):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("is not a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("is not a number") from None
    if math.isinf(number):
        raise ValueError("is infinite; use an empty score for a pair without usable output")
    return None if math.isnan(number) else number


def _decision(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    text = "" if value is None else str(value).strip().lower()
    if text in MISSING:
        return None
    if text in DECISIONS:
        return DECISIONS[text]
    number = _integer(text)
    if number in (1, 0, -1):
        return number
    raise ValueError("is not a decision: 1/0/-1, true/false, yes/no, same/different or invalid")
