"""Recorded predictions awaiting their delayed labels: bounded in size and age, batch at a time.

Everything about a prediction sits in numpy ring buffers indexed by its sequence number
modulo ``capacity + tombstone_capacity`` (the *history*): its id, its scores (one per
head), its time, whether it is still pending, and which of its heads were labelled. The
only per-id structure is a plain dict from id to the newest sequence number recorded under
it, written, read and trimmed in bulk (``dict.update(zip(...))``, ``map(dict.get, ...)``,
``map(dict.pop, ...)``: loops that run in C, never in Python bytecode); an id leaves it
when the history slot of its newest recording is reused. So a 1,024-id batch is recorded
or joined with a fixed number of vectorised operations and one dict lookup per id.

A prediction leaves when ``capacity`` newer ones have been recorded (so the store never
holds more than ``capacity``), when it is older than ``ttl_seconds``, or once every head of
it has been labelled; every eviction is counted. A prediction that left stays in its
history slot, not pending, until the slot is reused ``capacity + tombstone_capacity``
records after it was written: that is its *tombstone*, so a late label can be told apart
as *expired* or *already labelled* instead of *unknown*, and leaving writes nothing but a
flag. A tombstone is a bitmask: which heads were labelled, plus a flag saying whether the
id was recorded here (so an unlabelled head of it is *expired*, not *unknown*). The few
tombstones that no history slot holds — ids labelled with a carried score (never recorded
here, or labelled after they left) and a dropped bundle's journal — sit in a second,
smaller ring of ``tombstone_capacity`` (same scheme), each stamped with the sequence
number current when it was written so that one older than the id's newest recording is
ignored. With ``tombstone_capacity = 0`` nothing is remembered after it leaves.

Ids are any hashable: ``str`` (the wire's ``request_ids``) or 16-byte ``bytes`` (the wire's
``packed_request_ids``, split with one ``numpy.frombuffer(raw, "V16").tolist()``). The two
forms never match each other; messages show a bytes id as hex.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import compress, repeat

import numpy as np

from silentwatch.monitor.state.store import (
    DuplicateRequestIds,
    JoinResult,
    RequestId,
    StoreCounters,
)

# A tombstone: bits 0..15 are the heads labelled; _LEFT says the prediction was recorded
# here and left (capacity, TTL, rebind or fully labelled), so an unlabelled head is expired.
MAX_HEADS = 16
_LEFT = 1 << MAX_HEADS
_F32 = np.dtype(np.float32)
_MASK = np.uint32

# (ids, scores, first seq, time) -> None: the durable store's journal for one record call.
RecordJournal = Callable[[list[RequestId], np.ndarray, int, float], None]
# (result, joined ids, their prediction seq or -1 (carried), their head) -> None.
JoinJournal = Callable[[JoinResult, list[RequestId], np.ndarray, np.ndarray], None]


def check_heads(heads: int) -> int:
    """The number of heads a store is built for (1 to :data:`MAX_HEADS`)."""
    if isinstance(heads, bool) or not isinstance(heads, int | np.integer):
        raise TypeError(f"heads must be an int, not {type(heads).__name__}")
    if not 1 <= heads <= MAX_HEADS:
        raise ValueError(f"heads must be between 1 and {MAX_HEADS}, not {heads}")
    return int(heads)


def show_id(rid: RequestId) -> str:
    """An id as messages print it: a packed (bytes) id as lowercase hex.

    >>> show_id("req-1"), show_id(bytes(range(16)))
    ('req-1', '000102030405060708090a0b0c0d0e0f')
    """
    return rid.hex() if isinstance(rid, bytes) else str(rid)


def _pieces(start: int, n: int, size: int) -> tuple[slice, ...]:
    """The ring slots of sequence numbers [start, start + n) as at most two slices."""
    a = start % size
    if a + n <= size:
        return (slice(a, a + n),)
    return slice(a, size), slice(0, a + n - size)


class _Ring:
    """Ids by sequence number in a ring of ``size`` slots, with a dict index.

    ``where[id]`` is the newest sequence number written under ``id``. When a slot is
    overwritten, the id it held leaves the index if that slot was its newest entry, so the
    index never holds more than ``size`` ids and needs no periodic rebuild (which, at
    500,000 entries, would stall one request for tens of milliseconds).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids = np.empty(max(size, 1), dtype=object)
        self.seq_at = np.full(max(size, 1), -1, dtype=np.int64)  # the seq each slot holds
        self.where: dict[RequestId, int] = {}
        self.end = 0  # the next sequence number

    def lookup(self, keys: Sequence[RequestId]) -> np.ndarray:
        """(n,) int64 sequence numbers, -1 where the id is not in the ring."""
        n = len(keys)
        return np.fromiter(map(self.where.get, keys, repeat(-1)), dtype=np.int64, count=n)

    def write(self, keys: list[RequestId], start: int) -> None:
        """Put ``keys`` at sequence numbers [start, start + len(keys)); ``start >= end``."""
        n = len(keys)
        if n == 0:
            return
        if n > self.size:  # only the last `size` fit
            start, keys, n = start + n - self.size, keys[n - self.size :], self.size
        pieces = _pieces(start, n, self.size)
        if len(pieces) == 1:
            old_seq, old_ids = self.seq_at[pieces[0]], self.ids[pieces[0]]
        else:
            old_seq = np.concatenate([self.seq_at[p] for p in pieces])
            old_ids = np.concatenate([self.ids[p] for p in pieces])
        held = old_seq >= 0
        if held.any():  # the overwritten ids leave the index, unless recorded again since
            gone = old_ids[held].tolist()
            now = np.fromiter(map(self.where.get, gone, repeat(-1)), np.int64, len(gone))
            stale = now == old_seq[held]
            if stale.any():
                deque(map(self.where.pop, compress(gone, stale.tolist())), maxlen=0)
        if n == 1:  # an object array would take a 1-tuple id for a sequence
            self.ids[start % self.size] = keys[0]
            self.seq_at[start % self.size] = start
        else:
            at = 0
            for piece in pieces:
                width = piece.stop - piece.start
                self.ids[piece] = keys[at : at + width]
                self.seq_at[piece] = np.arange(start + at, start + at + width)
                at += width
        self.where.update(zip(keys, range(start, start + n), strict=True))
        self.end = start + n


class MemoryStore:
    """Bounded, thread-safe store for the label join, in memory (lost on restart).

    At most ``capacity`` predictions are pending; an id recorded among the last
    ``capacity + tombstone_capacity`` predictions is remembered after it leaves
    (``tombstone_capacity`` defaults to ``capacity``), as is each of the last
    ``tombstone_capacity`` ids labelled with a carried score.

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

    Packed ids (16 bytes each) work the same way:

    >>> s = MemoryStore(capacity=10, ttl_seconds=60)
    >>> ids = np.frombuffer(bytes(range(32)), "V16").tolist()
    >>> s.record(ids, np.array([0.2, 0.8], dtype=np.float32))
    >>> s.join(ids[1:], np.array([1])).scores.tolist()
    [0.800000011920929]
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
        if self.tombstone_capacity < 0:
            raise ValueError("tombstone_capacity must be at least 0")
        self.max_unmatched_reported = max_unmatched_reported
        self._clock = clock
        self._size = capacity + self.tombstone_capacity  # history slots
        self._ring = _Ring(self._size)
        self._live = np.zeros(self._size, dtype=bool)  # the slot's prediction awaits a label
        self._times = np.zeros(self._size, dtype=np.float64)
        # Heads labelled so far, per slot; a slot that left keeps it as its tombstone.
        self._mask = np.zeros(self._size, dtype=_MASK)
        self._low = 0  # no prediction with a smaller sequence number is pending
        self._n_live = 0
        self._set_heads(heads)
        # Tombstones no history slot holds (carried labels, a dropped journal).
        self._tombs = _Ring(self.tombstone_capacity)
        self._tomb_mask = np.zeros(max(self.tombstone_capacity, 1), dtype=_MASK)
        self._tomb_seq = np.zeros(max(self.tombstone_capacity, 1), dtype=np.int64)
        self._lock = threading.Lock()
        self.counters = StoreCounters()

    durable = False

    def _set_heads(self, heads: int) -> None:
        self.heads = check_heads(heads)
        self._all = (1 << self.heads) - 1  # the mask of an id with every head labelled
        self._scores = np.zeros((self._size, self.heads), dtype=np.float32)
        self._flat = self._scores.reshape(-1)  # a view: slot * heads + head

    @property
    def _seq(self) -> int:
        """Sequence number of the next prediction."""
        return self._ring.end

    def close(self) -> None:
        """Nothing to release; here so both stores can be closed alike."""

    def __len__(self) -> int:
        return self._n_live

    # -- reading the rings ---------------------------------------------------------------
    def _pending_seqs(self, keys: Sequence[RequestId]) -> np.ndarray:
        """(n,) int64 sequence number of each id's pending prediction, -1 where none."""
        return self._lookup(keys, tombs=False)[0]

    def _lookup(
        self, keys: Sequence[RequestId], tombs: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(pending, tomb)``: (n,) int64 sequence number of each id's pending prediction
        (-1 where none) and (n,) tombstone masks (0: none; not read with ``tombs=False``).

        One dict lookup per id gives its newest recording in the history: pending, or left
        (its slot's mask plus :data:`_LEFT` is the tombstone). A tombstone of the second
        ring counts too when it was written after that recording.
        """
        seq = self._ring.lookup(keys)
        slot = seq % self._size
        live = self._live[slot] & (seq >= 0)
        pending = np.where(live, seq, -1)
        if not tombs:
            return pending, seq[:0]
        if self.tombstone_capacity == 0:
            return pending, np.zeros(len(keys), dtype=_MASK)
        tomb = np.where((seq >= 0) & ~live, self._mask[slot] | _MASK(_LEFT), 0).astype(_MASK)
        t = self._tombs
        if t.end:  # the second ring has ever been written
            at = t.lookup(keys)
            tslot = at % self.tombstone_capacity
            newer = (at >= 0) & (self._tomb_seq[tslot] > seq)
            tomb |= np.where(newer, self._tomb_mask[tslot], 0).astype(_MASK)
        return pending, tomb

    def _tomb_masks(self, keys: Sequence[RequestId]) -> np.ndarray:
        """(n,) tombstone masks (0: no tombstone; a pending id's is not meaningful)."""
        return self._lookup(keys)[1]

    def pending_ids(self) -> list[RequestId]:
        """The pending ids, oldest first (for tests and tools; O(capacity))."""
        with self._lock:
            seqs = np.arange(max(self._low, self._seq - self.capacity), self._seq)
            slots = seqs % self._size
            return self._ring.ids[slots[self._live[slots]]].tolist()

    def tombstones(self) -> int:
        """How many ids a tombstone remembers now (for tests and tools; O(history))."""
        with self._lock:
            if self.tombstone_capacity == 0:
                return 0
            keys: set[RequestId] = set()
            for ring in (self._ring, self._tombs):
                seqs = np.arange(max(0, ring.end - ring.size), ring.end)
                keys.update(ring.ids[seqs % ring.size].tolist())
            keys.discard(None)
            _, tomb = self._lookup(list(keys))
            return int(np.count_nonzero(tomb))

    # -- writing the rings ---------------------------------------------------------------
    def _bury(self, keys: list[RequestId], masks: np.ndarray) -> None:
        """These ids (unique) get tombstones in the second ring with these masks, as the
        newest ones (for ids no history slot remembers as they should be)."""
        tc = self.tombstone_capacity
        if tc == 0 or not keys:
            return
        t = self._tombs
        start = t.end
        t.write(keys, start)
        n = min(len(keys), tc)
        m = np.asarray(masks, dtype=_MASK)[len(keys) - n :]
        at = 0
        for piece in _pieces(t.end - n, n, tc):
            width = piece.stop - piece.start
            self._tomb_mask[piece] = m[at : at + width]
            self._tomb_seq[piece] = self._seq  # later than every recording so far
            at += width

    def _leave(self, slots: np.ndarray) -> None:
        """The pending predictions in these history slots leave; each slot, mask included,
        stays as the tombstone until it is reused."""
        if not len(slots):
            return
        self._live[slots] = False
        self._n_live -= len(slots)

    def _mark_labelled(self, keys: list[RequestId], rows: np.ndarray, bits: np.ndarray) -> None:
        """The ids at ``rows`` (not pending) have the heads in ``bits`` labelled: each one's
        tombstone gains them (an id may come more than once, for several heads)."""
        if not len(rows):
            return
        acc: dict[RequestId, int] = {}
        for rid, b in zip([keys[i] for i in rows.tolist()], bits[rows].tolist(), strict=True):
            acc[rid] = acc.get(rid, 0) | b
        rids = list(acc)
        vals = np.fromiter(acc.values(), dtype=np.int64, count=len(acc))
        self._bury(rids, (self._tomb_masks(rids) | vals).astype(_MASK))

    def _bury_left(self, pairs: Sequence[tuple[RequestId, int]]) -> None:
        """(id, mask of the heads labelled) of predictions that left without a trace in
        pending (the durable store dropping another bundle's journal): late labels for
        their other heads count as expired."""
        last = dict(pairs)  # an id twice: the later mask, as the journal had it
        with self._lock:
            masks = np.fromiter(last.values(), dtype=np.int64, count=len(last)) | _LEFT
            self._bury(list(last), masks.astype(_MASK))

    def _first_ttl_survivor(self, lo: int, hi: int, cutoff: float) -> int:
        """The smallest seq in [lo, hi) recorded at or after ``cutoff`` (hi if none).

        Times do not decrease with the sequence number (one clock, records in order), so a
        binary search over the ring finds it: about 20 steps for a million slots.
        """
        times, cap = self._times, self._size
        if lo >= hi or times[lo % cap] >= cutoff:  # the common case: nothing expired
            return lo
        while lo < hi:
            mid = (lo + hi) // 2
            if times[mid % cap] >= cutoff:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def _evict(self, now: float, new_end: int | None = None) -> None:
        """Evict what capacity (slots about to be reused: the ring is about to end at
        ``new_end``) and the TTL push out, counted."""
        seq, cap, size = self._seq, self.capacity, self._size
        cap_end = (seq if new_end is None else new_end) - cap  # these lost their place
        lo = max(self._low, seq - cap)  # older ones had left
        if cap_end > lo:
            slots = np.arange(lo, min(cap_end, seq)) % size  # seq on: never written
            gone = slots[self._live[slots]]
            self.counters.evicted_capacity += len(gone)
            self._leave(gone)
            lo = cap_end
        end = self._first_ttl_survivor(lo, max(lo, seq), now - self.ttl_seconds)
        if end > lo:
            slots = np.arange(lo, end) % size
            gone = slots[self._live[slots]]
            self.counters.evicted_ttl += len(gone)
            self._leave(gone)
        self._low = max(end, lo)

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
        ids: Sequence[RequestId],
        scores: np.ndarray,
        *,
        now: float | None = None,
        journal: RecordJournal | None = None,
    ) -> None:
        """Record one prediction per id; refuse the whole batch if any id is pending.

        ``ids``: strings, or 16-byte ``bytes`` (packed ids). ``scores``: (n, heads) float32,
        one column per head (head 0 first); (n,) is accepted when the store has one head.
        ``journal(ids, scores, first_seq, now)`` (the durable store; ``scores`` float32, as
        given) runs after the checks and before anything changes: if it raises, nothing was
        recorded. ``now`` replays a recorded time (restoring from the journal).
        """
        keys = ids if type(ids) is list else list(ids)
        n = len(keys)
        scores = self._as_scores(n, scores)
        if len(set(keys)) != n:
            seen: set[RequestId] = set()
            dup = next(i for i in keys if i in seen or seen.add(i))
            raise DuplicateRequestIds([show_id(dup)], within_batch=True)
        with self._lock:
            pending = self._pending_seqs(keys)
            if n and pending.max() >= 0:
                at = np.flatnonzero(pending >= 0)
                raise DuplicateRequestIds(sorted(show_id(keys[i]) for i in at.tolist()))
            now = self._clock() if now is None else now
            if journal is not None:
                journal(keys, scores, self._seq, now)
            self._write(keys, scores, now)

    def _write(self, keys: list[RequestId], scores: np.ndarray, now: float) -> None:
        n, cap, size = len(keys), self.capacity, self._size
        start = self._seq
        # Evict first: predictions pushed out of the newest `capacity` leave (counted).
        self._evict(now, start + n)
        if n > size:  # only the newest `size` fit in the history at all
            self.counters.evicted_capacity += n - size
            self.counters.recorded += n - size
            start += n - size
            keys, scores, n = keys[n - size :], scores[n - size :], size
        self._ring.write(keys, start)
        flat = scores.reshape(-1) if self.heads == 1 else None
        at = 0
        for piece in _pieces(start, n, size):
            width = piece.stop - piece.start
            self._live[piece] = True
            self._mask[piece] = 0
            self._times[piece] = now
            if flat is not None:  # the flat view: a 2-D write costs ~0.5 µs more per call
                self._flat[piece] = flat[at : at + width]
            else:
                self._scores[piece] = scores[at : at + width]
            at += width
        if n > cap:  # only the newest `capacity` stay pending; the rest leave at once
            gone = np.arange(start, start + n - cap) % size
            self._live[gone] = False
            self.counters.evicted_capacity += n - cap
            n_pending = cap
        else:
            n_pending = n
        self._n_live += n_pending
        self.counters.recorded += n

    # -- for the durable store's journal ---------------------------------------------------
    @property
    def next_seq(self) -> int:
        """Sequence number the next recorded prediction gets."""
        return self._seq

    def _restart_at(self, seq: int) -> None:
        """Replaying the journal: number the next prediction ``seq`` (the store is empty)."""
        self._ring.end = self._low = int(seq)

    def oldest_pending_seq(self) -> int:
        """Sequence number of the oldest prediction still awaiting a label (next_seq if none)."""
        with self._lock:
            return self._oldest_pending_unlocked()

    def _oldest_pending_unlocked(self) -> int:
        # For a journal callback, which runs with the lock held. Moves _low past the
        # predictions that left, a chunk at a time (amortised over their recording).
        lo, end, cap = self._low, self._seq, self._size
        while lo < end:
            slots = np.arange(lo, min(end, lo + 4096)) % cap
            live = self._live[slots]
            if live.any():
                lo += int(live.argmax())
                break
            lo += len(slots)
        self._low = lo
        return lo

    def _forget_pending(self, ids: Sequence[RequestId]) -> None:
        """Replaying the journal: these ids are recorded again, so their earlier prediction
        had left (labelled or evicted) before; it goes without a trace (no counter)."""
        with self._lock:
            seq = self._pending_seqs(ids if type(ids) is list else list(ids))
            slots = seq[seq >= 0] % self._size
            self._live[slots] = False
            self._n_live -= len(slots)

    def restore_labelled(
        self,
        ids: Sequence[RequestId],
        heads: Sequence[int] | None = None,
        pred_seqs: Sequence[int] | None = None,
    ) -> None:
        """After replaying the journal: these (id, head) pairs (head 0 when ``heads`` is None)
        were labelled before. A pending prediction is marked labelled for that head, and
        leaves once every head is; an id not pending is remembered as labelled for it.
        With ``pred_seqs`` (the labelled prediction's sequence number, -1 for a carried
        score) a pending prediction of another sequence number, recorded again after that
        label, is left alone."""
        keys = ids if type(ids) is list else list(ids)
        m = len(keys)
        h = np.zeros(m, dtype=np.int64) if heads is None else np.asarray(heads, dtype=np.int64)
        bits = (np.int64(1) << h).astype(_MASK)
        with self._lock:
            seq = self._pending_seqs(keys)
            pend = seq >= 0
            mine = pend.copy()
            if pred_seqs is not None:
                mine &= np.asarray(pred_seqs, dtype=np.int64) == seq
            slots = seq[mine] % self._size
            np.bitwise_or.at(self._mask, slots, bits[mine])
            done = np.unique(slots)
            self._leave(done[self._mask[done] == self._all])
            # Not pending: a tombstone gathering every head labelled (an id may come twice).
            self._mark_labelled(keys, np.flatnonzero(~pend), bits)

    def rebind(self, bundle_sha256: str, heads: int = 1) -> int:
        """Serve another bundle (with ``heads`` heads): pending predictions leave (late labels
        count as expired); the tombstones stay."""
        heads = check_heads(heads)
        with self._lock:
            seqs = np.arange(max(self._low, self._seq - self.capacity), self._seq)
            slots = seqs % self._size
            slots = slots[self._live[slots]]
            n = len(slots)
            self._leave(slots)
            self._low = self._seq
            if heads != self.heads:
                self._set_heads(heads)
            return n

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
        ids: Sequence[RequestId],
        labels: np.ndarray,
        carried: np.ndarray | None = None,
        heads: np.ndarray | None = None,
        *,
        journal: JoinJournal | None = None,
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
        ``journal(result, joined ids, their prediction seq or -1, their heads)`` (the
        durable store) runs once the outcome is known and before anything changes: if it
        raises, nothing was joined.
        """
        keys = ids if type(ids) is list else list(ids)
        labels = np.asarray(labels).astype(np.int8).reshape(-1)
        m = len(keys)
        if labels.shape[0] != m or (carried is not None and np.shape(carried) != (m,)):
            raise ValueError(f"{m} ids need {m} labels (and carried scores, if any)")
        head_arr = self._as_heads(m, heads)
        bits = (np.int64(1) << head_arr.astype(np.int64)).astype(_MASK)
        usable = np.zeros(m, dtype=bool) if carried is None else np.isfinite(carried)
        if heads is None or self.heads == 1:
            unique = len(set(keys)) == m
            group_keys = keys
        else:
            group_keys = list(zip(keys, head_arr.tolist(), strict=True))
            unique = len(set(group_keys)) == m
        res = JoinResult(scores=np.empty(0, np.float32), labels=labels[:0], heads=head_arr[:0])
        with self._lock:
            self._evict(self._clock())
            k = self.heads
            seq, tomb = self._lookup(keys)
            pend = seq >= 0
            slot = seq % self._size
            before = np.where(pend, self._mask[slot], tomb) & bits != 0  # labelled before
            cand = ~before & (pend | usable)
            if unique:
                joins, earlier = cand, np.zeros(m, dtype=bool)
            else:
                # Per (id, head), in batch order: the first candidate joins; every label of
                # it after a join is already labelled (one C-level pass numbers the groups).
                first: dict[RequestId, int] = {}
                g = np.fromiter(map(first.setdefault, group_keys, range(m)), np.intp, m)
                idx = np.arange(m)
                first_cand = np.full(m, m, dtype=np.intp)
                np.minimum.at(first_cand, g[cand], idx[cand])
                joins = cand & (first_cand[g] == idx)
                earlier = first_cand[g] < idx
            rows = np.flatnonzero(joins)
            miss = ~joins
            already = miss & (before | earlier)
            expired = miss & ~already & ~pend & (tomb & _LEFT != 0)
            res.already_labelled = int(already.sum())
            res.expired = int(expired.sum())
            res.unknown = int(miss.sum()) - res.already_labelled - res.expired
            local = pend[rows]
            res.carried = int(len(rows) - local.sum())
            if len(rows):
                src = slot[rows] * k + head_arr[rows]
                scores = self._flat[src]  # a copy (fancy indexing)
                if res.carried:
                    scores[~local] = np.asarray(carried, dtype=np.float32)[rows[~local]]
                res.scores, res.labels, res.heads = scores, labels[rows], head_arr[rows]
            if res.already_labelled + res.expired + res.unknown:
                shown = np.flatnonzero(miss)[: self.max_unmatched_reported]
                res.unmatched_ids = [show_id(keys[i]) for i in shown.tolist()]
            joined_ids = [keys[i] for i in rows.tolist()]
            if journal is not None:
                journal(res, joined_ids, np.where(local, seq[rows], -1), res.heads)
            # Local joins: mark the head labelled; an id with every head labelled leaves.
            lslots = slot[rows[local]]
            np.bitwise_or.at(self._mask, lslots, bits[rows[local]])
            done = np.unique(lslots)
            self._leave(done[self._mask[done] == self._all])
            # Carried joins: the tombstone remembers the head (an id may come with 2 heads).
            self._mark_labelled(keys, rows[~local], bits)
            c = self.counters
            c.labels_received += m
            c.labels_joined += len(rows)
            c.labels_carried += res.carried
            c.labels_unknown += res.unknown
            c.labels_expired += res.expired
            c.labels_already_labelled += res.already_labelled
        return res
