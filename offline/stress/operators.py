"""Paper A's drift operators, prepared once per sweep and applied at any magnitude.

The definitions are :mod:`silentwatch.monitor.simulate.drift`'s (arXiv 2603.01297, section 4):

* ``gaussian_per_dimension``: ``normalise(x + s n)``, ``n ~ N(0, I)`` (the paper's code);
* ``gaussian_total_norm``: the same with ``||n|| = 1`` (the paper's "about 1 degree");
* ``directional``: ``normalise(x + s u)``, one fixed random unit ``u``;
* ``rotation``: ``normalise(R(theta) x)`` with ``R`` on the path from the identity to a
  random rotation, ``theta = 90 deg * s / 0.15``.

The random draws (noise matrix, direction, rotation basis) are made once with numpy from
``seed`` and reused for every magnitude (common random numbers: the curve over magnitude
is smooth, and the numpy and torch backends give the same numbers to float tolerance).
Pass numpy arrays to run on CPU with numpy, torch tensors to run where they live (GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from silentwatch.monitor.simulate.drift import (
    PAPER_MAX_MAGNITUDE,
    gaussian_noise,
    magnitude_to_angle,
    mean_angle_degrees,
    normalise,
    random_direction,
    rotation_drift,
    rotation_planes,
)

DriftKind = Literal["gaussian_per_dimension", "gaussian_total_norm", "directional", "rotation"]
DRIFT_KINDS: tuple[DriftKind, ...] = (
    "gaussian_per_dimension",
    "gaussian_total_norm",
    "directional",
    "rotation",
)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@dataclass
class DriftOperator:
    """One drift type with its random draws fixed for ``n`` rows of dimension ``dim``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = normalise(rng.normal(size=(50, 16)))
    >>> op = DriftOperator("rotation", n=50, dim=16)
    >>> y = op.apply(x, 0.075)
    >>> round(mean_angle(x, y), 3)
    45.0
    """

    kind: DriftKind
    n: int
    dim: int
    seed: int = 42
    max_magnitude: float = PAPER_MAX_MAGNITUDE
    _draw: np.ndarray = field(init=False, repr=False)
    _cache: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        if self.kind == "gaussian_per_dimension":
            self._draw = gaussian_noise((self.n, self.dim), rng, "per_dimension")
        elif self.kind == "gaussian_total_norm":
            self._draw = gaussian_noise((self.n, self.dim), rng, "total_norm")
        elif self.kind == "directional":
            self._draw = random_direction(self.dim, rng)[None, :]
        elif self.kind == "rotation":
            self._draw = rotation_planes(self.dim, rng)
        else:
            raise ValueError(f"unknown drift kind {self.kind!r}: one of {', '.join(DRIFT_KINDS)}")

    def _on(self, like: Any) -> Any:
        """The draw as a tensor on ``like``'s device (cached per device and dtype)."""
        key = f"{like.device}:{like.dtype}"
        if key not in self._cache:
            import torch

            dtype = torch.float64 if self.kind == "rotation" else like.dtype
            self._cache[key] = torch.as_tensor(self._draw, dtype=dtype, device=like.device)
        return self._cache[key]

    def apply(self, x: Any, magnitude: float) -> Any:
        """Drift unit rows ``x`` (numpy (n, d) or a torch tensor) by ``magnitude``."""
        if x.shape[-1] != self.dim or (self.kind.startswith("gaussian") and x.shape[0] != self.n):
            raise ValueError(f"operator prepared for ({self.n}, {self.dim}), got {tuple(x.shape)}")
        if self.kind == "rotation":
            angle = magnitude_to_angle(magnitude, self.max_magnitude)
            if not _is_torch(x):
                return rotation_drift(x, angle, self._draw)
            return _rotate_torch(x, angle, self._on(x))
        if not _is_torch(x):
            return normalise(x + np.float32(magnitude) * self._draw)
        import torch

        return torch.nn.functional.normalize(x + magnitude * self._on(x), dim=-1)


def _rotate_torch(x: Any, angle_degrees: float, planes: Any) -> Any:
    import torch

    theta = np.radians(angle_degrees)
    c = x.to(torch.float64) @ planes
    k = (planes.shape[1] // 2) * 2
    a, b = c[:, 0:k:2].clone(), c[:, 1:k:2].clone()
    c[:, 0:k:2] = a * np.cos(theta) - b * np.sin(theta)
    c[:, 1:k:2] = a * np.sin(theta) + b * np.cos(theta)
    return torch.nn.functional.normalize((c @ planes.T).to(x.dtype), dim=-1)


def mean_angle(x: Any, y: Any) -> float:
    """Mean angle in degrees between matching unit rows (numpy or torch)."""
    if _is_torch(x):
        import torch

        cos = (x.to(torch.float64) * y.to(torch.float64)).sum(-1).clamp(-1.0, 1.0)
        return float(torch.rad2deg(torch.arccos(cos)).mean())
    return mean_angle_degrees(x, y)
