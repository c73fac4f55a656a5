"""The durable label-join store: SQLite in WAL mode.

Same contract as the in-memory :class:`~.predictions.PredictionStore` (bounded in size
and age, every eviction counted, late labels told apart as expired / already labelled /
unknown), plus two things that must survive a restart or ``kill -9``:

* predictions awaiting a label (``predictions``), so a label that arrives after a
  restart still joins;
* labels joined but not yet folded into a calibration snapshot (``labels``), so no
  accepted label is missing from the calibration figures after a restart. The engine's
  snapshot records the sequence number of the last label it folded; saving it deletes
  the labels up to there in the same transaction (exactly once).

Every write is one transaction committed before the RPC returns. With
``synchronous=NORMAL`` a WAL commit reaches the OS before the call returns, which a
killed process cannot lose; ``synchronous=FULL`` also fsyncs each commit, for power
loss. Counters (labels joined, evictions ...) are per process, like any Prometheus
counter.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from .predictions import (
    _EXPIRED,
    _LABELLED,
    DuplicateRequestIds,
    JoinResult,
    StoreCounters,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Far below SQLite's default host-parameter limit (32766), so one IN (...) per chunk.
_CHUNK = 4000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    score REAL NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS gone (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    why INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    score REAL NOT NULL,
    label INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    name TEXT PRIMARY KEY,
    taken_at REAL NOT NULL,
    label_seq INTEGER NOT NULL,
    data BLOB NOT NULL
);
"""


class StoreUnavailable(Exception):
    """The store could not be written (disk full, read-only, corrupt); the message says which."""


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class SqliteStore:
    """Durable, thread-safe store for the label join (see the module docstring).

    Parameters
    ----------
    path
        Database file; its directory is created. ``-wal`` and ``-shm`` files sit beside it.
    capacity, ttl_seconds
        As for :class:`~.predictions.PredictionStore`.
    bundle_sha256
        The served bundle. State written for another bundle is dropped at open (logged):
        its scores and windows belong to another classifier.
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
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if synchronous not in ("normal", "full"):
            raise ValueError("synchronous must be 'normal' or 'full'")
        self.path = Path(path)
        self.capacity = capacity
        self.ttl_seconds = float(ttl_seconds)
        self.tombstone_capacity = capacity if tombstone_capacity is None else tombstone_capacity
        self.max_unmatched_reported = max_unmatched_reported
        self.keep_labels = keep_labels
        self._clock = clock  # wall time: it must mean the same after a restart
        self._lock = threading.Lock()
        self.counters = StoreCounters()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One sidecar per store: a second writer would break the in-memory counts and
        # evict the first one's predictions. flock is released by the OS on kill -9.
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
        except BaseException:
            self._lockfile.close()
            raise

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
        # without bound (measured: 2.3 GiB in 60 s at 73k rows/s). The price is a few ms on
        # the commit that triggers it. journal_size_limit trims the file after a spike.
        db.execute("PRAGMA wal_autocheckpoint=1000")
        db.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        db.executescript(_SCHEMA)
        if max_bytes is not None:
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={max(16, int(max_bytes) // page)}")
        self._check_owner(bundle_sha256)
        self._entries = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
        self._last_ttl_check = float("-inf")
        self.restored_entries = self._entries

    # -- housekeeping ---------------------------------------------------------------------
    def rebind(self, bundle_sha256: str) -> int:
        """Serve another bundle: drop pending predictions (late labels then count as
        expired), unfolded labels and snapshots, which all describe the old classifier.
        Returns the number of predictions dropped."""
        with self._lock:
            n = self._entries
            self._check_owner(bundle_sha256)
            self._entries = 0
            return n

    def _check_owner(self, bundle_sha256: str) -> None:
        db = self._db
        row = db.execute("SELECT value FROM meta WHERE key='bundle_sha256'").fetchone()
        version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if version is not None and int(version[0]) != SCHEMA_VERSION:
            raise StoreUnavailable(
                f"{self.path} has schema {version[0]}, this silentwatch writes "
                f"{SCHEMA_VERSION}; move the file aside or point state_dir elsewhere"
            )
        if row is not None and row[0] != bundle_sha256:
            n = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
            log.warning(
                "state in %s belongs to bundle %s, not the served %s: dropping its %d pending "
                "predictions, unfolded labels and snapshots (they describe another classifier)",
                self.path,
                row[0][:16],
                bundle_sha256[:16],
                n,
            )
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO gone(request_id, why) "
                "SELECT request_id, ? FROM predictions",
                (_EXPIRED,),
            )
            db.execute("DELETE FROM predictions")
            db.execute("DELETE FROM labels")
            db.execute("DELETE FROM snapshots")
            db.execute("COMMIT")
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('bundle_sha256', ?), ('schema', ?)",
            (bundle_sha256, str(SCHEMA_VERSION)),
        )
        db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
            except sqlite3.Error:  # closing a broken database must not stop a shutdown
                log.exception("closing %s failed", self.path)
            self._lockfile.close()  # releases the flock

    def __len__(self) -> int:
        return self._entries

    def _tx(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        """Run ``fn`` in one IMMEDIATE transaction; roll back and re-raise on any error."""
        db = self._db
        c = self.counters
        # In-memory figures the transaction moves; put back if it rolls back.
        saved = (self._entries, c.evicted_ttl, c.evicted_capacity, c.recorded)
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreUnavailable(self._why(exc)) from exc
        try:
            out = fn(db)
            db.execute("COMMIT")
            return out
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._entries, c.evicted_ttl, c.evicted_capacity, c.recorded = saved
            if isinstance(exc, sqlite3.Error):
                raise StoreUnavailable(self._why(exc)) from exc
            raise

    def _why(self, exc: sqlite3.Error) -> str:
        return f"state store {self.path} failed: {exc}"

    def _bury_oldest(self, db: sqlite3.Connection, where: str, args: tuple) -> int:
        db.execute(
            f"INSERT OR REPLACE INTO gone(request_id, why) SELECT request_id, {_EXPIRED} "
            f"FROM predictions WHERE {where}",
            args,
        )
        return db.execute(f"DELETE FROM predictions WHERE {where}", args).rowcount

    def _trim_gone(self, db: sqlite3.Connection) -> None:
        top = db.execute("SELECT max(seq) FROM gone").fetchone()[0]
        if top is not None and top > self.tombstone_capacity:
            db.execute("DELETE FROM gone WHERE seq <= ?", (top - self.tombstone_capacity,))

    def _evict(self, db: sqlite3.Connection, incoming: int, now: float) -> None:
        # Age first (at most once a second: it is a scan from the oldest row), then size.
        if now - self._last_ttl_check >= 1.0:
            self._last_ttl_check = now
            row = db.execute(
                "SELECT seq FROM predictions WHERE at >= ? ORDER BY seq LIMIT 1",
                (now - self.ttl_seconds,),
            ).fetchone()
            if row is None:
                n = self._bury_oldest(db, "1", ())
            else:
                n = self._bury_oldest(db, "seq < ?", (row[0],))
            if n:
                self.counters.evicted_ttl += n
                self._entries -= n
        over = self._entries + incoming - self.capacity
        if over > 0:
            n = self._bury_oldest(
                db, "seq IN (SELECT seq FROM predictions ORDER BY seq LIMIT ?)", (over,)
            )
            self.counters.evicted_capacity += n
            self._entries -= n
        self._trim_gone(db)

    # -- the label join ---------------------------------------------------------------------
    def record(self, ids: Sequence[str], scores: np.ndarray) -> None:
        """Record one prediction per id; refuse the whole batch if any id is pending.

        Raises :class:`StoreUnavailable` when the database cannot be written.
        """
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise DuplicateRequestIds([dup], within_batch=True)
        ids = list(ids)
        values = np.asarray(scores, dtype=np.float64).tolist()
        lost: list[str] = []
        if len(ids) > self.capacity:  # only the newest `capacity` could be kept anyway
            cut = len(ids) - self.capacity
            lost, ids, values = ids[:cut], ids[cut:], values[cut:]
        with self._lock:
            now = self._clock()

            def write(db: sqlite3.Connection) -> None:
                self._evict(db, len(ids), now)
                if lost:
                    self.counters.evicted_capacity += len(lost)
                    self.counters.recorded += len(lost)
                    db.executemany(
                        f"INSERT OR REPLACE INTO gone(request_id, why) VALUES (?, {_EXPIRED})",
                        ((r,) for r in lost),
                    )
                try:
                    # The UNIQUE index finds pending duplicates; no lookup before the insert.
                    db.executemany(
                        "INSERT INTO predictions(request_id, score, at) VALUES (?, ?, ?)",
                        zip(ids, values, [now] * len(ids), strict=True),
                    )
                except sqlite3.IntegrityError:
                    raise DuplicateRequestIds(self._pending_among(db, ids)) from None

            self._tx(write)
            self._entries += len(ids)
            self.counters.recorded += len(ids)

    def _pending_among(self, db: sqlite3.Connection, ids: list[str]) -> list[str]:
        # Called after the failed insert: the rows it wrote are rolled back with it, so
        # look for ids committed earlier.
        db.execute("ROLLBACK")
        db.execute("BEGIN IMMEDIATE")
        found = [
            r[0]
            for part in _chunks(ids)
            for r in db.execute(
                f"SELECT request_id FROM predictions WHERE request_id IN ({_marks(len(part))})",
                part,
            )
        ]
        return sorted(found)

    def expire(self) -> None:
        """Apply the TTL now (also done on every record, at most once a second)."""
        with self._lock:
            self._last_ttl_check = float("-inf")
            self._tx(lambda db: self._evict(db, 0, self._clock()))

    def join(
        self,
        ids: Sequence[str],
        labels: np.ndarray,
        carried: np.ndarray | None = None,
    ) -> JoinResult:
        """Pop the predictions these labels belong to and keep the joined labels durably.

        ``carried`` (optional, NaN where absent) is the score the caller says the serving
        replica gave: it joins a label whose prediction this store never saw or already
        evicted (the stateless multi-replica path). A label for an id already labelled
        never joins twice. Raises :class:`StoreUnavailable` when nothing could be written
        (then nothing was accepted: the caller should retry).
        """
        ids = list(ids)
        labels = np.asarray(labels).astype(np.int8).reshape(-1)
        k = len(ids)
        scores = np.empty(k, dtype=np.float32)
        keep = np.zeros(k, dtype=bool)
        res = JoinResult(scores=scores, labels=labels)
        with self._lock:
            now = self._clock()

            def write(db: sqlite3.Connection) -> None:
                pending: dict[str, float] = {}
                gone: dict[str, int] = {}
                for part in _chunks(ids):
                    q = _marks(len(part))
                    pending.update(
                        db.execute(
                            f"SELECT request_id, score FROM predictions WHERE request_id IN ({q})",
                            part,
                        ).fetchall()
                    )
                    gone.update(
                        db.execute(
                            f"SELECT request_id, why FROM gone WHERE request_id IN ({q})", part
                        ).fetchall()
                    )
                taken: set[str] = set()
                joined_ids: list[str] = []
                for i, rid in enumerate(ids):
                    if rid in taken:
                        why = _LABELLED
                    elif rid in pending:
                        scores[i] = pending[rid]
                        keep[i] = True
                        taken.add(rid)
                        joined_ids.append(rid)
                        continue
                    else:
                        why = gone.get(rid)
                    if why != _LABELLED and carried is not None and np.isfinite(carried[i]):
                        scores[i] = carried[i]
                        keep[i] = True
                        taken.add(rid)
                        res.carried += 1
                        continue
                    if why == _EXPIRED:
                        res.expired += 1
                    elif why == _LABELLED:
                        res.already_labelled += 1
                    else:
                        res.unknown += 1
                    if len(res.unmatched_ids) < self.max_unmatched_reported:
                        res.unmatched_ids.append(rid)
                for part in _chunks(joined_ids):
                    db.execute(
                        f"DELETE FROM predictions WHERE request_id IN ({_marks(len(part))})", part
                    )
                db.executemany(
                    f"INSERT OR REPLACE INTO gone(request_id, why) VALUES (?, {_LABELLED})",
                    ((r,) for r in taken),
                )
                if taken and self.keep_labels:
                    db.executemany(
                        "INSERT INTO labels(score, label, at) VALUES (?, ?, ?)",
                        zip(
                            scores[keep].astype(np.float64).tolist(),
                            labels[keep].tolist(),
                            [now] * int(keep.sum()),
                            strict=True,
                        ),
                    )
                    res.label_seq = db.execute("SELECT max(seq) FROM labels").fetchone()[0]
                self._trim_gone(db)
                self._entries -= len(joined_ids)

            self._tx(write)
            c = self.counters
            c.labels_received += k
            c.labels_joined += int(keep.sum())
            c.labels_carried += res.carried
            c.labels_unknown += res.unknown
            c.labels_expired += res.expired
            c.labels_already_labelled += res.already_labelled
        res.scores, res.labels = scores[keep], labels[keep]
        return res

    # -- snapshots ----------------------------------------------------------------------------
    def save_snapshots(self, items: dict[str, bytes], label_seq: int) -> None:
        """Write snapshots and drop the labels they cover (``seq <= label_seq``), atomically."""
        with self._lock:
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
    ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """Joined labels with ``seq`` above the given one, oldest first, in chunks."""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, score, label FROM labels WHERE seq > ? ORDER BY seq LIMIT ?",
                    (seq, chunk),
                ).fetchall()
            if not rows:
                return
            arr = np.asarray(rows, dtype=np.float64)
            seq = int(arr[-1, 0])
            yield arr[:, 1].astype(np.float32), arr[:, 2].astype(np.int8), seq

    def unfolded_labels(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM labels").fetchone()[0])
