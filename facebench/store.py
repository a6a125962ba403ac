"""Per-pair results on disk: one SQLite file and one JSON manifest per run.

A run is identified by (model, dataset, settings hash) and lives in
``<out>/<model slug>/<dataset>/<hash>/``. Each batch of pairs is written in one
transaction, so a process killed at any moment leaves only whole batches; a
restarted run skips the pairs already there. WAL mode and a busy timeout let
two processes share one store; ``pair_id`` is the primary key, so a pair is
never stored twice.
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pandas as pd

from facebench.provenance import canonical_hash

ROW_COLUMNS = ["pair_id", "score", "decision", "raw_output", "seconds", "error"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    pair_id    INTEGER PRIMARY KEY,
    score      REAL,     -- higher = more similar; NULL when the model gave none
    decision   INTEGER,  -- 1 same, 0 different, -1 invalid answer, NULL when the model does not decide
    raw_output TEXT,
    seconds    REAL,
    error      TEXT      -- set when the pair could not be scored; such rows are retried
)
"""


def model_slug(spec: str) -> str:
    """A folder name for a model spec: ``hf:Qwen/Qwen2-VL-2B`` → ``hf-Qwen--Qwen2-VL-2B``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.replace("/", "--").replace(":", "-")).strip("-")


def write_json_atomic(path: Path, doc: dict) -> None:
    """Write ``doc`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a manifest is for every reader of the results
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunStore:
    """The results of one (model, dataset, settings) run."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.db_path = self.dir / "pairs.sqlite"
        self.manifest_path = self.dir / "manifest.json"

    @classmethod
    def for_run(cls, out, model: str, dataset: str, identity: dict) -> "RunStore":
        """The store for ``model`` on ``dataset`` whose settings are ``identity``."""
        return cls(Path(out) / model_slug(model) / dataset / canonical_hash(identity)[:12])

    def _connect(self) -> sqlite3.Connection:
        self.dir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        # Switching a new file to WAL takes a lock that SQLite's busy timeout does
        # not wait for, so two processes opening a fresh store retry here.
        for attempt in range(200):
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(_SCHEMA)
                return con
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    con.close()
                    raise
                time.sleep(0.05)

    def done_ids(self) -> set[int]:
        """Pairs with a stored result (rows with an error are not done)."""
        if not self.db_path.exists():
            return set()
        with closing(self._connect()) as con:
            return {r[0] for r in con.execute("SELECT pair_id FROM pairs WHERE error IS NULL")}

    def write(self, rows: list[dict]) -> None:
        """Store a batch atomically. A finished pair is never overwritten; an error row is."""
        values = [tuple(_sql_value(r.get(c)) for c in ROW_COLUMNS) for r in rows]
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id) DO UPDATE SET "
                "score=excluded.score, decision=excluded.decision, raw_output=excluded.raw_output, "
                "seconds=excluded.seconds, error=excluded.error WHERE pairs.error IS NOT NULL",
                values,
            )
            con.execute("COMMIT")

    def rows(self) -> pd.DataFrame:
        """Every stored row, sorted by pair id."""
        if not self.db_path.exists():
            return pd.DataFrame(columns=ROW_COLUMNS)
        with closing(self._connect()) as con:
            return pd.read_sql_query("SELECT * FROM pairs ORDER BY pair_id", con)

    def read_manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    def write_manifest(self, doc: dict) -> None:
        write_json_atomic(self.manifest_path, doc)


def _sql_value(v):
    # SQLite stores NaN as NULL anyway; say so explicitly, and unwrap numpy scalars.
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v
