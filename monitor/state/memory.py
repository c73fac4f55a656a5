"""Recorded predictions awaiting their delayed labels: bounded in size and age.

An insertion-ordered map from request id to a sequence number; the scores (one per head)
and the time of each prediction sit in numpy ring buffers indexed by ``seq % capacity``, so
recording a batch allocates no per-row tuple. A prediction leaves when ``capacity``
newer ones have been recorded (so the store never holds more than ``capacity``), when it is
older than ``ttl_seconds``, or once every head of it has been labelled; every eviction is
counted. Ids that left recently are remembered in a second bounded map ("tombstones") so
a late label can be told apart as *expired* or *already labelled* instead of *unknown*.

Multi-head bundles (``heads`` = k > 1): each prediction holds k scores, and a label names
its head. An id stays pending until each of its heads has been labelled (the heads labelled
so far sit in a small map holding only partly labelled ids, empty when k = 1), and a
tombstone is a bitmask: which heads were labelled, plus a flag saying whether the id was
recorded here (so an unlabelled head of it is *expired*, not *unknown*).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import repeat

import numpy as np

from silentwatch.monitor.state.store import DuplicateRequestIds, JoinResult, StoreCounters

# A tombstone: bits 0..15 are the heads labelled; _LEFT says the prediction was recorded
# here and left (capacity, TTL, rebind or fully labelled), so an unlabelled head is expired.
MAX_HEADS = 16
_LEFT = 1 << MAX_HEADS
_F32 = np.dtype(np.float32)


def check_heads(heads: int) -> int:
    """The number of heads a store is built for (1 to :data:`MAX_HEADS`)."""
    if isinstance(heads, bool) or not isinstance(heads, int | np.integer):
        raise TypeError(f"heads must be an int, not {type(heads).__name__}")
    if not 1 <= heads <= MAX_HEADS:
        raise ValueError(f"heads must be between 1 and {MAX_HEADS}, not {heads}")
    return int(heads)


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

    Two heads: a label names its head; the id stays pending until both are labelled.

    >>> s = MemoryStore(capacity=10, ttl_seconds=60, heads=2)
    >>> s.record(["a"], np.array([[0.25, 0.75]], dtype=np.float32))
    >>> r = s.join(["a", "a"], np.array([1, 1]), heads=np.array([1, 1]))
    >>> (r.joined, r.already_labelled, r.scores.tolist(), r.heads.tolist(), len(s))
    (1, 1, [0.75], [1], 1)
    >>> r = s.join(["a"], np.array([0]))  # head 0
    >>> (r.joined, len(s), s.join(["a"], np.array([0])).already_labelled)
    (1, 0, 1)
    """

    def __init__(
        self,
        capacity: int,
        ttl_seconds: float,
        *,
        tombstone_capacity: int | None = None,
        max_unmatched_reported: int = 20,
        clock: Callable[[], float] = time.monotonic,
        heads: int = 1,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.ttl_seconds = float(ttl_seconds)
        self.tombstone_capacity = capacity if tombstone_capacity is None else tombstone_capacity
        self.max_unmatched_reported = max_unmatched_reported
        self._clock = clock
        self._pending: OrderedDict[str, int] = OrderedDict()
        self._set_heads(heads)
        self._times = np.zeros(capacity, dtype=np.float64)
        self._seq = 0  # sequence number of the next prediction
        self._gone: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.counters = StoreCounters()

    durable = False

    def _set_heads(self, heads: int) -> None:
        self.heads = check_heads(heads)
        self._all = (1 << self.heads) - 1  # the mask of an id with every head labelled
        self._scores = np.zeros((self.capacity, self.heads), dtype=np.float32)
        self._flat = self._scores.reshape(-1)  # a view: slot * heads + head
        # Pending ids with some (not all) heads labelled -> that mask; always empty for k = 1.
        self._partial: dict[str, int] = {}

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
        """These pending ids leave unlabelled (or partly labelled): a late label is expired."""
        gone = self._gone
        partial = self._partial
        if partial:
            gone.update((r, _LEFT | partial.pop(r, 0)) for r in rids)
        else:
            gone.update(zip(rids, repeat(_LEFT)))
        for _ in range(len(gone) - self.tombstone_capacity):
            gone.popitem(last=False)

    def _bury_left(self, pairs: Sequence[tuple[str, int]]) -> None:
        """(id, mask of the heads labelled) of predictions that left without a trace in
        pending (the durable store dropping another bundle's journal): late labels for
        their other heads count as expired."""
        with self._lock:
            for rid, mask in pairs:
                self._bury(rid, _LEFT | mask)

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

    def _as_scores(self, n: int, scores: np.ndarray) -> np.ndarray:
        """``scores`` as (n, heads) float32; for one head also (n,), kept as it is."""
        s = scores if type(scores) is np.ndarray else np.asarray(scores)
        if s.dtype is not _F32:
            s = s.astype(np.float32)
        shape = s.shape
        if shape != (n, self.heads) and (self.heads != 1 or shape != (n,)):
            want = f"({n}, {self.heads})" + (f" or ({n},)" if self.heads == 1 else "")
            raise ValueError(f"scores have shape {shape}, expected {want}")
        return s

    def record(
        self,
        ids: Sequence[str],
        scores: np.ndarray,
        *,
        now: float | None = None,
        journal: Callable[[list[str], np.ndarray, int, float], None] | None = None,
    ) -> None:
        """Record one prediction per id; refuse the whole batch if any id is pending.

        ``scores``: (n, heads) float32, one column per head (head 0 first); (n,) is
        accepted when the store has one head. ``journal(ids, scores, first_seq, now)`` (the
        durable store; ``scores`` float32, as given) runs after the checks and before anything
        changes: if it raises, nothing was recorded. ``now`` replays a recorded time
        (restoring from the journal).
        """
        scores = self._as_scores(len(ids), scores)
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
            if self.heads == 1:  # the flat view: a 2-D write costs ~0.5 µs more per call
                self._flat[slots] = scores.reshape(-1)
            else:
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

    def _forget_pending(self, ids: Sequence[str]) -> None:
        """Replaying the journal: these ids are recorded again, so their earlier prediction
        had left (labelled or evicted) before; it goes without a trace (no counter)."""
        with self._lock:
            for rid in self._pending.keys() & set(ids):
                del self._pending[rid]
                self._partial.pop(rid, None)

    def restore_labelled(
        self,
        ids: Sequence[str],
        heads: Sequence[int] | None = None,
        pred_seqs: Sequence[int] | None = None,
    ) -> None:
        """After replaying the journal: these (id, head) pairs (head 0 when ``heads`` is None)
        were labelled before. A pending prediction is marked labelled for that head, and
        leaves once every head is; an id not pending is remembered as labelled for it.
        With ``pred_seqs`` (the labelled prediction's sequence number, -1 for a carried
        score) a pending prediction of another sequence number, recorded again after that
        label, is left alone."""
        heads = repeat(0) if heads is None else heads
        pred_seqs = repeat(None) if pred_seqs is None else pred_seqs
        with self._lock:
            pending, partial, gone, full = self._pending, self._partial, self._gone, self._all
            for rid, h, ps in zip(ids, heads, pred_seqs, strict=False):
                bit = 1 << int(h)
                seq = pending.get(rid)
                if seq is None:
                    self._bury(rid, gone.get(rid, 0) | bit)
                elif ps is None or ps == seq:
                    m = partial.pop(rid, 0) | bit
                    if m & full == full:
                        del pending[rid]
                        self._bury(rid, _LEFT | m)
                    else:
                        partial[rid] = m

    def rebind(self, bundle_sha256: str, heads: int = 1) -> int:
        """Serve another bundle (with ``heads`` heads): pending predictions leave (late labels
        count as expired); the tombstones stay."""
        heads = check_heads(heads)
        with self._lock:
            rids = list(self._pending)
            self._pending.clear()
            self._bury_many(rids)
            self._partial.clear()
            if heads != self.heads:
                self._set_heads(heads)
            return len(rids)

    def expire(self) -> None:
        """Apply the TTL now (also done on every record)."""
        with self._lock:
            self._evict(self._clock())

    def _as_heads(self, m: int, heads: np.ndarray | None) -> np.ndarray:
        if heads is None:
            return np.zeros(m, dtype=np.int16)
        h = np.asarray(heads)
        if h.shape != (m,) or (m and h.dtype.kind not in "iu"):
            raise ValueError(f"heads must be an ({m},) integer array, not {h.dtype} {h.shape}")
        if m and (int(h.min()) < 0 or int(h.max()) >= self.heads):
            raise ValueError(
                f"head indices must be in [0, {self.heads}), got {int(h.min())}..{int(h.max())}"
            )
        return h.astype(np.int16)

    def join(
        self,
        ids: Sequence[str],
        labels: np.ndarray,
        carried: np.ndarray | None = None,
        heads: np.ndarray | None = None,
        *,
        journal: Callable[[JoinResult, list[tuple[str, int, int]]], None] | None = None,
    ) -> JoinResult:
        """Join labels to the predictions they belong to; count the ones that match nothing.

        ``heads`` ((m,) ints, None: all head 0) names each label's head. Per (id, head): a
        label joins the recorded score of that head when the id is pending and that head
        not yet labelled; the id stays pending for its other heads and leaves once all are
        labelled. ``already_labelled``: that (id, head) was labelled before (or earlier in
        this batch); ``expired``: the id left (capacity, TTL, rebind) with that head
        unlabelled; ``unknown`` otherwise. ``carried`` (NaN where absent): the score the
        serving replica gave, used when this store has no prediction for the id, unless
        that (id, head) was already labelled here.
        ``journal(result, [(id, prediction seq or -1, head), ...])`` (the durable store)
        runs once the outcome is known and before anything changes: if it raises, nothing
        was joined.
        """
        labels = np.asarray(labels).astype(np.int8).reshape(-1)
        m = len(ids)
        if labels.shape[0] != m or (carried is not None and np.shape(carried) != (m,)):
            raise ValueError(f"{m} ids need {m} labels (and carried scores, if any)")
        head_arr = self._as_heads(m, heads)
        res = JoinResult(scores=np.empty(0, np.float32), labels=labels[:0], heads=head_arr[:0])
        joined: list[tuple[str, int, int]] = []  # (id, its prediction's seq or -1, head)
        rows: list[int] = []  # the batch rows that joined, in order
        src: list[int] = []  # their score's place in the flattened ring; -1: carried
        head_list = repeat(0) if heads is None else head_arr.tolist()
        usable = repeat(False) if carried is None else np.isfinite(carried).tolist()
        unmatched = res.unmatched_ids
        max_unmatched = self.max_unmatched_reported
        with self._lock:
            self._evict(self._clock())
            pending, gone, partial = self._pending, self._gone, self._partial
            cap, k = self.capacity, self.heads
            if k == 1:  # the common case, kept as lean as the one-head store was
                done: set[str] = set()  # ids joined earlier in this batch
                for i, rid, ok in zip(range(m), ids, usable, strict=False):
                    seq = None if rid in done else pending.get(rid)
                    if seq is not None:
                        done.add(rid)
                        joined.append((rid, seq, 0))
                        rows.append(i)
                        src.append(seq % cap)
                        continue
                    why = 1 if rid in done else gone.get(rid, 0)
                    if why & 1:
                        res.already_labelled += 1
                    elif ok:
                        done.add(rid)
                        joined.append((rid, -1, 0))
                        rows.append(i)
                        src.append(-1)
                        res.carried += 1
                        continue
                    elif why & _LEFT:
                        res.expired += 1
                    else:
                        res.unknown += 1
                    if len(unmatched) < max_unmatched:
                        unmatched.append(rid)
            else:
                taken: dict[str, int] = {}  # id -> heads joined earlier in this batch
                for i, rid, h, ok in zip(range(m), ids, head_list, usable, strict=False):
                    bit = 1 << h
                    t = taken.get(rid, 0)
                    seq = pending.get(rid)
                    if seq is not None:
                        if not (t | partial.get(rid, 0)) & bit:
                            taken[rid] = t | bit
                            joined.append((rid, seq, h))
                            rows.append(i)
                            src.append(seq % cap * k + h)
                            continue
                        res.already_labelled += 1
                    else:
                        why = gone.get(rid, 0) | t
                        if why & bit:
                            res.already_labelled += 1
                        elif ok:
                            taken[rid] = t | bit
                            joined.append((rid, -1, h))
                            rows.append(i)
                            src.append(-1)
                            res.carried += 1
                            continue
                        elif why & _LEFT:
                            res.expired += 1
                        else:
                            res.unknown += 1
                    if len(unmatched) < max_unmatched:
                        unmatched.append(rid)
            if rows:
                at = np.array(rows, dtype=np.intp)
                where = np.array(src, dtype=np.intp)
                scores = self._flat[where]  # a copy (fancy indexing)
                if res.carried:
                    mine = where < 0
                    scores[mine] = carried[at[mine]]
                res.scores, res.labels, res.heads = scores, labels[at], head_arr[at]
            if journal is not None:
                journal(res, joined)
            bury, full = self._bury, self._all
            if full == 1:  # one head: a label settles the id
                for rid, seq, _ in joined:
                    if seq >= 0:
                        del pending[rid]
                        bury(rid, _LEFT | 1)
                    else:
                        bury(rid, gone.get(rid, 0) | 1)
            else:
                for rid, seq, h in joined:
                    if seq < 0:
                        bury(rid, gone.get(rid, 0) | (1 << h))
                        continue
                    mask = partial.pop(rid, 0) | (1 << h)
                    if mask == full:
                        del pending[rid]
                        bury(rid, _LEFT | full)
                    else:
                        partial[rid] = mask
            c = self.counters
            c.labels_received += m
            c.labels_joined += len(joined)
            c.labels_carried += res.carried
            c.labels_unknown += res.unknown
            c.labels_expired += res.expired
            c.labels_already_labelled += res.already_labelled
        return res
