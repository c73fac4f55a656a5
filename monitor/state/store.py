"""The label-join store's contract: what both stores (memory, SQLite) offer the request path.

A store keeps recorded predictions (request id -> score) until their delayed label
arrives, bounded in size (``capacity``) and age (``ttl_seconds``), and tells a late label
apart as joined, unknown, expired or already labelled. :class:`~.memory.MemoryStore` keeps
them in the process; :class:`~.sqlite.SqliteStore` adds a journal that survives a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class JoinResult:
    """Outcome of joining one batch of labels."""

    scores: np.ndarray  # (k,) P(unsafe) of the joined predictions
    labels: np.ndarray  # (k,) int8 ground truth, aligned with scores
    unknown: int = 0
    expired: int = 0
    already_labelled: int = 0
    unmatched_ids: list[str] = field(default_factory=list)
    carried: int = 0  # joined through the score the label carried (no local prediction)
    label_seq: int = -1  # durable stores: sequence number of the last label kept

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
    counters: StoreCounters
    durable: bool

    def __len__(self) -> int: ...

    def record(self, ids: Sequence[str], scores: np.ndarray) -> None:
        """Keep ``scores`` under ``ids`` until their labels arrive; raises
        :class:`DuplicateRequestIds` (nothing recorded) or :class:`StoreUnavailable`."""
        ...

    def join(
        self, ids: Sequence[str], labels: np.ndarray, carried: np.ndarray | None = None
    ) -> JoinResult:
        """Join labels to recorded predictions (``carried``: scores labels brought along)."""
        ...

    def expire(self) -> None:
        """Evict what has outlived ``ttl_seconds`` (counted)."""
        ...

    def rebind(self, bundle_sha256: str) -> int:
        """Drop pending predictions of the previous bundle; returns how many were dropped."""
        ...

    def close(self) -> None: ...
