"""Unit tests for silentwatch.monitor.state.memory.MemoryStore."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from silentwatch.monitor.state.memory import MemoryStore
from silentwatch.monitor.state.store import DuplicateRequestIds, JoinResult


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def _scores(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        MemoryStore(capacity=0, ttl_seconds=10)


def test_record_and_join_returns_recorded_scores_in_label_order():
    s = MemoryStore(capacity=10, ttl_seconds=60, clock=FakeClock())
    s.record(["a", "b", "c"], _scores(0.1, 0.7, 0.9))
    assert len(s) == 3
    r = s.join(["c", "a"], np.array([1, 0]))
    assert isinstance(r, JoinResult)
    assert r.joined == 2
    np.testing.assert_array_equal(r.scores, _scores(0.9, 0.1))
    np.testing.assert_array_equal(r.labels, np.array([1, 0], dtype=np.int8))
    assert r.labels.dtype == np.int8
    assert (r.unknown, r.expired, r.already_labelled, r.unmatched_ids) == (0, 0, 0, [])
    assert len(s) == 1
    c = s.counters
    assert (c.recorded, c.labels_received, c.labels_joined) == (3, 2, 2)


def test_capacity_eviction_is_oldest_first_and_counted():
    s = MemoryStore(capacity=3, ttl_seconds=60, clock=FakeClock())
    s.record(["a", "b"], _scores(0.1, 0.2))
    s.record(["c", "d", "e"], _scores(0.3, 0.4, 0.5))
    assert len(s) == 3
    assert s.counters.evicted_capacity == 2
    assert s.counters.evicted_ttl == 0
    assert s.counters.recorded == 5
    r = s.join(["a", "b", "c", "d", "e"], np.array([0, 0, 1, 1, 1]))
    assert r.joined == 3
    np.testing.assert_array_equal(r.scores, _scores(0.3, 0.4, 0.5))
    assert r.expired == 2
    assert r.unmatched_ids == ["a", "b"]


def test_batch_larger_than_capacity_keeps_its_tail():
    s = MemoryStore(capacity=2, ttl_seconds=60, tombstone_capacity=10, clock=FakeClock())
    s.record(_ids("r", 5), np.linspace(0, 1, 5).astype(np.float32))
    assert len(s) == 2
    assert s.counters.evicted_capacity == 3
    r = s.join(["r3", "r4", "r0"], np.array([1, 1, 0]))
    np.testing.assert_allclose(r.scores, [0.75, 1.0])
    assert r.expired == 1


def test_ttl_eviction_with_fake_clock():
    clock = FakeClock()
    s = MemoryStore(capacity=100, ttl_seconds=10, clock=clock)
    s.record(["old1", "old2"], _scores(0.1, 0.2))
    clock.advance(6)
    s.record(["new"], _scores(0.3))
    clock.advance(4)  # old ones are exactly ttl old: kept (age <= ttl)
    s.expire()
    assert len(s) == 3
    assert s.counters.evicted_ttl == 0
    clock.advance(0.001)  # now strictly older than ttl
    s.expire()
    assert len(s) == 1
    assert s.counters.evicted_ttl == 2
    assert s.counters.evicted_capacity == 0
    r = s.join(["old1", "new"], np.array([0, 1]))
    assert (r.joined, r.expired) == (1, 1)
    np.testing.assert_array_equal(r.scores, _scores(0.3))


def test_ttl_applied_on_record_and_join():
    clock = FakeClock()
    s = MemoryStore(capacity=100, ttl_seconds=5, clock=clock)
    s.record(["a"], _scores(0.5))
    clock.advance(6)
    s.record(["b"], _scores(0.5))  # evicts "a" on the way
    assert s.counters.evicted_ttl == 1
    assert len(s) == 1
    clock.advance(6)
    r = s.join(["b"], np.array([1]))  # join applies the TTL before matching
    assert (r.joined, r.expired) == (0, 1)
    assert s.counters.evicted_ttl == 2
    assert len(s) == 0


def test_join_outcomes_joined_unknown_expired_already_labelled():
    clock = FakeClock()
    s = MemoryStore(capacity=2, ttl_seconds=60, tombstone_capacity=10, clock=clock)
    s.record(["x", "y", "z"], _scores(0.2, 0.4, 0.6))  # "x" evicted for capacity
    first = s.join(["y"], np.array([0]))
    assert first.joined == 1
    r = s.join(["z", "never", "x", "y"], np.array([1, 0, 1, 1]))
    assert r.joined == 1
    np.testing.assert_array_equal(r.scores, _scores(0.6))
    np.testing.assert_array_equal(r.labels, np.array([1], dtype=np.int8))
    assert r.unknown == 1
    assert r.expired == 1
    assert r.already_labelled == 1
    assert r.unmatched_ids == ["never", "x", "y"]
    c = s.counters
    assert c.labels_received == 5
    assert c.labels_joined == 2
    assert (c.labels_unknown, c.labels_expired, c.labels_already_labelled) == (1, 1, 1)


def test_same_id_twice_in_one_label_batch():
    s = MemoryStore(capacity=10, ttl_seconds=60, clock=FakeClock())
    s.record(["a"], _scores(0.8))
    r = s.join(["a", "a"], np.array([1, 0]))
    assert r.joined == 1
    np.testing.assert_array_equal(r.labels, np.array([1], dtype=np.int8))
    assert r.already_labelled == 1


def test_tombstone_capacity_defaults_to_capacity():
    s = MemoryStore(capacity=2, ttl_seconds=60, clock=FakeClock())
    s.record(_ids("r", 5), np.zeros(5, dtype=np.float32))
    r = s.join(["r0", "r1", "r2"], np.zeros(3, dtype=np.int8))
    # r0..r2 were evicted, but only the last two evictions are remembered.
    assert (r.unknown, r.expired) == (1, 2)
    assert r.unmatched_ids == ["r0", "r1", "r2"]


def test_tombstones_are_bounded():
    s = MemoryStore(capacity=10, ttl_seconds=60, tombstone_capacity=2, clock=FakeClock())
    s.record(["a", "b", "c"], _scores(0.1, 0.2, 0.3))
    s.join(["a", "b", "c"], np.array([0, 0, 0]))
    # An id is remembered while it is among the last capacity + tombstone_capacity (12)
    # predictions recorded: after 10 more, "a", "b" and "c" are the 13th to 11th newest.
    s.record(_ids("n", 10), np.zeros(10, dtype=np.float32))
    r = s.join(["a", "b", "c"], np.array([0, 0, 0]))
    assert (r.already_labelled, r.unknown) == (2, 1)
    assert r.unmatched_ids == ["a", "b", "c"]
    assert s.tombstones() == 2


def test_no_tombstones_when_their_capacity_is_zero():
    s = MemoryStore(capacity=3, ttl_seconds=60, tombstone_capacity=0, clock=FakeClock())
    s.record(["a", "b", "c"], _scores(0.1, 0.2, 0.3))
    s.join(["a"], np.array([1]))
    s.record(["d", "e"], _scores(0.4, 0.5))  # "b" evicted
    r = s.join(["a", "b", "zz"], np.array([1, 1, 1]), np.array([np.nan, np.nan, 0.5]))
    # Nothing is remembered after it leaves; a carried score still joins (once, here).
    assert (r.joined, r.already_labelled, r.expired, r.unknown) == (1, 0, 0, 2)
    assert s.tombstones() == 0


def test_a_tombstone_older_than_the_newest_recording_is_ignored():
    s = MemoryStore(capacity=2, ttl_seconds=60, tombstone_capacity=4, clock=FakeClock())
    # A carried label buries "a" (never recorded here) in the second ring...
    assert s.join(["a"], np.array([1]), np.array([0.5])).joined == 1
    # ...then "a" is recorded here and evicted unlabelled: its history slot is the truth.
    s.record(["a"], _scores(0.9))
    s.record(["b", "c"], _scores(0.1, 0.2))
    r = s.join(["a"], np.array([1]))
    assert (r.already_labelled, r.expired) == (0, 1)
    # Labelled late with a carried score: the newer second-ring tombstone says so.
    assert s.join(["a"], np.array([0]), np.array([0.7])).joined == 1
    assert s.join(["a"], np.array([0])).already_labelled == 1


def test_a_batch_larger_than_the_history():
    s = MemoryStore(capacity=2, ttl_seconds=60, tombstone_capacity=3, clock=FakeClock())
    s.record(_ids("r", 7), np.arange(7, dtype=np.float32))
    assert s.pending_ids() == ["r5", "r6"]
    assert (s.counters.recorded, s.counters.evicted_capacity) == (7, 5)
    r = s.join(_ids("r", 7), np.ones(7, dtype=np.int8))
    # r2..r4 left but are among the last 5 recorded; r0, r1 are forgotten.
    assert (r.joined, r.expired, r.unknown) == (2, 3, 2)
    assert r.scores.tolist() == [5.0, 6.0]


def test_the_id_index_stays_within_the_history():
    # Ids leave the index when the slot of their newest recording is reused: it never holds
    # more than capacity + tombstone_capacity ids, and each entry points at its own slot.
    s = MemoryStore(capacity=50, ttl_seconds=60, tombstone_capacity=30, clock=FakeClock())
    rng = np.random.default_rng(0)
    for _b in range(60):
        ids = list(dict.fromkeys(f"id{i}" for i in rng.integers(0, 400, size=17)))
        ids = [i for i in ids if i not in set(s.pending_ids())]
        s.record(ids, np.zeros(len(ids), dtype=np.float32))
        s.join(ids[::3], np.ones(len(ids[::3]), dtype=np.int8))
        index = s._ring.where
        assert len(index) <= 80
        ring = s._ring
        assert all(
            ring.ids[q % ring.size] == k and ring.seq_at[q % ring.size] == q
            for k, q in index.items()
        )
    assert s.counters.recorded > 500


def test_duplicates_refused_atomically():
    s = MemoryStore(capacity=10, ttl_seconds=60, clock=FakeClock())
    s.record(["a", "b"], _scores(0.1, 0.2))
    with pytest.raises(DuplicateRequestIds) as exc:
        s.record(["c", "b", "d", "a"], _scores(0.3, 0.4, 0.5, 0.6))
    assert exc.value.ids == ["a", "b"]
    assert "a" in str(exc.value)
    # Nothing from the refused batch was recorded, counters untouched.
    assert len(s) == 2
    assert s.counters.recorded == 2
    r = s.join(["c", "d", "b"], np.array([1, 1, 0]))
    assert r.unknown == 2
    np.testing.assert_array_equal(r.scores, _scores(0.2))  # the original score of "b"


def test_labelled_id_may_be_recorded_again():
    s = MemoryStore(capacity=10, ttl_seconds=60, clock=FakeClock())
    s.record(["a"], _scores(0.1))
    s.join(["a"], np.array([0]))
    s.record(["a"], _scores(0.9))
    r = s.join(["a"], np.array([1]))
    np.testing.assert_array_equal(r.scores, _scores(0.9))


def test_unmatched_ids_capped_but_counts_complete():
    s = MemoryStore(capacity=10, ttl_seconds=60, max_unmatched_reported=3, clock=FakeClock())
    ids = _ids("u", 50)
    r = s.join(ids, np.zeros(50, dtype=np.int8))
    assert r.unknown == 50
    assert r.joined == 0
    assert r.unmatched_ids == ["u0", "u1", "u2"]
    assert s.counters.labels_unknown == 50
    assert s.counters.labels_received == 50


def test_empty_join():
    s = MemoryStore(capacity=10, ttl_seconds=60, clock=FakeClock())
    r = s.join([], np.array([], dtype=np.int8))
    assert r.joined == 0
    assert r.scores.shape == (0,)
    assert s.counters.labels_received == 0


def test_thread_safety_smoke():
    n_threads, per_thread, batch = 8, 500, 20
    s = MemoryStore(capacity=n_threads * per_thread, ttl_seconds=3600)
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            start.wait()
            for b in range(0, per_thread, batch):
                ids = [f"t{t}-{i}" for i in range(b, b + batch)]
                s.record(ids, np.full(batch, t / 10, dtype=np.float32))
                # Label half of what was just recorded.
                s.join(ids[::2], np.ones(len(ids[::2]), dtype=np.int8))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert not errors
    total = n_threads * per_thread
    c = s.counters
    assert c.recorded == total
    assert c.labels_received == total // 2
    assert c.labels_joined == total // 2
    assert c.labels_unknown == c.labels_expired == c.labels_already_labelled == 0
    assert c.evicted_capacity == c.evicted_ttl == 0
    assert len(s) == total - total // 2
    # The rest join with the score their own thread recorded.
    rest = [f"t{t}-{i}" for t in range(n_threads) for i in range(1, per_thread, 2)]
    r = s.join(rest, np.zeros(len(rest), dtype=np.int8))
    assert r.joined == len(rest)
    expected = np.repeat(np.arange(n_threads, dtype=np.float32) / 10, per_thread // 2)
    np.testing.assert_allclose(r.scores, expected)
    assert len(s) == 0


def test_thread_safety_with_capacity_pressure():
    n_threads, per_thread = 6, 400
    s = MemoryStore(capacity=100, ttl_seconds=3600)

    def worker(t: int) -> None:
        for i in range(0, per_thread, 10):
            s.record([f"{t}:{j}" for j in range(i, i + 10)], np.zeros(10, dtype=np.float32))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    c = s.counters
    assert c.recorded == n_threads * per_thread
    assert len(s) == 100
    assert c.evicted_capacity == n_threads * per_thread - 100


def test_an_id_twice_in_one_batch_is_refused_and_nothing_is_recorded():
    s = MemoryStore(capacity=10, ttl_seconds=60)
    with pytest.raises(DuplicateRequestIds):
        s.record(["a", "b", "a"], np.array([0.1, 0.2, 0.3], dtype=np.float32))
    assert len(s) == 0 and s.counters.recorded == 0
