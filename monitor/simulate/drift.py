"""Paper A's drift operators, defined once (the offline stress suite reuses them).

"I Can't Believe It's Not Robust" (arXiv 2603.01297), section 4: drift is applied to
unit-normalised embeddings and the result is re-normalised to the sphere.

* Gaussian: ``x' = normalise(x + s * n)``. Two conventions exist and both are named:
  ``"per_dimension"`` draws ``n ~ N(0, I)`` (what the paper's code does; in 1024-d,
  s = 0.02 moves an embedding by ~33 degrees) and ``"total_norm"`` rescales the noise
  to norm 1 so ``||s n|| = s`` (what the paper's "about 1 degree" implies).
  :func:`keyed_gaussian_drift` seeds each row's noise by a key (its text), so the drift
  acts as a new embedder: the same text always moves the same way.
* Directional: ``x' = normalise(x + s * u)`` for one fixed random unit vector ``u``.
* Rotation: every embedding is rotated by the same angle ``theta`` in ``d / 2`` random
  orthogonal planes; the paper's magnitude ``m`` maps to ``theta = 90 deg * m / 0.15``.

Always report :func:`mean_angle_degrees` next to a magnitude: it is what was done.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np

GaussianConvention = Literal["per_dimension", "total_norm"]
PAPER_MAX_MAGNITUDE = 0.15


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows on the unit sphere (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def gaussian_noise(
    shape: tuple[int, int],
    rng: np.random.Generator,
    convention: GaussianConvention = "per_dimension",
) -> np.ndarray:
    """The noise ``n`` of :func:`gaussian_drift`: ``N(0, I)`` rows, or unit rows for
    ``"total_norm"``. Drawn once, it can be scaled to every magnitude of a sweep.

    >>> n = gaussian_noise((4, 16), np.random.default_rng(0), "total_norm")
    >>> np.allclose(np.linalg.norm(n, axis=1), 1.0)
    True
    """
    noise = rng.standard_normal(shape).astype(np.float32)
    if convention == "total_norm":
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    elif convention != "per_dimension":
        raise ValueError(f"unknown convention {convention!r}: per_dimension or total_norm")
    return noise


def gaussian_drift(
    x: np.ndarray,
    s: float,
    rng: np.random.Generator,
    convention: GaussianConvention = "per_dimension",
) -> np.ndarray:
    """``normalise(x + s * n)``, ``n ~ N(0, I)`` (per_dimension) or ``n / ||n||`` (total_norm).

    >>> x = normalise(np.eye(3)[:2])
    >>> y = gaussian_drift(x, 0.0, np.random.default_rng(0))
    >>> bool(np.allclose(x, y))
    True
    """
    return normalise(x + s * gaussian_noise(np.shape(x), rng, convention))


def keyed_gaussian_drift(
    x: np.ndarray,
    s: float,
    keys: Sequence[str],
    seed: int = 0,
    convention: GaussianConvention = "per_dimension",
) -> np.ndarray:
    """:func:`gaussian_drift` with each row's noise a fixed function of ``(seed, key)``.

    An updated embedder as a function of the text: the same key (text) always moves the
    same way, whatever batch, order or process it comes in, as a real new model would.

    >>> x = normalise(np.eye(4)[:3] + 0.1)
    >>> a = keyed_gaussian_drift(x, 0.5, ["a", "b", "c"], seed=1)
    >>> b = keyed_gaussian_drift(x[::-1], 0.5, ["c", "b", "a"], seed=1)
    >>> bool(np.allclose(a, b[::-1])), bool(np.allclose(a, x))
    (True, False)
    >>> bool(np.allclose(a, keyed_gaussian_drift(x, 0.5, ["a", "b", "c"], seed=2)))
    False
    """
    x = np.asarray(x, dtype=np.float32)
    if len(keys) != x.shape[0]:
        raise ValueError(f"{len(keys)} keys for {x.shape[0]} rows; send one key per row")
    noise = np.empty(x.shape, dtype=np.float32)
    for i, k in enumerate(keys):
        h = int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=8).digest(), "little")
        noise[i] = gaussian_noise((1, x.shape[1]), np.random.default_rng([seed, h]), convention)
    return normalise(x + s * noise)


def random_direction(dim: int, rng: np.random.Generator) -> np.ndarray:
    u = rng.standard_normal(dim)
    return (u / np.linalg.norm(u)).astype(np.float32)


def directional_drift(x: np.ndarray, s: float, u: np.ndarray) -> np.ndarray:
    """``normalise(x + s * u)`` with one fixed unit vector ``u`` for every row.

    >>> x = normalise(np.array([[1.0, 0.0]]))
    >>> [round(float(v), 4) for v in directional_drift(x, 1.0, np.array([0.0, 1.0]))[0]]
    [0.7071, 0.7071]
    """
    return normalise(x + s * np.asarray(u, dtype=np.float32))


def rotation_planes(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthonormal basis (d, d) whose column pairs span the rotation planes."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float64)


def rotation_drift(x: np.ndarray, angle_degrees: float, planes: np.ndarray) -> np.ndarray:
    """Rotate every row by ``angle_degrees`` in the planes spanned by column pairs of ``planes``.

    This is ``R(theta) = Q B(theta) Q^T`` with ``B`` block-diagonal 2 x 2 rotations: a
    one-parameter subgroup of SO(d), so ``theta`` traces a true rotation path from the
    identity (det +1 all along; see :func:`rotation_matrix`). With ``d`` even the planes
    cover the space, so ``angle(x, R x) = theta`` for every ``x`` (for odd ``d`` one axis
    is left fixed and the angle is at most ``theta``).

    >>> rng = np.random.default_rng(0)
    >>> x = normalise(rng.normal(size=(5, 8)))
    >>> y = rotation_drift(x, 30.0, rotation_planes(8, rng))
    >>> round(mean_angle_degrees(x, y), 3)
    30.0
    """
    theta = np.radians(angle_degrees)
    c = np.asarray(x, dtype=np.float64) @ planes  # coordinates in the rotation basis
    k = (planes.shape[1] // 2) * 2
    a, b = c[:, 0:k:2].copy(), c[:, 1:k:2].copy()
    c[:, 0:k:2] = a * np.cos(theta) - b * np.sin(theta)
    c[:, 1:k:2] = a * np.sin(theta) + b * np.cos(theta)
    return normalise(c @ planes.T)


def rotation_matrix(angle_degrees: float, planes: np.ndarray) -> np.ndarray:
    """The (d, d) matrix ``R`` with ``rotation_drift(x) = normalise(x @ R.T)``.

    >>> rng = np.random.default_rng(1)
    >>> r = rotation_matrix(40.0, rotation_planes(6, rng))
    >>> bool(np.allclose(r @ r.T, np.eye(6))), round(float(np.linalg.det(r)), 6)
    (True, 1.0)
    """
    theta = np.radians(angle_degrees)
    d = planes.shape[0]
    block = np.eye(d)
    for i in range(0, (planes.shape[1] // 2) * 2, 2):
        c, s = np.cos(theta), np.sin(theta)
        block[i : i + 2, i : i + 2] = [[c, -s], [s, c]]
    return planes @ block @ planes.T


def magnitude_to_angle(magnitude: float, max_magnitude: float = PAPER_MAX_MAGNITUDE) -> float:
    """Paper A's rotation schedule: 90 degrees at the largest magnitude.

    >>> magnitude_to_angle(0.075)
    45.0
    """
    return 90.0 * magnitude / max_magnitude


def row_angles_degrees(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Angle between matching rows of ``x`` and ``y`` in degrees (float64, any norms).

    >>> row_angles_degrees(np.array([[1.0, 0.0]]), np.array([[0.0, 2.0]])).round(1).tolist()
    [90.0]
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"angles need the same shape, got {x.shape} and {y.shape}")
    cos = np.einsum("ij,ij->i", x, y) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def mean_angle_degrees(x: np.ndarray, y: np.ndarray) -> float:
    """Mean angle between matching rows of ``x`` and ``y``, in degrees."""
    return float(row_angles_degrees(x, y).mean())
