"""The durable SQLite store: same join semantics as the in-memory one, and it survives reopening."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.sqlite import SqliteStore
from silentwatch.monitor.state.store import StoreUnavailable


def sqlite(tmp_path: Path, **kw) -> SqliteStore:
    kw.setdefault("capacity", 100)
    kw.setdefault("ttl_seconds", 3600)
    kw.setdefault("bundle_sha256", "bundle-a")
    return SqliteStore(tmp_path / "s.sqlite3", **kw)


def f32(*v: float) -> np.ndarray:
    return np.array(v, dtype=np.float32)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        yield MemoryStore(capacity=3, ttl_seconds=3600)
    else:
        s = sqlite(tmp_path, capacity=3)
        yield s
        s.close()


def test_both_stores_join_the_same_way(store) -> None:
    """Joined, unknown, expired (capacity), already labelled and in-batch repeats agree."""
    store.record(["a", "b", "c", "d"], f32(0.1, 0.2, 0.3, 0.9))  # "a" leaves: capacity 3
    r = store.join(["d", "a", "zz", "d", "b"], np.array([1, 0, 1, 1, 0]))
    assert (r.joined, r.expired, r.unknown, r.already_labelled) == (2, 1, 1, 1)
    assert r.scores.tolist() == pytest.approx([0.9, 0.2])
    assert r.labels.tolist() == [1, 0]
    assert r.unmatched_ids == ["a", "zz", "d"]
    assert len(store) == 1
    assert store.counters.evicted_capacity == 1
    c = store.counters
    assert c.labels_received == c.labels_joined + c.labels_unknown + c.labels_expired + (
        c.labels_already_labelled
    )


def test_both_stores_refuse_pending_duplicates_and_keep_nothing(store) -> None:
    from silentwatch.monitor.state.store import DuplicateRequestIds

    store.record(["a"], f32(0.5))
    with pytest.raises(DuplicateRequestIds):
        store.record(["b", "a"], f32(0.1, 0.2))
    with pytest.raises(DuplicateRequestIds):
        store.record(["c", "c"], f32(0.1, 0.2))
    assert len(store) == 1
    assert store.join(["b"], np.array([1])).unknown == 1


def test_carried_scores_join_unknown_and_expired_ids_but_never_twice(store) -> None:
    store.record(["mine", "x1", "x2", "x3"], f32(0.7, 0.1, 0.1, 0.1))  # "mine" evicted
    carried = f32(0.4, 0.6, np.nan)
    r = store.join(["mine", "other-replica", "plain"], np.array([1, 0, 1]), carried)
    assert (r.joined, r.carried, r.unknown) == (2, 2, 1)
    assert r.scores.tolist() == pytest.approx([0.4, 0.6])
    again = store.join(["other-replica"], np.array([0]), f32(0.6))
    assert (again.joined, again.already_labelled) == (0, 1)
    # A local prediction wins over the carried score.
    local = store.join(["x1"], np.array([0]), f32(0.99))
    assert (local.joined, local.carried) == (1, 0)
    assert local.scores.tolist() == pytest.approx([0.1])


def test_predictions_and_labels_survive_reopening(tmp_path: Path) -> None:
    s = sqlite(tmp_path)
    s.record([f"r{i}" for i in range(10)], np.linspace(0, 1, 10, dtype=np.float32))
    r = s.join(["r0", "r1"], np.array([0, 1]))
    assert r.label_seq == 2
    s.close()  # what kill -9 leaves is the same: every call committed before returning
    s2 = sqlite(tmp_path)
    assert len(s2) == 8
    assert s2.join(["r9", "r0"], np.array([1, 0])).scores.tolist() == pytest.approx([1.0])
    assert s2.join(["r0"], np.array([0])).already_labelled == 1
    got = list(s2.labels_after(-1))
    assert sum(c[0].size for c in got) == 3 and got[-1][2] == 3
    s2.close()


def test_snapshot_drops_the_labels_it_covers_atomically(tmp_path: Path) -> None:
    s = sqlite(tmp_path)
    s.record(["a", "b", "c"], f32(0.1, 0.5, 0.9))
    first = s.join(["a", "b"], np.array([0, 1])).label_seq
    s.join(["c"], np.array([1]))
    s.save_snapshots({"labelled": b"state"}, first)
    assert s.unfolded_labels() == 1
    taken_at, seq, data = s.load_snapshot("labelled")
    assert (seq, data) == (first, b"state") and taken_at > 0
    assert [c[0].tolist() for c in s.labels_after(seq)] == [pytest.approx([0.9])]
    s.close()


def test_state_of_another_bundle_is_dropped_at_open(tmp_path: Path, caplog) -> None:
    s = sqlite(tmp_path)
    s.record(["a"], f32(0.3))
    s.join(["a"], np.array([1]))
    s.record(["b"], f32(0.3))
    s.save_snapshots({"windows": b"w"}, -1)
    s.close()
    s2 = sqlite(tmp_path, bundle_sha256="bundle-b")
    assert len(s2) == 0 and s2.unfolded_labels() == 0 and s2.load_snapshot("windows") is None
    assert s2.join(["b"], np.array([0])).expired == 1  # told apart, not "unknown"
    assert "belongs to bundle" in caplog.text
    s2.close()


def test_ttl_eviction_is_counted(tmp_path: Path) -> None:
    now = [1000.0]
    s = sqlite(tmp_path, ttl_seconds=10, clock=lambda: now[0])
    s.record(["old"], f32(0.2))
    now[0] += 11
    s.record(["new"], f32(0.4))
    assert s.counters.evicted_ttl == 1 and len(s) == 1
    assert s.join(["old"], np.array([1])).expired == 1
    s.close()


def test_a_full_database_raises_store_unavailable_and_keeps_counts_right(tmp_path: Path) -> None:
    s = sqlite(tmp_path, capacity=1_000_000, max_bytes=256 * 1024)
    ids = [f"id-{i:08d}-" + "x" * 40 for i in range(5000)]
    with pytest.raises(StoreUnavailable, match="full"):
        for i in range(0, len(ids), 50):
            s.record(ids[i : i + 50], np.full(50, 0.5, dtype=np.float32))
    n = len(s)
    assert s.counters.recorded == n  # the failed batch counted nothing
    assert 0 < n < len(ids)
    with pytest.raises(StoreUnavailable, match="full"):  # still full: nothing half-written
        s.record(ids[-50:], np.full(50, 0.5, dtype=np.float32))
    assert len(s) == n
    pending = s.mem.pending_ids()
    s.close()
    # Most records are one autocommit INSERT (every 64th also cleans up, in BEGIN/COMMIT):
    # the journal holds exactly what was recorded, so a restart replays the same ids.
    again = sqlite(tmp_path, capacity=1_000_000)
    assert again.mem.pending_ids() == pending and len(again) == n
    again.close()


def test_the_journal_and_the_labelled_ids_stay_bounded(tmp_path: Path) -> None:
    s = sqlite(tmp_path, capacity=100)
    for i in range(200):
        ids = [f"{i}-{j}" for j in range(10)]
        s.record(ids, np.zeros(10, dtype=np.float32))
        s.join(ids[:5], np.ones(5))
    journalled = s._db.execute("SELECT coalesce(sum(n), 0) FROM batches").fetchone()[0]
    labelled = s._db.execute("SELECT count(*) FROM labelled").fetchone()[0]
    assert len(s) == 50  # 100 recorded ids in the window, half of them labelled
    assert journalled <= 100 + 64 * 10  # cleaned every 64 records
    assert labelled <= journalled
    s.close()


def test_a_second_sidecar_on_the_same_store_is_refused(tmp_path: Path) -> None:
    s = sqlite(tmp_path)
    with pytest.raises(StoreUnavailable, match="own state_dir"):
        sqlite(tmp_path)
    s.close()
    sqlite(tmp_path).close()  # released at close (and by the OS on kill -9)


def test_the_write_ahead_log_stays_bounded_under_sustained_writes(tmp_path: Path) -> None:
    """Checkpoints complete between writes, so the WAL restarts instead of growing."""
    s = sqlite(tmp_path, capacity=20_000)
    wal = tmp_path / "s.sqlite3-wal"
    peak = 0
    for b in range(300):  # 300k ids through a 20k store: ~40 MiB of page writes
        s.record([f"r-{b:05d}-{i:04d}" for i in range(1000)], np.zeros(1000, dtype=np.float32))
        peak = max(peak, wal.stat().st_size)
    assert peak < 32 * 1024 * 1024, f"WAL reached {peak / 2**20:.0f} MiB"
    s.close()
    assert not wal.exists() or wal.stat().st_size == 0  # truncated at close
