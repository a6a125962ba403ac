"""Per-pair results on disk: one SQLite file and one JSON manifest per run.

A run is identified by (model, dataset, settings hash) and lives in
``<out>/<model slug>/<dataset>/<hash>/``. Each batch of pairs is written in one
transaction, so a process killed at any moment leaves only whole batches; a
restarted run skips the pairs already there. WAL mode and a busy timeout let
two processes share one store; ``pair_id`` is the primary key, so a pair is
never stored twice.

A run split into shards (see :func:`facebench.scoring.shard_pairs`) keeps each
shard's rows in ``<run>/shards/<k>-of-<n>.sqlite`` with its manifest beside it
(``<k>-of-<n>.json``): one writer per file, so shards on different machines
never share a SQLite file (SQLite's locking is unreliable on network file
systems). :meth:`RunStore.merge_shards` folds them into ``pairs.sqlite`` by the
same rule as :meth:`RunStore.write`; merging is idempotent and leaves the shard
files in place, so a shard still writing is merged again later without loss.
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pandas as pd

from facebench.files import write_json_atomic
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
# A finished pair is never overwritten; an error row is (by a later result or a later error).
_UPSERT = (
    "INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id) DO UPDATE SET "
    "score=excluded.score, decision=excluded.decision, raw_output=excluded.raw_output, "
    "seconds=excluded.seconds, error=excluded.error WHERE pairs.error IS NOT NULL"
)
SHARD_NAME = re.compile(r"(\d+)-of-(\d+)")


def model_slug(spec: str) -> str:
    """A folder name for a model spec: ``hf:Qwen/Qwen2-VL-2B`` → ``hf-Qwen--Qwen2-VL-2B``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec.replace("/", "--").replace(":", "-")).strip("-")


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

    def shard(self, index: int, count: int) -> "ShardStore":
        """Shard ``index`` of ``count`` of this run (see :class:`ShardStore`)."""
        return ShardStore(self, index, count)

    def shards(self) -> list["ShardStore"]:
        """The shards of this run that have a results file, in name order."""
        found = []
        for path in sorted((self.dir / "shards").glob("*-of-*.sqlite")):
            m = SHARD_NAME.fullmatch(path.stem)
            if m:
                found.append(self.shard(int(m[1]), int(m[2])))
        return found

    def merge(self, sources: list["RunStore"]) -> int:
        """Fold the rows of other stores into this one, in one transaction.

        The rule is :meth:`write`'s: a finished pair here is kept, an error row
        here is replaced. Returns how many rows were added or replaced (an
        error row is rewritten each time, a finished one never).

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     run = RunStore(tmp)
        ...     run.shard(1, 2).write([{"pair_id": 1, "score": 0.5, "seconds": 0.1}])
        ...     print(run.merge(run.shards()), run.merge(run.shards()), sorted(run.done_ids()))
        1 0 [1]
        """
        values = [row for src in sources for row in src._raw_rows()]
        with closing(self._connect()) as con:
            before = con.total_changes
            con.execute("BEGIN IMMEDIATE")
            con.executemany(_UPSERT, values)
            con.execute("COMMIT")
            return con.total_changes - before

    def merge_shards(self) -> dict[str, dict]:
        """Merge every shard file of this run (:meth:`merge`); returns each shard's manifest by shard name."""
        shards = self.shards()
        if shards:
            self.merge(shards)
        return {s.name: s.read_manifest() for s in shards}

    def _raw_rows(self) -> list[tuple]:
        # Straight from SQLite: through pandas an integer column with a NULL would come back as floats.
        if not self.db_path.exists():
            return []
        with closing(self._connect()) as con:
            return con.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM pairs").fetchall()

    def _connect(self) -> sqlite3.Connection:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
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
            con.executemany(_UPSERT, values)
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


class ShardStore(RunStore):
    """Shard ``index`` of ``count`` of a run: its own rows and manifest under ``<run>/shards/``.

    It reads through to the run it belongs to (``parent``): a pair already in the
    run's ``pairs.sqlite`` counts as done here, and :meth:`rows` shows it, so a
    shard started after a partial run or a merge only scores what is missing.
    ``dir`` is the run's folder, so ``dir.name`` is still the settings hash.
    """

    def __init__(self, parent: RunStore, index: int, count: int):
        if not 0 <= index < count:
            raise ValueError(f"shard {index} of {count}: the index must be 0 to {count - 1}")
        super().__init__(parent.dir)
        self.parent, self.index, self.count = parent, index, count
        self.name = f"{index}-of-{count}"
        self.db_path = parent.dir / "shards" / f"{self.name}.sqlite"
        self.manifest_path = parent.dir / "shards" / f"{self.name}.json"

    def shard(self, index: int, count: int) -> "ShardStore":
        raise ValueError(f"{self.db_path} is already a shard; shard the run instead")

    def shards(self) -> list["ShardStore"]:
        return []

    def done_ids(self) -> set[int]:
        return super().done_ids() | self.parent.done_ids()

    def rows(self) -> pd.DataFrame:
        """The run's rows and this shard's, one per pair: a finished row before an error row, the run's first."""
        both = [df for df in (self.parent.rows(), super().rows()) if len(df)]
        if not both:
            return pd.DataFrame(columns=ROW_COLUMNS)
        rows = pd.concat(both, ignore_index=True)
        order = rows.assign(_failed=rows["error"].notna()).sort_values(["pair_id", "_failed"], kind="stable")
        return order.drop_duplicates("pair_id")[ROW_COLUMNS].reset_index(drop=True)


def _sql_value(v):
    # SQLite stores NaN as NULL anyway; say so explicitly, and unwrap numpy scalars.
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v
