"""Moderation categories for the demo's synthetic world: one label per Civil Comments head.

The synthetic world (:class:`~silentwatch.monitor.simulate.world.SyntheticWorld`) labels
each vector safe or unsafe: that is the ``toxicity`` head. A moderation service scores
more categories than one, so the demo adds ``threat`` (rare) and ``insult`` (common), each
a fixed function of a text: its validated embedding projected on a direction of the
world's informative (low-variance) subspace, orthogonal to the world's own signal and to
each other, plus label noise keyed on the text, thresholded. A linear head can learn it
(held-out ROC-AUC about 0.9) and, like the toxicity head, it rests on directions of small
variance, so an embedder update harms it through the embedding alone: the labels never
look at the live embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from silentwatch.monitor.simulate.world import SyntheticWorld

# The extra heads and their share of positives in the training traffic.
EXTRA_CATEGORIES: tuple[tuple[str, float], ...] = (("threat", 0.2), ("insult", 0.4))
LABEL_NOISE = 0.6  # standard deviations of keyed noise added to each standardised projection


def text_normals(texts: Sequence[str], k: int, seed: int) -> np.ndarray:
    """``(len(texts), k)`` standard normals, each row a fixed function of ``(seed, text)``.

    >>> a = text_normals(["a", "b"], 2, seed=1)
    >>> b = text_normals(["b", "a"], 2, seed=1)
    >>> bool(np.array_equal(a, b[::-1])), a.shape
    (True, (2, 2))
    >>> bool(np.array_equal(a, text_normals(["a", "b"], 2, seed=2)))
    False
    """
    raw = b"".join(
        hashlib.blake2b(f"{seed}\x00{t}".encode(), digest_size=8 * k).digest() for t in texts
    )
    u = np.frombuffer(raw, dtype="<u8").reshape(len(texts), k)
    # Uniform in (0, 1) from the top 53 bits, then the normal quantile.
    return ndtri(((u >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53)


@dataclass(frozen=True)
class SyntheticCategories:
    """The extra categories' label functions, fixed once from the training rows.

    ``directions``: (d, k) orthonormal columns in the world's low-variance half, orthogonal
    to ``world.signal``; ``center`` / ``scale``: each projection's mean and standard
    deviation on the training rows; ``threshold``: each standardised noisy score's cut that
    gives the category its share of positives there.
    """

    names: tuple[str, ...]
    directions: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    threshold: np.ndarray
    noise: float
    seed: int

    @classmethod
    def fit(
        cls,
        world: SyntheticWorld,
        texts: Sequence[str],
        x: np.ndarray,
        categories: Sequence[tuple[str, float]] = EXTRA_CATEGORIES,
        noise: float = LABEL_NOISE,
    ) -> SyntheticCategories:
        """The categories of ``world``, their cuts set on ``texts`` / ``x`` (training rows)."""
        k = len(categories)
        rng = np.random.default_rng(world.seed + 1009)
        low = world.basis[:, world.dim // 2 :]
        # QR of [signal, random low-half directions]: the columns after the first span the
        # low half, orthogonal to the signal and to each other.
        q, _ = np.linalg.qr(np.c_[world.signal, low @ rng.standard_normal((low.shape[1], k))])
        directions = q[:, 1:]
        proj = np.asarray(x, np.float64) @ directions
        center, scale = proj.mean(axis=0), proj.std(axis=0)
        seed = world.seed + 2003
        score = (proj - center) / scale + noise * text_normals(texts, k, seed)
        prior = np.array([p for _, p in categories])
        threshold = np.array([np.quantile(score[:, j], 1 - prior[j]) for j in range(k)])
        names = tuple(n for n, _ in categories)
        return cls(names, directions, center, scale, threshold, noise, seed)

    def labels(self, texts: Sequence[str], x: np.ndarray) -> np.ndarray:
        """(n, k) int8 labels of ``texts`` whose validated embeddings are ``x``."""
        proj = np.asarray(x, np.float64) @ self.directions
        score = (proj - self.center) / self.scale
        score += self.noise * text_normals(texts, len(self.names), self.seed)
        return (score > self.threshold).astype(np.int8)
