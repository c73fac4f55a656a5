"""The durable label-join store: an in-memory store with an SQLite (WAL) journal.

Same contract as the in-memory :class:`~.memory.MemoryStore` (bounded in size
and age, every eviction counted, late labels told apart as expired / already labelled /
unknown), plus what must survive a restart or ``kill -9``:

* **predictions awaiting a label**: each recorded batch is one journal row (its ids, as
  JSON text or, packed 16-byte ids, one n x 16-byte blob; its n x k scores as row-major
  float32 bytes; k, the bundle's heads, is in ``meta``), so the request path pays one SQL
  insert per call, not one B-tree insert per id. At start the journal is replayed through
  the in-memory store, which re-applies capacity and TTL;
* **which (id, head) pairs were labelled** (``labelled``), so a replayed prediction that
  was already labelled is not resurrected (or, partly labelled, keeps waiting only for its
  other heads) and a second label for one head is not joined twice;
* **labels joined but not yet folded into a calibration snapshot** (``labels``, with their
  head), so no
  accepted label is missing from the calibration figures after a restart. The engine's
  snapshot records the sequence number of the last label it folded; saving it deletes
  the labels up to there in the same transaction (exactly once).

Every write is one transaction committed before the RPC returns, and before the in-memory
state changes: a failed write leaves nothing half-done. With ``synchronous=NORMAL`` a WAL
commit reaches the OS before the call returns, which a killed process cannot lose;
``synchronous=FULL`` also fsyncs each commit, for power loss. Counters (labels joined,
evictions ...) are per process, like any Prometheus counter; ids evicted before a restart
and no longer in the journal count as ``unknown`` rather than ``expired`` afterwards.

A schema-2 database (one head, before multi-head bundles) is migrated in place at open
(as k = 1, head 0), so an upgrade keeps its pending predictions and unfolded labels.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from pathlib import Path

import numpy as np

from silentwatch.monitor.state.memory import MemoryStore, check_heads
from silentwatch.monitor.state.store import (
    JoinResult,
    RequestId,
    StoreCounters,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
# Journal rows older than the oldest pending prediction are dropped every this many records.
_CLEAN_EVERY = 64


def _ids(column: str | bytes) -> list[RequestId]:
    """A journal row's ids: JSON text (string ids) or n x 16 bytes (packed ids)."""
    if isinstance(column, bytes):
        return np.frombuffer(column, dtype="V16").tolist()
    return json.loads(column)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq_start INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    ids TEXT NOT NULL,
    scores BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS labelled (
    request_id TEXT NOT NULL,
    head INTEGER NOT NULL,
    pred_seq INTEGER NOT NULL,
    PRIMARY KEY (request_id, head)
);
CREATE INDEX IF NOT EXISTS labelled_by_seq ON labelled(pred_seq);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    score REAL NOT NULL,
    label INTEGER NOT NULL,
    at REAL NOT NULL,
    head INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    taken_at REAL NOT NULL,
    label_seq INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""

# Schema 2 -> 3, in one transaction: labelled is keyed by (request_id, head), labels get a
# head column; batches keep their bytes (n x 1 float32 is n float32). Everything is head 0.
_MIGRATE_2_TO_3 = (
    "ALTER TABLE labels ADD COLUMN head INTEGER NOT NULL DEFAULT 0",
    "CREATE TABLE labelled_v3 (request_id TEXT NOT NULL, head INTEGER NOT NULL, "
    "pred_seq INTEGER NOT NULL, PRIMARY KEY (request_id, head))",
    "INSERT INTO labelled_v3 (request_id, head, pred_seq) "
    "SELECT request_id, 0, pred_seq FROM labelled ORDER BY rowid",
    "DROP TABLE labelled",  # drops labelled_by_seq with it
    "ALTER TABLE labelled_v3 RENAME TO labelled",
    "CREATE INDEX labelled_by_seq ON labelled(pred_seq)",
    "INSERT OR REPLACE INTO meta VALUES ('schema', '3'), ('heads', '1')",
)


class SqliteStore:
    """Durable, thread-safe store for the label join (see the module docstring).

    Parameters
    ----------
    path
        Database file; its directory is created. ``-wal`` and ``-shm`` files sit beside it.
    capacity, ttl_seconds
        As for :class:`~.memory.MemoryStore`.
    bundle_sha256, heads
        The served bundle and its number of heads (scores per prediction). State written
        for another bundle or head count is dropped at open (logged): its scores and
        windows belong to another classifier.
    synchronous
        ``"normal"`` survives process crashes; ``"full"`` also power loss (slower).
    max_bytes
        Size cap of the database (``PRAGMA max_page_count``); beyond it writes fail as
        "database or disk is full", which the sidecar counts and logs while serving on.
    keep_labels
        Keep joined labels until a calibration snapshot covers them (off when nothing
        folds them, i.e. detection is off).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> s = SqliteStore(d + "/s.db", capacity=10, ttl_seconds=60, bundle_sha256="b")
    >>> s.record(["a", "b"], np.array([0.2, 0.9], dtype=np.float32))
    >>> r = s.join(["b", "zz"], np.array([1, 0]))
    >>> (r.joined, r.unknown, float(r.scores[0]) > 0.8)
    (1, 1, True)
    >>> s.close()
    >>> s = SqliteStore(d + "/s.db", capacity=10, ttl_seconds=60, bundle_sha256="b")
    >>> (len(s), s.join(["a", "b"], np.array([0, 1])).already_labelled)
    (1, 1)
    >>> s.close()

    Three heads: each label names its head, and what was labelled survives a reopen.

    >>> s = SqliteStore(d + "/k3.db", capacity=10, ttl_seconds=60, bundle_sha256="b", heads=3)
    >>> s.record(["a"], np.array([[0.25, 0.5, 0.75]], dtype=np.float32))
    >>> s.join(["a", "a"], np.array([1, 0]), heads=np.array([2, 0])).scores.tolist()
    [0.75, 0.25]
    >>> s.close()
    >>> s = SqliteStore(d + "/k3.db", capacity=10, ttl_seconds=60, bundle_sha256="b", heads=3)
    >>> r = s.join(["a", "a"], np.array([1, 1]), heads=np.array([2, 1]))
    >>> (r.joined, r.already_labelled, r.heads.tolist(), len(s))
    (1, 1, [1], 0)
    >>> [h.tolist() for _, _, _, h in s.labels_after(-1)]
    [[2, 0, 1]]
    >>> s.close()
    """

    durable = True

    def __init__(
        self,
        path: str | Path,
        capacity: int,
        ttl_seconds: float,
        *,
        bundle_sha256: str,
        synchronous: str = "normal",
        max_bytes: int | None = None,
        tombstone_capacity: int | None = None,
        max_unmatched_reported: int = 20,
        keep_labels: bool = True,
        clock: Callable[[], float] = time.time,
        heads: int = 1,
    ) -> None:
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        # Wall time: a recorded time must mean the same after a restart.
        self.mem = MemoryStore(
            capacity,
            ttl_seconds,
            tombstone_capacity=tombstone_capacity,
            max_unmatched_reported=max_unmatched_reported,
            clock=clock,
            heads=check_heads(heads),
        )
        self.path = Path(path)
        self.keep_labels = keep_labels
        self._clock = clock
        self._lock = threading.Lock()  # the SQLite connection's; the memory store has its own
        self._records = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One sidecar per store: a second writer would replay the first one's journal and
        # evict its predictions. flock is released by the OS on kill -9.
        self._lockfile = open(self.path.with_name(self.path.name + ".lock"), "a+b")  # noqa: SIM115
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise StoreUnavailable(
                f"{self.path} is in use by another sidecar; give each sidecar its own "
                "state_dir (replicas: one volume each)"
            ) from None
        try:
            self._open(synchronous, max_bytes, bundle_sha256)
            self._replay()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._lockfile.close()
            raise

    # The in-memory store's view, for callers of either store.
    @property
    def capacity(self) -> int:
        return self.mem.capacity

    @property
    def ttl_seconds(self) -> float:
        return self.mem.ttl_seconds

    @property
    def heads(self) -> int:
        return self.mem.heads

    @property
    def counters(self) -> StoreCounters:
        return self.mem.counters

    def __len__(self) -> int:
        return len(self.mem)

    # -- opening and replay -------------------------------------------------------------------
    def _open(self, synchronous: str, max_bytes: int | None, bundle_sha256: str) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per call.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db = self._db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        # Checkpoints stay with the writer (SQLite's default, every 1,000 pages): between
        # our serialised transactions nothing writes, so each one completes and the WAL
        # restarts. A checkpointer beside a busy writer never completes and the WAL grows
        # without bound (measured: 2.3 GiB in 60 s at 73k rows/s). journal_size_limit
        # trims the file after a spike.
        db.execute("PRAGMA wal_autocheckpoint=1000")
        db.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        version = None
        with contextlib.suppress(sqlite3.OperationalError):  # a new file has no meta yet
            version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if version is not None and int(version[0]) == 2:
            self._migrate(_MIGRATE_2_TO_3, 2)
        elif version is not None and int(version[0]) != SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path} has schema {version[0]}, this silentwatch writes "
                f"{SCHEMA_VERSION}; move the file aside or point state_dir elsewhere"
            )
        db.executescript(_SCHEMA)
        if max_bytes is not None:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={max(16, int(max_bytes) // page)}")
        self._check_owner(bundle_sha256)

    def _migrate(self, steps: Sequence[str], old: int) -> None:
        """Upgrade the schema in place, in one transaction (all or nothing)."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql in steps:
                db.execute(sql)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise StoreUnavailable(
                f"{self.path}: migrating schema {old} to {SCHEMA_VERSION} failed ({exc}); "
                "move the file aside or point state_dir elsewhere"
            ) from exc
        log.info("migrated %s from schema %d to %d", self.path, old, SCHEMA_VERSION)

    def _stored_heads(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='heads'").fetchone()
        return 1 if row is None else int(row[0])

    def _check_owner(self, bundle_sha256: str) -> None:
        """At open: drop state written for another bundle or head count, then claim it."""
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key='bundle_sha256'").fetchone()
        old_heads = self._stored_heads()
        drop = row is not None and (row[0] != bundle_sha256 or old_heads != self.heads)
        if drop:
            dropped = db.execute("SELECT coalesce(sum(n), 0) FROM batches").fetchone()[0]
            log.warning(
                "state in %s belongs to bundle %s with %d head(s), not the served %s with %d: "
                "dropping its %d journalled predictions, unfolded labels and snapshots (they "
                "describe another classifier)",
                self.path,
                row[0][:16],
                old_heads,
                bundle_sha256[:16],
                self.heads,
                dropped,
            )
            # Late labels for them count as expired, not unknown (bounded by the tombstones);
            # the heads they had labelled stay labelled, as after a rebind.
            done: dict[str, int] = {}
            for rid, head in db.execute("SELECT request_id, head FROM labelled"):
                done[rid] = done.get(rid, 0) | (1 << head)
            full = (1 << old_heads) - 1
            gone = []
            for (ids,) in db.execute("SELECT ids FROM batches ORDER BY seq_start"):
                gone += [(i, done.get(i, 0)) for i in _ids(ids) if done.get(i, 0) != full]
            self.mem._bury_left(gone)
        self._claim(bundle_sha256, self.heads, drop=drop)

    def _claim(self, bundle_sha256: str, heads: int, *, drop: bool) -> None:
        """Record the served bundle and head count; with ``drop``, delete the previous
        bundle's state."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        if drop:
            for table in ("batches", "labelled", "labels", "snapshots"):
                db.execute(f"DELETE FROM {table}")
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('bundle_sha256', ?), ('schema', ?), ('heads', ?)",
            (bundle_sha256, str(SCHEMA_VERSION), str(heads)),
        )
        db.execute("COMMIT")

    def _replay(self) -> None:
        """Rebuild the in-memory store from the journal, then re-apply the labelled
        (id, head) pairs."""
        db, mem = self._db, self.mem
        first = True
        k = mem.heads
        for seq_start, n, at, ids, scores in db.execute(
            "SELECT seq_start, n, at, ids, scores FROM batches ORDER BY seq_start"
        ):
            if first:
                mem._restart_at(int(seq_start))  # continue the journal's numbering
                first = False
            elif seq_start != mem.next_seq:
                raise StoreUnavailable(f"{self.path}: journal gap at prediction {seq_start}")
            ids = _ids(ids)
            arr = np.frombuffer(scores, dtype=np.float32)
            if len(ids) != n or arr.size != n * k:
                raise StoreUnavailable(
                    f"{self.path}: journal row {seq_start} holds {len(ids)} ids and "
                    f"{arr.size} scores, expected {n} and {n} x {k}"
                )
            # An id recorded again (allowed once its earlier prediction left) would be
            # refused as a duplicate while that one is still pending in the replay.
            mem._forget_pending(ids)
            mem.record(ids, arr.reshape(n, k), now=at)
        top = db.execute("SELECT max(seq_start + n) FROM batches").fetchone()[0]
        if top is None:  # nothing journalled: continue after the labelled ones, if any
            top = db.execute("SELECT coalesce(max(pred_seq) + 1, 0) FROM labelled").fetchone()[0]
            mem._restart_at(int(top))
        rows = db.execute("SELECT request_id, head, pred_seq FROM labelled ORDER BY rowid")
        labelled = rows.fetchall()
        if labelled:
            rids, heads, seqs = zip(*labelled, strict=True)
            mem.restore_labelled(rids, heads, seqs)
        mem.expire()
        # Replay is not traffic: the counters start at zero for this process.
        mem.counters = StoreCounters()
        self.restored_entries = len(mem)

    def rebind(self, bundle_sha256: str, heads: int = 1) -> int:
        """Serve another bundle (with ``heads`` heads): drop pending predictions (late labels
        then count as expired), unfolded labels and snapshots, which all describe the old
        classifier. Returns the number of predictions dropped."""
        heads = check_heads(heads)
        with self._lock:
            self._claim(bundle_sha256, heads, drop=True)
            # Buries the pending ids as expired; the journal's others left with a tombstone.
            return self.mem.rebind(bundle_sha256, heads)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
            except sqlite3.Error:  # closing a broken database must not stop a shutdown
                log.exception("closing %s failed", self.path)
            self._lockfile.close()  # releases the flock

    # -- transactions -------------------------------------------------------------------------
    def _tx(
        self, fn: Callable[[sqlite3.Connection], object], *, one_statement: bool = False
    ) -> object:
        """Run ``fn`` in one IMMEDIATE transaction; roll back and raise StoreUnavailable.

        ``one_statement``: ``fn`` runs a single statement, which is then its own transaction
        (autocommit: atomic, and committed before it returns, as with BEGIN/COMMIT). One
        call into SQLite instead of three: each releases the GIL, and taking it back can
        wait for the statistics worker (the unary path's tail, docs/benchmarks.md).
        """
        db = self._db
        with self._lock:
            try:
                if one_statement:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                out = fn(db)
                db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise StoreUnavailable(f"state store {self.path} failed: {exc}") from exc

    # -- the label join -----------------------------------------------------------------------
    def record(self, ids: Sequence[RequestId], scores: np.ndarray) -> None:
        """Record one prediction per id; refuse the whole batch if any id is pending.

        ``scores``: (n, heads) float32 ((n,) for one head). Raises
        :class:`StoreUnavailable` (and records nothing) when the journal cannot be written.
        """

        def journal(ids: list[RequestId], scores: np.ndarray, first: int, now: float) -> None:
            blob = np.ascontiguousarray(scores, dtype=np.float32).tobytes()  # row-major n x k
            # Packed ids: one blob, no per-id encoding (and a BLOB never equals a TEXT id).
            id_col = b"".join(ids) if ids and type(ids[0]) is bytes else json.dumps(ids)
            self._records += 1
            clean = self._records % _CLEAN_EVERY == 0

            def write(db: sqlite3.Connection) -> None:
                db.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                    (first, len(ids), now, id_col, blob),
                )
                if clean:
                    self._clean(db, self.mem._oldest_pending_unlocked())

            self._tx(write, one_statement=not clean)

        self.mem.record(ids, scores, journal=journal)

    def _clean(self, db: sqlite3.Connection, oldest: int) -> None:
        # Batches whose every prediction left (labelled, evicted) are never replayed again,
        # and labelled ids older than the journal can no longer be resurrected.
        # `seq_start < ?` first: a range on the primary key, not a scan of the journal.
        db.execute(
            "DELETE FROM batches WHERE seq_start < ? AND seq_start + n <= ?", (oldest, oldest)
        )
        db.execute(
            "DELETE FROM labelled WHERE pred_seq < (SELECT coalesce(min(seq_start), ?) "
            "FROM batches)",
            (oldest,),
        )
        # Carried labels have no prediction here; keep them for a store's worth of traffic
        # (counted in (id, head) pairs).
        db.execute(
            "DELETE FROM labelled WHERE pred_seq < 0 AND rowid IN (SELECT rowid FROM labelled "
            "WHERE pred_seq < 0 ORDER BY rowid LIMIT max(0, (SELECT count(*) FROM labelled "
            "WHERE pred_seq < 0) - ?))",
            (self.mem.tombstone_capacity,),
        )

    def expire(self) -> None:
        """Apply the TTL now (in memory; the journal rows go at the next clean-up)."""
        self.mem.expire()

    def join(
        self,
        ids: Sequence[RequestId],
        labels: np.ndarray,
        carried: np.ndarray | None = None,
        heads: np.ndarray | None = None,
    ) -> JoinResult:
        """Join labels to the predictions they belong to and keep the joined labels durably.

        ``heads`` ((m,) ints, None: all head 0) names each label's head; a label joins its
        head's score and does not touch the other heads (see :meth:`MemoryStore.join`).
        ``carried`` (optional, NaN where absent) is the score the caller says the serving
        replica gave: it joins a label whose prediction this store never saw or already
        evicted (the stateless multi-replica path). A label for an (id, head) already
        labelled never joins twice. Raises :class:`StoreUnavailable` when nothing could be
        written (then nothing was accepted: the caller should retry).
        """
        now = self._clock()

        def journal(
            res: JoinResult, ids: list[RequestId], seqs: np.ndarray, heads: np.ndarray
        ) -> None:
            if not ids:
                return

            def write(db: sqlite3.Connection) -> None:
                db.executemany(
                    "INSERT OR REPLACE INTO labelled(request_id, pred_seq, head) VALUES (?, ?, ?)",
                    zip(ids, seqs.tolist(), heads.tolist(), strict=True),
                )
                if self.keep_labels:
                    db.executemany(
                        "INSERT INTO labels(score, label, at, head) VALUES (?, ?, ?, ?)",
                        zip(
                            res.scores.astype(np.float64).tolist(),
                            res.labels.tolist(),
                            repeat(now),
                            res.heads.tolist(),
                            strict=False,
                        ),
                    )
                    res.label_seq = db.execute("SELECT max(seq) FROM labels").fetchone()[0]

            self._tx(write)

        return self.mem.join(ids, labels, carried, heads, journal=journal)

    # -- snapshots ----------------------------------------------------------------------------
    def save_snapshots(self, items: dict[str, bytes], label_seq: int) -> None:
        """Write snapshots and drop the labels they cover (``seq <= label_seq``), atomically."""
        now = self._clock()

        def write(db: sqlite3.Connection) -> None:
            db.executemany(
                "INSERT OR REPLACE INTO snapshots(name, taken_at, label_seq, data) "
                "VALUES (?, ?, ?, ?)",
                [(name, now, label_seq, sqlite3.Binary(data)) for name, data in items.items()],
            )
            if label_seq >= 0:
                db.execute("DELETE FROM labels WHERE seq <= ?", (label_seq,))

        self._tx(write)

    def load_snapshot(self, name: str) -> tuple[float, int, bytes] | None:
        """``(taken_at, label_seq, data)`` of a snapshot, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT taken_at, label_seq, data FROM snapshots WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (float(row[0]), int(row[1]), bytes(row[2]))

    def labels_after(
        self, seq: int, chunk: int = 50_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray, int, np.ndarray]]:
        """Joined labels with ``seq`` above the given one, oldest first, in chunks of
        ``(scores, labels, last seq, heads)`` (heads: int16 head index of each label)."""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, score, label, head FROM labels WHERE seq > ? ORDER BY seq LIMIT ?",
                    (seq, chunk),
                ).fetchall()
            if not rows:
                return
            arr = np.asarray(rows, dtype=np.float64)
            seq = int(arr[-1, 0])
            yield (
                arr[:, 1].astype(np.float32),
                arr[:, 2].astype(np.int8),
                seq,
                arr[:, 3].astype(np.int16),
            )

    def unfolded_labels(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM labels").fetchone()[0])
