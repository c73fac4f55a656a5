"""How traffic is cut into windows (:class:`WindowSpec`), and a fixed-size ring of recent
rows (embedding, score per head, arrival time) for the window detectors.

Memory is ``capacity x (d + 2)`` numbers whatever the traffic; the oldest rows are
overwritten first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class WindowSpec:
    """How live traffic is cut into windows."""

    mode: Literal["count", "time"] = "count"
    size: int = 256  # rows (count mode)
    stride: int = 256  # rows between evaluations (count mode); == size: tumbling
    seconds: float = 60.0  # window length (time mode)
    stride_seconds: float = 60.0  # time between evaluations (time mode)
    max_rows: int = 2048  # most rows a time window keeps (the newest)

    @property
    def capacity(self) -> int:
        return self.size if self.mode == "count" else self.max_rows


class WindowBuffer:
    """Ring buffer over the most recent ``capacity`` rows.

    >>> b = WindowBuffer(capacity=3, dim=1)
    >>> b.push(np.arange(5, dtype=np.float32)[:, None], np.arange(5.0), 0.0)
    >>> b.last(2)[1].tolist()
    [3.0, 4.0]

    With ``heads > 1`` the scores are ``(capacity, heads)``, one column per classifier head.
    """

    def __init__(self, capacity: int, dim: int, heads: int = 1) -> None:
        if capacity < 1 or heads < 1:
            raise ValueError("capacity and heads must be at least 1")
        self.capacity = capacity
        self.x = np.zeros((capacity, dim), dtype=np.float32)
        # One head keeps the 1-D layout, so one-head snapshots stay loadable.
        shape = (capacity,) if heads == 1 else (capacity, heads)
        self.scores = np.zeros(shape, dtype=np.float32)
        self.times = np.zeros(capacity, dtype=np.float64)
        self.head = 0  # next slot to write
        self.count = 0
        self.total = 0  # rows ever pushed

    def push(self, x: np.ndarray, scores: np.ndarray, at: float) -> None:
        n = x.shape[0]
        self.total += n
        if n >= self.capacity:  # only the newest rows can survive
            x, scores, n = x[-self.capacity :], scores[-self.capacity :], self.capacity
        idx = (self.head + np.arange(n)) % self.capacity
        self.x[idx] = x
        self.scores[idx] = scores
        self.times[idx] = at
        self.head = (self.head + n) % self.capacity
        self.count = min(self.count + n, self.capacity)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that restore this ring with :meth:`load_state`."""
        counts = np.array([self.head, self.count, self.total], dtype=np.int64)
        return {"x": self.x, "scores": self.scores, "times": self.times, "counts": counts}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore from :meth:`state`; raises ValueError when the shapes differ."""
        if state["x"].shape != self.x.shape or state["scores"].shape != self.scores.shape:
            raise ValueError(
                f"window snapshot holds {state['x'].shape} rows x dims, this ring {self.x.shape}"
            )
        head, count, total = (int(v) for v in state["counts"])
        if not (0 <= head < self.capacity and 0 <= count <= self.capacity and total >= count):
            raise ValueError("window snapshot has inconsistent counters")
        self.x[:] = state["x"]
        self.scores[:] = state["scores"]
        self.times[:] = state["times"]
        self.head, self.count, self.total = head, count, total

    def _order(self, n: int) -> np.ndarray:
        n = min(n, self.count)
        return (self.head - n + np.arange(n)) % self.capacity

    def last(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The newest ``n`` rows, oldest first (copies)."""
        idx = self._order(n)
        return self.x[idx], self.scores[idx]

    def since(self, t0: float) -> tuple[np.ndarray, np.ndarray]:
        """Rows that arrived at or after ``t0``, oldest first (copies)."""
        idx = self._order(self.count)
        keep = idx[self.times[idx] >= t0]
        return self.x[keep], self.scores[keep]
