"""The label-join store's contract: what both stores (memory, SQLite) offer the request path.

A store keeps recorded predictions (request id -> one score per head) until their delayed
labels arrive, bounded in size (``capacity``) and age (``ttl_seconds``), and tells a late
label apart as joined, unknown, expired or already labelled. A store is built for the
bundle's number of heads (``heads``, k; head 0 is the default head); a label names its head
and joins only that head's score, so a label for one head does not touch the others.
:class:`~.memory.MemoryStore` keeps them in the process; :class:`~.sqlite.SqliteStore` adds
a journal that survives a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class JoinResult:
    """Outcome of joining one batch of labels (one row per joined label)."""

    scores: np.ndarray  # (j,) P(unsafe) of the joined predictions, for the label's head
    labels: np.ndarray  # (j,) int8 ground truth, aligned with scores
    unknown: int = 0
    expired: int = 0
    already_labelled: int = 0
    unmatched_ids: list[str] = field(default_factory=list)
    carried: int = 0  # joined through the score the label carried (no local prediction)
    label_seq: int = -1  # durable stores: sequence number of the last label kept
    heads: np.ndarray | None = None  # (j,) int16 head index of each joined label (None: all 0)

    def __post_init__(self) -> None:
        if self.heads is None:
            self.heads = np.zeros(np.shape(self.scores)[0], dtype=np.int16)

    @property
    def joined(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class StoreCounters:
    recorded: int = 0
    evicted_capacity: int = 0
    evicted_ttl: int = 0
    labels_received: int = 0
    labels_joined: int = 0
    labels_carried: int = 0
    labels_unknown: int = 0
    labels_expired: int = 0
    labels_already_labelled: int = 0


# A request id: a string (``request_ids`` on the wire) or 16 bytes (``packed_request_ids``).
RequestId = str | bytes


class DuplicateRequestIds(Exception):
    """Ids already pending (``within_batch=False``) or repeated in the batch itself."""

    def __init__(self, ids: list[str], *, within_batch: bool = False) -> None:
        where = "repeated within the batch" if within_batch else "already recorded"
        super().__init__(f"request ids {where}: {ids[:3]}")
        self.ids = ids
        self.within_batch = within_batch


class StoreUnavailable(Exception):
    """The store could not be written (disk full, read-only, corrupt); the message says which."""


class PredictionStore(Protocol):
    """What the servicer needs from a label-join store."""

    capacity: int
    ttl_seconds: float
    heads: int  # scores per prediction (the bundle's heads, default head first)
    counters: StoreCounters
    durable: bool

    def __len__(self) -> int: ...

    def record(self, ids: Sequence[RequestId], scores: np.ndarray) -> None:
        """Keep ``scores`` ((n, heads) float32; (n,) for one head) under ``ids`` until their
        labels arrive; raises :class:`DuplicateRequestIds` (nothing recorded),
        :class:`StoreUnavailable` or ValueError (a shape that does not fit)."""
        ...

    def join(
        self,
        ids: Sequence[RequestId],
        labels: np.ndarray,
        carried: np.ndarray | None = None,
        heads: np.ndarray | None = None,
    ) -> JoinResult:
        """Join labels to recorded predictions (``carried``: scores labels brought along;
        ``heads``: each label's head index, None for all head 0)."""
        ...

    def expire(self) -> None:
        """Evict what has outlived ``ttl_seconds`` (counted)."""
        ...

    def rebind(self, bundle_sha256: str, heads: int = 1) -> int:
        """Serve another bundle with ``heads`` heads: drop pending predictions of the previous
        one; returns how many were dropped."""
        ...

    def close(self) -> None: ...
