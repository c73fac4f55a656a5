"""Label-join stores with k heads (issue 19): a label names its head and joins that head's
score only; an id stays pending until every head is labelled; tombstones keep per-head state;
the SQLite journal keeps it all across a restart, and a schema-2 database is migrated."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.persistence import StatePersister
from silentwatch.monitor.state.sqlite import SCHEMA_VERSION, SqliteStore
from silentwatch.monitor.state.store import DuplicateRequestIds, JoinResult

from .fuzzing import examples


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sqlite(tmp_path: Path, **kw) -> SqliteStore:
    kw.setdefault("capacity", 100)
    kw.setdefault("ttl_seconds", 3600)
    kw.setdefault("bundle_sha256", "bundle-a")
    return SqliteStore(tmp_path / "s.sqlite3", **kw)


def rows(*r: tuple[float, ...]) -> np.ndarray:
    return np.array(r, dtype=np.float32)


def join(store, ids, heads, labels=None, carried=None) -> JoinResult:
    labels = np.ones(len(ids), dtype=np.int8) if labels is None else np.asarray(labels)
    c = None if carried is None else np.asarray(carried, dtype=np.float32)
    return store.join(ids, labels, c, heads=np.asarray(heads, dtype=np.int64))


def outcome(r: JoinResult) -> tuple[int, int, int, int, int]:
    return (r.joined, r.already_labelled, r.expired, r.unknown, r.carried)


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory for a store of either kind (closed afterwards)."""
    made = []

    def factory(**kw):
        kw.setdefault("heads", 3)
        kw.setdefault("capacity", 100)
        kw.setdefault("ttl_seconds", 3600)
        s = MemoryStore(**kw) if request.param == "memory" else sqlite(tmp_path, **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


# -- join semantics per (id, head) -----------------------------------------------------------
def test_a_label_for_one_head_does_not_touch_the_others(make) -> None:
    s = make()
    s.record(["a", "b"], rows((0.1, 0.5, 0.9), (0.2, 0.6, 0.7)))
    r = join(s, ["a"], [1], labels=[0])
    assert outcome(r) == (1, 0, 0, 0, 0)
    assert r.scores.tolist() == pytest.approx([0.5]) and r.labels.tolist() == [0]
    assert r.heads.tolist() == [1] and r.heads.dtype in (np.int16, np.int32)
    assert len(s) == 2  # "a" still awaits heads 0 and 2
    assert outcome(join(s, ["a"], [1])) == (0, 1, 0, 0, 0)  # that head: already labelled
    r = join(s, ["a", "b", "a"], [2, 2, 0], labels=[1, 0, 1])  # the rest of "a", in one batch
    assert r.scores.tolist() == pytest.approx([0.9, 0.7, 0.1])
    assert (r.heads.tolist(), r.labels.tolist()) == ([2, 2, 0], [1, 0, 1])
    assert len(s) == 1  # "a" left once its every head was labelled; "b" waits for 0 and 1
    r = join(s, ["a", "a", "a", "b"], [0, 1, 2, 0])
    assert outcome(r) == (1, 3, 0, 0, 0) and r.scores.tolist() == pytest.approx([0.2])
    c = s.counters  # counters count labels, whatever the head
    assert (c.labels_received, c.labels_joined, c.labels_already_labelled) == (9, 5, 4)


def test_the_same_head_twice_in_one_batch_joins_once_and_different_heads_all_join(make) -> None:
    s = make()
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    r = join(s, ["a", "a", "a", "a"], [2, 2, 0, 1], labels=[1, 0, 0, 1])
    assert outcome(r) == (3, 1, 0, 0, 0)
    assert (r.heads.tolist(), r.labels.tolist()) == ([2, 0, 1], [1, 0, 1])
    assert r.scores.tolist() == pytest.approx([0.9, 0.1, 0.5])
    assert r.unmatched_ids == ["a"] and len(s) == 0


def test_heads_none_means_head_zero(make) -> None:
    s = make()
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    r = s.join(["a"], np.array([1]))
    assert r.heads.tolist() == [0] and r.scores.tolist() == pytest.approx([0.1])
    assert outcome(join(s, ["a"], [0])) == (0, 1, 0, 0, 0) and len(s) == 1


@pytest.mark.parametrize("leave", ["capacity", "ttl", "rebind"])
def test_a_partly_labelled_id_that_left_is_expired_for_its_other_heads_only(make, leave) -> None:
    clock = Clock()
    s = make(capacity=2, ttl_seconds=10, clock=clock)
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    assert join(s, ["a"], [1]).joined == 1
    if leave == "capacity":
        s.record(["b", "c"], rows((0, 0, 0), (0, 0, 0)))
    elif leave == "ttl":
        clock.t += 11
        s.expire()
    else:
        assert s.rebind("bundle-b", heads=3) == 1
    r = join(s, ["a", "a", "a", "never"], [1, 0, 2, 1])
    assert outcome(r) == (0, 1, 2, 1, 0)
    assert r.unmatched_ids == ["a", "a", "a", "never"]


def test_tombstones_keep_per_head_state(make) -> None:
    s = make(capacity=3, tombstone_capacity=10)
    s.record(["a", "b", "c"], rows((0.1, 0.1, 0.1), (0.2, 0.2, 0.2), (0.3, 0.3, 0.3)))
    join(s, ["a", "a", "a", "b"], [0, 1, 2, 2])  # "a" done; "b" has head 2 labelled
    s.record(["d", "e", "f"], rows((0, 0, 0), (0, 0, 0), (0, 0, 0)))  # "b", "c" evicted
    assert len(s) == 3
    assert outcome(join(s, ["a", "a", "a"], [0, 1, 2])) == (0, 3, 0, 0, 0)
    assert outcome(join(s, ["b", "b", "b"], [0, 1, 2])) == (0, 1, 2, 0, 0)
    assert outcome(join(s, ["c", "c", "c"], [0, 1, 2])) == (0, 0, 3, 0, 0)


def test_tombstones_stay_bounded_with_heads() -> None:
    s = MemoryStore(capacity=10, ttl_seconds=60, tombstone_capacity=2, heads=2)
    s.record(["a", "b", "c"], rows((0.1, 0.1), (0.2, 0.2), (0.3, 0.3)))
    join(s, ["a", "a", "b", "b", "c", "c"], [0, 1, 0, 1, 0, 1])
    assert s.tombstones() == 3  # all three are among the last 10 + 2 recorded
    s.record([f"n{i}" for i in range(10)], np.zeros((10, 2), dtype=np.float32))
    assert s.tombstones() == 2  # "a" is the 13th newest: forgotten
    assert outcome(join(s, ["a", "b", "c"], [1, 1, 1])) == (0, 2, 0, 1, 0)


def test_carried_scores_per_head(make) -> None:
    s = make(capacity=2, tombstone_capacity=10)
    nan = np.nan
    # No local prediction: a carried score joins, once per (id, head).
    r = join(s, ["x", "x", "x"], [2, 2, 0], carried=[0.4, 0.6, nan])
    assert outcome(r) == (1, 1, 0, 1, 1) and r.scores.tolist() == pytest.approx([0.4])
    assert outcome(join(s, ["x"], [2], carried=[0.5])) == (0, 1, 0, 0, 0)
    assert outcome(join(s, ["x"], [1])) == (0, 0, 0, 1, 0)  # never recorded here: unknown
    r = join(s, ["x"], [1], carried=[0.3])
    assert outcome(r) == (1, 0, 0, 0, 1) and r.heads.tolist() == [1]
    # A local prediction wins over the carried score; a labelled head refuses it.
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    r = join(s, ["a", "a"], [1, 1], carried=[0.99, 0.98])
    assert outcome(r) == (1, 1, 0, 0, 0) and r.scores.tolist() == pytest.approx([0.5])
    # Evicted with head 1 labelled: head 0 joins the carried score, head 1 stays labelled,
    # head 2 without a carried score is expired.
    s.record(["b", "c"], rows((0, 0, 0), (0, 0, 0)))
    r = join(s, ["a", "a", "a"], [0, 1, 2], carried=[0.25, 0.75, nan])
    assert outcome(r) == (1, 1, 1, 0, 1) and r.scores.tolist() == pytest.approx([0.25])
    assert outcome(join(s, ["a"], [0], carried=[0.25])) == (0, 1, 0, 0, 0)
    assert s.counters.labels_carried == 3


def test_bad_heads_and_shapes_are_refused_and_change_nothing(make) -> None:
    s = make()
    with pytest.raises(ValueError, match="shape"):
        s.record(["a", "b"], rows((0.1, 0.2, 0.3)))
    with pytest.raises(ValueError, match="shape"):
        s.record(["a", "b"], np.zeros(2, dtype=np.float32))  # (n,) only for one head
    assert len(s) == 0 and s.counters.recorded == 0
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    for bad in ([3], [-1]):
        with pytest.raises(ValueError, match="head"):
            join(s, ["a"], bad)
    with pytest.raises(ValueError, match="head"):
        s.join(["a"], np.array([1]), heads=np.array([0, 1]))
    with pytest.raises(ValueError, match="head"):
        s.join(["a"], np.array([1]), heads=np.array([0.5]))
    assert len(s) == 1 and s.counters.labels_received == 0
    assert join(s, ["a"], [2]).scores.tolist() == pytest.approx([0.9])
    if isinstance(s, SqliteStore):
        assert s._db.execute("SELECT count(*) FROM batches").fetchone()[0] == 1


def test_one_head_store_takes_n_or_n_by_1_scores(make) -> None:
    s = make(heads=1)
    s.record(["a"], np.array([0.25], dtype=np.float32))
    s.record(["b"], np.array([[0.75]], dtype=np.float32))
    s.record(["c"], [0.5])  # a list or float64 is converted
    r = join(s, ["b", "a", "c"], [0, 0, 0])
    assert r.scores.tolist() == pytest.approx([0.75, 0.25, 0.5])
    with pytest.raises(ValueError, match="head"):
        join(s, ["a"], [1])


def test_duplicates_are_refused_while_any_head_is_pending(make) -> None:
    s = make()
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    join(s, ["a", "a"], [0, 1])
    with pytest.raises(DuplicateRequestIds):
        s.record(["a"], rows((0.2, 0.2, 0.2)))
    join(s, ["a"], [2])
    s.record(["a"], rows((0.2, 0.3, 0.4)))  # every head labelled: it may be recorded again
    assert join(s, ["a"], [1]).scores.tolist() == pytest.approx([0.3])


def test_rebind_switches_the_head_count(make) -> None:
    s = make(heads=3)
    s.record(["a"], rows((0.1, 0.5, 0.9)))
    join(s, ["a"], [2])
    assert s.rebind("bundle-b", heads=2) == 1 and s.heads == 2
    with pytest.raises(ValueError, match="shape"):
        s.record(["b"], rows((0.1, 0.5, 0.9)))
    s.record(["b"], rows((0.1, 0.5)))
    assert join(s, ["b"], [1]).scores.tolist() == pytest.approx([0.5])
    assert outcome(join(s, ["a", "a"], [0, 1])) == (0, 0, 2, 0, 0)
    with pytest.raises(ValueError, match="heads"):
        s.rebind("bundle-c", heads=17)


def test_heads_must_fit_the_tombstone_mask() -> None:
    MemoryStore(10, 60, heads=16)
    for bad in (0, 17):
        with pytest.raises(ValueError, match="heads"):
            MemoryStore(10, 60, heads=bad)


# -- SQLite: restart, replay, another head count, the schema-2 migration ---------------------
def test_k3_pending_labelled_pairs_and_unfolded_labels_survive_a_reopen(tmp_path: Path) -> None:
    s = sqlite(tmp_path, heads=3)
    s.record([f"r{i}" for i in range(4)], np.arange(12, dtype=np.float32).reshape(4, 3) / 16)
    r = join(
        s, ["r0", "r0", "r1", "r1", "r1", "x"], [0, 2, 0, 1, 2, 1], carried=[np.nan] * 5 + [0.5]
    )
    assert (r.joined, r.carried, r.label_seq) == (6, 1, 6)
    s.close()  # what kill -9 leaves is the same: every call committed before returning
    s2 = sqlite(tmp_path, heads=3)
    assert len(s2) == 3 and s2.heads == 3  # r0 (head 1 left), r2, r3
    r = join(s2, ["r0", "r0", "r0", "r1", "r2", "r3", "x", "x"], [0, 1, 2, 1, 1, 2, 1, 0])
    assert outcome(r) == (3, 4, 0, 1, 0)  # x head 0: never recorded here (unknown)
    assert r.scores.tolist() == pytest.approx([1 / 16, 7 / 16, 11 / 16])
    assert r.heads.tolist() == [1, 1, 2]
    got = list(s2.labels_after(-1))
    assert len(got) == 1
    scores, _, seq, heads = got[0]
    assert seq == 9 and heads.dtype == np.int16
    assert heads.tolist() == [0, 2, 0, 1, 2, 1, 1, 1, 2]
    assert scores[:6].tolist() == pytest.approx([0, 2 / 16, 3 / 16, 4 / 16, 5 / 16, 0.5])
    assert len(s2) == 2  # r2 (heads 0, 2 left) and r3 (heads 0, 1)
    s2.close()
    s3 = sqlite(tmp_path, heads=3)
    assert outcome(join(s3, ["r2", "r2", "r2"], [0, 1, 2])) == (2, 1, 0, 0, 0)
    assert len(s3) == 1
    s3.close()


def test_labels_after_chunks_carry_their_heads(tmp_path: Path) -> None:
    s = sqlite(tmp_path, heads=2)
    s.record(["a", "b", "c"], rows((0.1, 0.2), (0.3, 0.4), (0.5, 0.6)))
    join(s, ["a", "b", "c", "a"], [1, 0, 1, 0])
    got = list(s.labels_after(1, chunk=2))
    assert [(c[2], c[3].tolist()) for c in got] == [(3, [0, 1]), (4, [0])]
    assert [c[0].tolist() for c in got] == [pytest.approx([0.3, 0.6]), pytest.approx([0.1])]
    s.close()


def test_a_store_written_for_another_head_count_is_dropped_and_logged(
    tmp_path: Path, caplog
) -> None:
    s = sqlite(tmp_path, heads=3)
    s.record(["a", "b"], rows((0.1, 0.2, 0.3), (0.4, 0.5, 0.6)))
    join(s, ["a", "a", "a", "b"], [0, 1, 2, 1])
    s.close()
    with caplog.at_level(logging.WARNING):
        s2 = sqlite(tmp_path, heads=2)
    assert "belongs to bundle" in caplog.text and "3 head(s)" in caplog.text
    assert len(s2) == 0 and s2.unfolded_labels() == 0
    assert s2._db.execute("SELECT value FROM meta WHERE key='heads'").fetchone()[0] == "2"
    assert outcome(join(s2, ["b", "b"], [0, 1])) == (0, 1, 1, 0, 0)  # told apart per head
    s2.close()


def test_a_rebind_records_the_new_head_count(tmp_path: Path) -> None:
    s = sqlite(tmp_path, heads=1)
    s.record(["a"], np.array([0.5], dtype=np.float32))
    assert s.rebind("bundle-b", heads=2) == 1
    s.record(["b"], rows((0.25, 0.75)))
    s.close()
    s2 = sqlite(tmp_path, bundle_sha256="bundle-b", heads=2)  # kept, not dropped
    assert len(s2) == 1 and join(s2, ["b"], [1]).scores.tolist() == [0.75]
    s2.close()


def test_an_id_recorded_again_after_its_label_survives_a_reopen(tmp_path: Path) -> None:
    """The journal holds both predictions of a reused id: replay must not refuse the second
    (the store fell back to memory), nor apply the first one's label to it (it was lost)."""
    for heads in (1, 2):
        d = tmp_path / f"k{heads}"
        s = sqlite(d, heads=heads)
        first = np.full((1, heads), 0.25, dtype=np.float32)
        s.record(["a"], first)
        join(s, ["a"] * heads, list(range(heads)))
        s.record(["a"], first + 0.5)
        s.close()
        s2 = sqlite(d, heads=heads)
        assert len(s2) == 1
        r = join(s2, ["a"], [heads - 1])
        assert outcome(r) == (1, 0, 0, 0, 0) and r.scores.tolist() == [0.75]
        s2.close()


# The schema this silentwatch wrote before multi-head bundles (SCHEMA_VERSION 2), verbatim.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq_start INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    ids TEXT NOT NULL,
    scores BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS labelled (
    request_id TEXT PRIMARY KEY,
    pred_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS labelled_by_seq ON labelled(pred_seq);
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


def _schema_2_file(path: Path, now: float) -> None:
    """What a schema-2 sidecar left: r0..r4 recorded (r1, r3 labelled, r3's label folded
    into the snapshot), a carried label for "elsewhere", two labels not yet folded."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA_V2)
    db.execute("INSERT INTO meta VALUES ('bundle_sha256', 'bundle-a'), ('schema', '2')")
    ids = [f"r{i}" for i in range(5)]
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32).tobytes()
    db.execute("INSERT INTO batches VALUES (0, 5, ?, ?, ?)", (now, json.dumps(ids), scores))
    db.executemany("INSERT INTO labelled VALUES (?, ?)", [("r3", 3), ("r1", 1), ("elsewhere", -1)])
    db.executemany(
        "INSERT INTO labels(seq, score, label, at) VALUES (?, ?, ?, ?)",
        [(1, 0.4, 1, now), (2, 0.2, 0, now), (3, 0.9, 1, now)],
    )
    db.execute("INSERT INTO snapshots VALUES ('labelled', ?, 1, ?)", (now, b"calibration"))
    db.close()


def test_a_schema_2_database_is_migrated_in_place(tmp_path: Path, caplog) -> None:
    assert SCHEMA_VERSION == 3
    _schema_2_file(tmp_path / "s.sqlite3", now=1000.0)
    with caplog.at_level(logging.INFO):
        s = sqlite(tmp_path, clock=Clock(1000.0))
    assert "migrated" in caplog.text and "belongs to bundle" not in caplog.text
    meta = dict(s._db.execute("SELECT key, value FROM meta"))
    assert (meta["schema"], meta["heads"], meta["bundle_sha256"]) == ("3", "1", "bundle-a")
    # Pending predictions and labelled ids kept: nothing accepted before the upgrade is lost.
    assert len(s) == 3 and s.restored_entries == 3
    r = s.join(["r0", "r1", "r2", "r3", "r4", "elsewhere"], np.array([1, 1, 0, 1, 0, 1]))
    assert outcome(r) == (3, 3, 0, 0, 0) and r.scores.tolist() == pytest.approx([0.1, 0.3, 0.5])
    # Unfolded labels replay with head 0, numbered on after the old ones; the snapshot stays.
    assert s.load_snapshot("labelled")[1:] == (1, b"calibration")
    got = list(s.labels_after(1))
    assert got[0][2] == 6 and got[0][3].tolist() == [0] * 5
    assert got[0][0].tolist()[:2] == pytest.approx([0.2, 0.9])
    cols = [c[1] for c in s._db.execute("PRAGMA table_info(labelled)")]
    assert cols == ["request_id", "head", "pred_seq"]
    assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s.close()
    s2 = sqlite(tmp_path, clock=Clock(1000.0))  # reopened as schema 3: nothing migrates again
    assert len(s2) == 0 and s2.unfolded_labels() == 6  # seq 1 goes at the next snapshot
    s2.close()


def test_a_schema_2_database_opened_for_a_multi_head_bundle_is_migrated_then_dropped(
    tmp_path: Path, caplog
) -> None:
    _schema_2_file(tmp_path / "s.sqlite3", now=1000.0)
    with caplog.at_level(logging.INFO):
        s = sqlite(tmp_path, heads=3, clock=Clock(1000.0))
    assert "migrated" in caplog.text and "belongs to bundle" in caplog.text
    assert len(s) == 0 and s.unfolded_labels() == 0 and s.load_snapshot("labelled") is None
    assert outcome(join(s, ["r0", "r1"], [0, 0])) == (0, 0, 1, 1, 0)  # r1: labelled, forgotten
    s.close()


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    from silentwatch.monitor.state.store import StoreUnavailable

    _schema_2_file(tmp_path / "s.sqlite3", now=1000.0)
    db = sqlite3.connect(tmp_path / "s.sqlite3", isolation_level=None)
    db.execute("CREATE TABLE labelled_v3 (x)")  # in the way of the migration's new table
    db.close()
    with pytest.raises(StoreUnavailable, match="migrating schema 2"):
        sqlite(tmp_path)
    db = sqlite3.connect(tmp_path / "s.sqlite3")
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "2"
    assert [c[1] for c in db.execute("PRAGMA table_info(labels)")] == [
        "seq",
        "score",
        "label",
        "at",
    ]
    db.close()


def test_restore_replays_labels_with_their_heads(tmp_path: Path) -> None:
    class Engine:
        labels_seq = -1

        def __init__(self) -> None:
            self.batches = []

        def on_labels(self, batch) -> None:
            self.batches.append(batch)

    for heads in (1, 3):
        s = sqlite(tmp_path / f"k{heads}", heads=heads)
        s.record(["a"], np.full((1, heads), 0.5, dtype=np.float32))
        join(s, ["a"] * heads, list(range(heads))[::-1])
        eng = Engine()
        rep = StatePersister(s, eng, max_age_seconds=60).restore()
        assert rep.labels_replayed == heads
        (b,) = eng.batches
        assert b.last_seq == heads
        if heads == 1:
            assert b.heads is None  # one head: as the servicer sends them
        else:
            assert b.heads.tolist() == [2, 1, 0]
        s.close()


# -- a property: the store against a plain dict model ----------------------------------------
class Model:
    """The semantics, spelled out with dicts and sets (unbounded tombstones)."""

    def __init__(self, capacity: int, ttl: float, k: int) -> None:
        self.cap, self.ttl, self.k = capacity, ttl, k
        self.pending: OrderedDict[str, tuple[int, float, tuple[float, ...], set[int]]] = (
            OrderedDict()
        )
        self.gone: dict[str, tuple[bool, set[int]]] = {}  # id -> (recorded here, labelled)
        self.seq = 0

    def _evict(self, now: float) -> None:
        for rid, (seq, at, _, done) in list(self.pending.items()):
            if seq < self.seq - self.cap or at < now - self.ttl:
                del self.pending[rid]
                self.gone[rid] = (True, set(done))

    def record(self, ids: list[str], scores: np.ndarray, now: float) -> str | None:
        if len(set(ids)) != len(ids):
            return "within"
        if any(i in self.pending for i in ids):
            return "pending"
        n = len(ids)
        for j, rid in enumerate(ids):
            if j < n - self.cap:
                self.gone[rid] = (True, set())
            else:
                self.pending[rid] = (self.seq + j, now, tuple(scores[j].tolist()), set())
        self.seq += n
        self._evict(now)
        return None

    def join(self, ids, heads, carried, now):
        self._evict(now)
        out = {"scores": [], "heads": [], "rows": [], "already": 0, "expired": 0}
        out.update(unknown=0, carried=0)
        taken: set[tuple[str, int]] = set()
        local, remote = [], []
        for i, (rid, h) in enumerate(zip(ids, heads, strict=True)):
            if rid in self.pending:
                _, _, sc, done = self.pending[rid]
                if h in done or (rid, h) in taken:
                    out["already"] += 1
                    continue
                taken.add((rid, h))
                local.append((rid, h))
                out["scores"].append(sc[h])
            else:
                left, done = self.gone.get(rid, (False, set()))
                if h in done or (rid, h) in taken:
                    out["already"] += 1
                    continue
                if carried is not None and np.isfinite(carried[i]):
                    taken.add((rid, h))
                    remote.append((rid, h))
                    out["scores"].append(float(np.float32(carried[i])))
                    out["carried"] += 1
                elif left:
                    out["expired"] += 1
                    continue
                else:
                    out["unknown"] += 1
                    continue
            out["heads"].append(h)
            out["rows"].append(i)
        for rid, h in local:
            done = self.pending[rid][3]
            done.add(h)
            if len(done) == self.k:
                del self.pending[rid]
                self.gone[rid] = (True, set(range(self.k)))
        for rid, h in remote:
            left, done = self.gone.get(rid, (False, set()))
            self.gone[rid] = (left, done | {h})
        return out


IDS = st.sampled_from([f"id{i}" for i in range(8)])


@st.composite
def scenarios(draw):
    k = draw(st.integers(1, 4))
    ops = []
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["record", "record", "join", "join", "tick", "rebind"]))
        if kind == "record":
            ids = draw(st.lists(IDS, min_size=1, max_size=5))
            ops.append(("record", ids, draw(st.integers(0, 2**31))))
        elif kind == "join":
            n = draw(st.integers(1, 8))
            ids = draw(st.lists(IDS, min_size=n, max_size=n))
            heads = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
            carried = draw(
                st.none() | st.lists(st.sampled_from([np.nan, 0.25, 0.5]), min_size=n, max_size=n)
            )
            ops.append(("join", ids, heads, carried, draw(st.booleans())))
        elif kind == "tick":
            ops.append(("tick", draw(st.sampled_from([1.0, 4.0, 11.0]))))
        else:
            ops.append(("rebind",))
    return k, draw(st.integers(1, 6)), ops


@given(scenarios())
@examples(300)
def test_memory_store_with_k_heads_matches_a_dict_model(scenario) -> None:
    k, capacity, ops = scenario
    clock = Clock()
    store = MemoryStore(capacity, 10.0, tombstone_capacity=10_000, clock=clock, heads=k)
    model = Model(capacity, 10.0, k)
    received = 0
    for op in ops:
        if op[0] == "record":
            ids, seed = op[1], op[2]
            scores = np.random.default_rng(seed).random((len(ids), k)).astype(np.float32)
            want = model.record(list(ids), scores, clock.t)
            if want is None:
                store.record(ids, scores if k > 1 or seed % 2 else scores[:, 0])
            else:
                with pytest.raises(DuplicateRequestIds) as exc:
                    store.record(ids, scores)
                assert exc.value.within_batch == (want == "within")
        elif op[0] == "join":
            ids, heads, carried, as_none = op[1:]
            c = None if carried is None else np.array(carried, dtype=np.float64)
            h = None if as_none and not any(heads) else np.array(heads, dtype=np.int32)
            labels = np.arange(len(ids)) % 2
            r = store.join(ids, labels, c, heads=h)
            want = model.join(ids, heads, carried, clock.t)
            received += len(ids)
            assert r.scores.tolist() == want["scores"]
            assert r.heads.tolist() == want["heads"]
            assert r.labels.tolist() == [i % 2 for i in want["rows"]]
            assert (r.already_labelled, r.expired, r.unknown, r.carried) == (
                want["already"],
                want["expired"],
                want["unknown"],
                want["carried"],
            )
        elif op[0] == "tick":
            clock.t += op[1]
        else:
            assert store.rebind("other", heads=k) == len(model.pending)
            for rid, (_, _, _, done) in model.pending.items():
                model.gone[rid] = (True, set(done))
            model.pending.clear()
        assert len(store) == len(model.pending)
        assert store.pending_ids() == list(model.pending)
    c = store.counters
    assert c.labels_received == received
    assert received == (
        c.labels_joined + c.labels_unknown + c.labels_expired + c.labels_already_labelled
    )
