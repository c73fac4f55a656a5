"""Recorded predictions awaiting their delayed labels: bounded in size and age.

An insertion-ordered map from request id to a sequence number; the score and the
time of each prediction sit in numpy ring buffers indexed by ``seq % capacity``, so
recording a batch allocates no per-row tuple. A prediction leaves when ``capacity``
newer ones have been recorded (so the store never holds more than ``capacity``) or
when it is older than ``ttl_seconds``; every eviction is counted. Ids that left recently are
remembered in a second bounded map ("tombstones") so a late label can be told
apart as *expired* or *already labelled* instead of *unknown*.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np

from silentwatch.monitor.state.store import DuplicateRequestIds, JoinResult, StoreCounters

_EXPIRED = 1
_LABELLED = 2


class MemoryStore:
    """Bounded, thread-safe store for the label join, in memory (lost on restart).

    :class:`~.sqlite.SqliteStore` is the durable one; both meet :class:`~.store.PredictionStore`.

    Examples
    --------
    >>> import numpy as np
    >>> s = MemoryStore(capacity=2, ttl_seconds=60)
    >>> s.record(["a", "b", "c"], np.array([0.1, 0.7, 0.9], dtype=np.float32))
    >>> r = s.join(["c", "a", "zz"], np.array([1, 0, 1]))
    >>> (r.joined, r.expired, r.unknown, s.counters.evicted_capacity)
    (1, 1, 1, 1)
    """

    def __init__(
        self,
        capacity: int,
        ttl_seconds: float,
        *,
        tombstone_capacity: int | None = None,
        max_unmatched_reported: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ttl_seconds = float(ttl_seconds)
        self.tombstone_capacity = capacity if tombstone_capacity is None else tombstone_capacity
        self.max_unmatched_reported = max_unmatched_reported
        self._clock = clock
        self._pending: OrderedDict[str, int] = OrderedDict()
        self._scores = np.zeros(capacity, dtype=np.float32)
        self._times = np.zeros(capacity, dtype=np.float64)
        self._seq = 0  # sequence number of the next prediction
        self._gone: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.counters = StoreCounters()

    durable = False

    def close(self) -> None:
        """Nothing to release; here so both stores can be closed alike."""

    def __len__(self) -> int:
        return len(self._pending)

    def _bury(self, rid: str, why: int) -> None:
        gone = self._gone
        gone[rid] = why
        if len(gone) > self.tombstone_capacity:
            gone.popitem(last=False)

    def _bury_many(self, rids: list[str]) -> None:
        gone = self._gone
        gone.update(zip(rids, repeat(_EXPIRED)))
        for _ in range(len(gone) - self.tombstone_capacity):
            gone.popitem(last=False)

    def _evict(self, now: float) -> None:
        pending, times, cap = self._pending, self._times, self.capacity
        oldest_allowed = self._seq - cap  # its ring slot is about to be reused
        cutoff = now - self.ttl_seconds
        evicted: list[str] = []
        n_cap = 0
        popitem = pending.popitem
        while pending:
            # popitem is one C call; the first entry that must stay is put back in front.
            rid, seq = popitem(last=False)
            if seq < oldest_allowed:
                n_cap += 1
            elif times[seq % cap] >= cutoff:
                pending[rid] = seq
                pending.move_to_end(rid, last=False)
                break
            evicted.append(rid)
        if evicted:
            self._bury_many(evicted)
        self.counters.evicted_capacity += n_cap
        self.counters.evicted_ttl += len(evicted) - n_cap

    def record(
        self,
        ids: Sequence[str],
        scores: np.ndarray,
        *,
        now: float | None = None,
        journal: Callable[[list[str], np.ndarray, int, float], None] | None = None,
    ) -> None:
        """Record one prediction per id; refuse the whole batch if any id is pending.

        ``journal(ids, scores, first_seq, now)`` (the durable store) runs after the checks
        and before anything changes: if it raises, nothing was recorded. ``now`` replays a
        recorded time (restoring from the journal).
        """
        unique = set(ids)
        if len(unique) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise DuplicateRequestIds([dup], within_batch=True)
        with self._lock:
            dup = self._pending.keys() & unique
            if dup:
                raise DuplicateRequestIds(sorted(dup))
            now = self._clock() if now is None else now
            if journal is not None:
                journal(list(ids), scores, self._seq, now)
            n, cap = len(ids), self.capacity
            if n > cap:  # only the newest `capacity` can be kept; the rest leave at once
                self._seq += n - cap
                self.counters.evicted_capacity += n - cap
                self.counters.recorded += n - cap
                self._bury_many(list(ids[: n - cap]))
                ids, scores, n = ids[n - cap :], scores[n - cap :], cap
            start = self._seq
            self._seq += n
            # Evict first: the slots we are about to write may belong to old entries.
            self._evict(now)
            slots = np.arange(start, start + n) % cap
            self._scores[slots] = scores
            self._times[slots] = now
            self._pending.update(zip(ids, range(start, start + n), strict=True))
            self.counters.recorded += n

    # -- for the durable store's journal ---------------------------------------------------
    @property
    def next_seq(self) -> int:
        """Sequence number the next recorded prediction gets."""
        return self._seq

    def oldest_pending_seq(self) -> int:
        """Sequence number of the oldest prediction still awaiting a label (next_seq if none)."""
        with self._lock:
            return self._oldest_pending_unlocked()

    def _oldest_pending_unlocked(self) -> int:
        # For a journal callback, which runs with the lock held.
        return next(iter(self._pending.values()), self._seq)

    def restore_labelled(self, ids: Sequence[str]) -> None:
        """After replaying the journal: these ids were labelled before; they leave pending
        and are remembered as labelled."""
        with self._lock:
            for rid in ids:
                self._pending.pop(rid, None)
                self._bury(rid, _LABELLED)

    def rebind(self, bundle_sha256: str) -> int:
        """Serve another bundle: pending predictions leave (late labels count as expired)."""
        with self._lock:
            rids = list(self._pending)
            self._pending.clear()
            self._bury_many(rids)
            return len(rids)

    def expire(self) -> None:
        """Apply the TTL now (also done on every record)."""
        with self._lock:
            self._evict(self._clock())

    def join(
        self,
        ids: Sequence[str],
        labels: np.ndarray,
        carried: np.ndarray | None = None,
        *,
        journal: Callable[[JoinResult, list[tuple[str, int]]], None] | None = None,
    ) -> JoinResult:
        """Pop the predictions these labels belong to; count the ones that match nothing.

        ``carried`` (NaN where absent): the score the serving replica gave, used when this
        store has no prediction for the id, unless the id was already labelled here.
        ``journal(result, [(id, prediction seq or -1), ...])`` (the durable store) runs once
        the outcome is known and before anything changes: if it raises, nothing was joined.
        """
        labels = np.asarray(labels).astype(np.int8).reshape(-1)
        scores = np.empty(len(ids), dtype=np.float32)
        keep = np.zeros(len(ids), dtype=bool)
        res = JoinResult(scores=scores, labels=labels)
        joined: list[tuple[str, int]] = []  # (id, its prediction's seq; -1: carried)
        with self._lock:
            self._evict(self._clock())
            pending, gone = self._pending, self._gone
            taken: set[str] = set()
            for i, rid in enumerate(ids):
                seq = None if rid in taken else pending.get(rid)
                if seq is not None:
                    scores[i] = self._scores[seq % self.capacity]
                    keep[i] = True
                    taken.add(rid)
                    joined.append((rid, seq))
                    continue
                why = _LABELLED if rid in taken else gone.get(rid)
                if why != _LABELLED and carried is not None and np.isfinite(carried[i]):
                    scores[i] = carried[i]
                    keep[i] = True
                    taken.add(rid)
                    joined.append((rid, -1))
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
            res.scores, res.labels = scores[keep], labels[keep]
            if journal is not None:
                journal(res, joined)
            for rid, _ in joined:
                pending.pop(rid, None)
                self._bury(rid, _LABELLED)
            c = self.counters
            c.labels_received += len(ids)
            c.labels_joined += len(joined)
            c.labels_carried += res.carried
            c.labels_unknown += res.unknown
            c.labels_expired += res.expired
            c.labels_already_labelled += res.already_labelled
        return res
