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

Each SQLite file records the checksum of the dataset its rows were made on
(table ``meta``, written with the first batch) and refuses, in the same
transaction, a batch or a merge made on other data, whatever the manifest
says or whether it still exists. Reading never writes: it creates no file or
table and leaves the journal as it is, and a finished run in a folder that
cannot be written is read as it stands.
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

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
# What the rows were made on, recorded with the first batch (key 'dataset_checksum').
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
# A finished pair is never overwritten; an error row is (by a later result or a later error).
_UPSERT = (
    "INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(pair_id) DO UPDATE SET "
    "score=excluded.score, decision=excluded.decision, raw_output=excluded.raw_output, "
    "seconds=excluded.seconds, error=excluded.error WHERE pairs.error IS NOT NULL"
)
SHARD_NAME = re.compile(r"(\d+)-of-(\d+)")


class StoreError(RuntimeError):
    """A results file that cannot be read or written as it is; the message names it."""


class DatasetMismatchError(StoreError):
    """Rows made on one dataset meeting rows, or a run, on another."""


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

    def merge(self, sources: list["RunStore"], dataset_checksum: str | None = None) -> int:
        """Fold the rows of other stores into this one, in one transaction.

        The rule is :meth:`write`'s: a finished pair here is kept, an error row
        here is replaced. Returns how many rows were added or replaced (an
        error row is rewritten each time, a finished one never). Nothing is
        written when every source row is already here as a finished pair, so
        merging a finished run works in a read-only folder.

        Rows only mix when they were made on one dataset: each source's
        recorded checksum (its store's, else its manifest's), this store's and
        ``dataset_checksum`` must agree, else :class:`DatasetMismatchError`
        names the source and nothing is merged.

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> run = RunStore(tmp.name)
        >>> run.shard(1, 2).write([{"pair_id": 1, "score": 0.5, "seconds": 0.1}], "c0ffee")
        >>> run.merge(run.shards()), run.merge(run.shards()), sorted(run.done_ids()), run.dataset_checksum()
        (1, 0, [1], 'c0ffee')
        >>> run.merge(run.shards(), "beef")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        facebench.store.DatasetMismatchError: .../1-of-2.sqlite holds results made on a dataset with checksum c0ffee, ...
        >>> tmp.cleanup()
        """
        expected = dataset_checksum or self.dataset_checksum()
        for src in sources:
            expected = src._check_dataset(expected, src.dataset_checksum()
                                          or src.read_manifest().get("dataset_checksum"))
        done = self.done_ids()
        # Straight from SQLite: through pandas an integer column with a NULL would come back as floats.
        values = [row for src in sources for row in src._select(f"SELECT {', '.join(ROW_COLUMNS)} FROM pairs") or []
                  if row[0] not in done]
        if not values:
            return 0
        return self._write(values, expected)

    def merge_shards(self, dataset_checksum: str | None = None) -> dict[str, dict]:
        """Merge every shard file of this run (:meth:`merge`); returns each shard's manifest by shard name."""
        shards = self.shards()
        if shards:
            self.merge(shards, dataset_checksum)
        return {s.name: s.read_manifest() for s in shards}

    def _connect(self) -> sqlite3.Connection:
        """A connection for writing: the folder, the file and its tables are made if missing."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        # Switching a new file to WAL takes a lock that SQLite's busy timeout does
        # not wait for, so two processes opening a fresh store retry here.
        for attempt in range(200):
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(_SCHEMA)
                con.execute(_META)
                return con
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    con.close()
                    raise
                time.sleep(0.05)

    def _reader(self) -> sqlite3.Connection | None:
        """A connection that only reads (None when there is no file): no table is made, the journal is
        left as it is, and a folder that cannot be written is read as it stands (SQLite ``immutable``)."""
        if not self.db_path.is_file():
            return None
        if not os.access(self.db_path.parent, os.W_OK):
            mode = "immutable=1"  # nobody can write here, and SQLite could not make its lock files
        else:
            mode = "mode=rw" if os.access(self.db_path, os.W_OK) else "mode=ro"
        return sqlite3.connect(f"file:{quote(str(self.db_path.absolute()))}?{mode}", uri=True, timeout=60,
                               isolation_level=None)

    def _select(self, sql: str, *, table: str = "pairs", frame: bool = False):
        """The rows of a query on ``table`` (a DataFrame with ``frame``), none where the file or the
        table does not exist; :class:`StoreError` naming a file that is not a results database."""
        with self._errors():
            con = self._reader()
            if con is None:
                return None
            with closing(con):
                if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                   (table,)).fetchone():
                    return None
                return pd.read_sql_query(sql, con) if frame else con.execute(sql).fetchall()

    @contextmanager
    def _errors(self):
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.db_path}: cannot use this results file ({exc}); if it is damaged, "
                             "move it away and run again to score its pairs anew") from exc

    def _write(self, values: list[tuple], dataset_checksum: str | None) -> int:
        """Upsert ``values`` in one transaction, after recording ``dataset_checksum`` or checking it
        against the one recorded; returns how many rows changed."""
        with self._errors(), closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                if dataset_checksum:
                    recorded = con.execute("SELECT value FROM meta WHERE key = 'dataset_checksum'").fetchone()
                    self._check_dataset(dataset_checksum, recorded and recorded[0])
                    con.execute("INSERT OR IGNORE INTO meta VALUES ('dataset_checksum', ?)", (dataset_checksum,))
                before = con.total_changes
                con.executemany(_UPSERT, values)
                changed = con.total_changes - before
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return changed

    def dataset_checksum(self) -> str | None:
        """The checksum of the dataset this store's rows were made on, as recorded with its first row."""
        found = self._select("SELECT value FROM meta WHERE key = 'dataset_checksum'", table="meta")
        return found[0][0] if found else None

    def check_dataset(self, checksum: str) -> None:
        """Refuse (:class:`DatasetMismatchError`) when this store holds rows made on a dataset whose
        checksum is not ``checksum``."""
        self._check_dataset(checksum, self.dataset_checksum())

    def _check_dataset(self, wanted: str | None, recorded: str | None) -> str | None:
        if wanted and recorded and wanted != recorded:
            raise DatasetMismatchError(
                f"{self.db_path} holds results made on a dataset with checksum {recorded}, not {wanted}: the "
                "pairs or images changed, or another run on other data wrote here. Use another --out, or move "
                "that folder away to start over.")
        return wanted or recorded

    def done_ids(self) -> set[int]:
        """Pairs with a stored result (rows with an error are not done)."""
        return {r[0] for r in self._select("SELECT pair_id FROM pairs WHERE error IS NULL") or []}

    def write(self, rows: list[dict], dataset_checksum: str | None = None) -> None:
        """Store a batch atomically. A finished pair is never overwritten; an error row is.

        ``dataset_checksum``, the checksum of the dataset the rows were made on,
        is recorded with the first batch and checked, in the same transaction,
        against every later one: rows made on other data are refused
        (:class:`DatasetMismatchError`), even from a process that started at
        the same time or after the manifest was deleted.
        """
        self._write([tuple(_sql_value(r.get(c)) for c in ROW_COLUMNS) for r in rows], dataset_checksum)

    def rows(self) -> pd.DataFrame:
        """Every stored row, sorted by pair id."""
        found = self._select(f"SELECT {', '.join(ROW_COLUMNS)} FROM pairs ORDER BY pair_id", frame=True)
        return found if found is not None else pd.DataFrame(columns=ROW_COLUMNS)

    def read_manifest(self) -> dict:
        """The run's manifest, {} when there is none; StoreError naming a file that is not a JSON object."""
        if not self.manifest_path.exists():
            return {}
        try:
            doc = json.loads(self.manifest_path.read_text())
        except (ValueError, OSError) as exc:
            raise StoreError(f"{self.manifest_path}: unreadable manifest ({exc}); move it away to rebuild it "
                             "from the stored pairs") from exc
        if not isinstance(doc, dict):
            raise StoreError(f"{self.manifest_path}: a manifest is a JSON object, this one holds a "
                             f"{type(doc).__name__}; move it away to rebuild it from the stored pairs")
        return doc

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
