"""Paper A's stress test: a frozen classifier against synthetic drift of its test embeddings.

Protocol (arXiv 2603.01297, sections 3-4): the classifier is trained once on clean
embeddings and frozen; each drift type is applied to the *test* embeddings at 8
checkpoints from 0 to 0.15 (:data:`PAPER_CHECKPOINTS`), plus a finer sensitivity sweep,
and the classifier's metrics are recorded at each. The metrics are
:func:`silentwatch.monitor.evaluation.classification.labelled_metrics`
(paper A's ROC-AUC, accuracy, mean confidence ``max(p, 1-p)``, silent-failure rate, ECE
with 5 bins, high-confidence error share), so the sidecar and the gate agree.

Two summaries per (model, drift type):

* **failure threshold**: the smallest magnitude where ROC-AUC falls below
  ``failure_auc`` (linear interpolation between sweep points), with its measured angle;
* **cliff width**: the magnitude (and angle) span between the points where the AUC has
  lost 10% and 90% of its margin over chance, ``clean - 0.1 (clean - 0.5)`` down to
  ``0.5 + 0.1 (clean - 0.5)``.

The fine sweep covers ``[0, m_90]`` with ``fine_steps`` points, ``m_90`` the first
checkpoint past the 90% point (or the largest magnitude), so the resolution is spent
where the classifier breaks whatever the drift type's scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from silentwatch.monitor.evaluation.auc_intervals import auc_bootstrap_ci, auc_chance_test
from silentwatch.monitor.evaluation.classification import (
    accuracy_above_confidence,
    confident_error_share,
    expected_calibration_error,
    labelled_metrics,
)
from silentwatch.monitor.scoring import HIGH_CONFIDENCE, LinearScorer, confidence
from silentwatch.monitor.simulate.drift import normalise
from silentwatch.offline.stress.operators import DRIFT_KINDS, DriftKind, DriftOperator, mean_angle

if TYPE_CHECKING:
    from silentwatch.offline.execution.settings import ExecutionSettings

# Eight checkpoints over paper A's range 0..0.15, denser where classifiers break and
# including the paper's headline s = 0.02 (an even 8-point grid would skip it).
PAPER_CHECKPOINTS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.15)
# Paper A's own grid (appendix B.2, Eq. 9; table: 8 checkpoints, 0.00 to 0.15): magnitudes
# increasing linearly, s_t = t * 0.15 / 7. Swept beside the checkpoints as sweep "linear".
LINEAR_CHECKPOINTS = 8

REPORTED = (
    "roc_auc",
    "accuracy",
    "mean_confidence",
    "silent_failure_ratio",
    "ece",
    "high_confidence_error_ratio",
)


class StressSettings(BaseModel):
    """The sweep (paper A defaults)."""

    kinds: list[DriftKind] = Field(default_factory=lambda: list(DRIFT_KINDS))
    magnitudes: list[float] = Field(
        default_factory=lambda: list(PAPER_CHECKPOINTS),
        min_length=2,
        description="the coarse checkpoints; the first must be 0 (clean)",
    )
    max_magnitude: float = Field(
        0.15, gt=0, description="magnitude of the 90-degree rotation (paper A: 0.15)"
    )
    fine_steps: int = Field(16, ge=0, description="0 skips the sensitivity sweep")
    linear_checkpoints: int = Field(
        LINEAR_CHECKPOINTS,
        ge=0,
        description="paper A's grid: this many magnitudes evenly from 0 to max_magnitude "
        "(0 skips it; 1 is just the clean point)",
    )
    bootstrap: int = Field(
        1000, ge=0, description="stratified bootstrap replicates of each point's ROC-AUC (0: none)"
    )
    confident_at: float = Field(
        0.9, gt=0.5, le=1.0, description="accuracy is also reported among predictions this sure"
    )
    failure_auc: float = Field(0.6, gt=0.5, lt=1.0)
    seed: int = 42
    high_confidence: float = HIGH_CONFIDENCE
    n_bins: int = 5

    @field_validator("magnitudes")
    @classmethod
    def _from_zero(cls, v: list[float]) -> list[float]:
        if v[0] != 0 or any(b <= a for a, b in pairwise(v)):
            raise ValueError("magnitudes must start at 0 and increase")
        return v

    @property
    def checkpoints(self) -> int:
        return len(self.magnitudes)


class StressPoint(BaseModel):
    model: str
    kind: DriftKind
    sweep: str  # "checkpoint", "fine" or "linear" (paper A's grid)
    magnitude: float
    angle_degrees: float
    roc_auc: float
    accuracy: float
    mean_confidence: float
    silent_failure_ratio: float
    ece: float
    high_confidence_error_ratio: float
    # Paper A's other readings of the same point (NaN in results saved before them).
    ece_top_range: float = Field(
        float("nan"), description="top-label ECE with the bins over [0.5, 1] instead of [0, 1]"
    )
    confident_error_share: float = Field(
        float("nan"), description="share of all rows wrong with confidence > high_confidence"
    )
    accuracy_when_confident: float = Field(
        float("nan"), description="accuracy among rows with confidence >= confident_at"
    )
    confident_share: float = Field(
        float("nan"), description="share of rows with confidence >= confident_at"
    )
    roc_auc_low: float = Field(float("nan"), description="95% stratified bootstrap interval")
    roc_auc_high: float = float("nan")
    roc_auc_p_chance: float = Field(
        float("nan"), description="two-sided p-value of AUC = 0.5 (Mann-Whitney U)"
    )


class Cliff(BaseModel):
    model: str
    kind: DriftKind
    clean_auc: float
    clean_mean_confidence: float
    failure_magnitude: float | None
    failure_angle_degrees: float | None
    cliff_start_magnitude: float | None
    cliff_end_magnitude: float | None
    cliff_width_magnitude: float | None
    cliff_width_degrees: float | None
    mean_confidence_drop_at_failure: float | None = Field(
        None, description="relative drop of mean confidence at the failure point"
    )


class StressResult(BaseModel):
    settings: StressSettings
    points: list[StressPoint]
    cliffs: list[Cliff]
    device: str
    rows: dict[str, int]
    wall_seconds: float
    # {"engine": "local"}, or the Ray address and resources the curves ran on.
    execution: dict[str, Any] = {"engine": "local"}

    def curve(self, model: str, kind: str) -> list[StressPoint]:
        """Every point of one (model, kind), checkpoints and fine sweep, by magnitude."""
        pts = [p for p in self.points if p.model == model and p.kind == kind]
        return sorted(pts, key=lambda p: (p.magnitude, p.sweep))


@dataclass(frozen=True)
class StressModel:
    """One model's clean test embeddings (unit rows), labels and frozen classifier."""

    x: np.ndarray
    y: np.ndarray
    scorer: LinearScorer


def _crossing(mags: np.ndarray, values: np.ndarray, level: float) -> float | None:
    """First magnitude where ``values`` drops below ``level``, linearly interpolated."""
    below = np.flatnonzero(values < level)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(mags[0])
    m0, m1, v0, v1 = mags[i - 1], mags[i], values[i - 1], values[i]
    return float(m0 + (m1 - m0) * (v0 - level) / (v0 - v1))


def _interp(at: float | None, mags: np.ndarray, values: np.ndarray) -> float | None:
    return None if at is None else float(np.interp(at, mags, values))


def summarise(points: list[StressPoint], failure_auc: float) -> Cliff:
    """Failure threshold and cliff width of one (model, kind) curve."""
    pts = sorted(points, key=lambda p: p.magnitude)
    mags = np.array([p.magnitude for p in pts])
    keep = np.concatenate([[True], np.diff(mags) > 0])  # checkpoint and fine may share 0
    pts = [p for p, k in zip(pts, keep, strict=True) if k]
    mags = mags[keep]
    auc = np.array([p.roc_auc for p in pts])
    angles = np.array([p.angle_degrees for p in pts])
    conf = np.array([p.mean_confidence for p in pts])
    clean = float(auc[0])
    margin = clean - 0.5
    fail = _crossing(mags, auc, failure_auc)
    start = _crossing(mags, auc, clean - 0.1 * margin) if margin > 0 else None
    end = _crossing(mags, auc, 0.5 + 0.1 * margin) if margin > 0 else None
    width = end - start if start is not None and end is not None else None
    width_deg = None
    if width is not None:
        width_deg = _interp(end, mags, angles) - _interp(start, mags, angles)  # type: ignore[operator]
    conf_at_fail = _interp(fail, mags, conf)
    return Cliff(
        model=pts[0].model,
        kind=pts[0].kind,
        clean_auc=clean,
        clean_mean_confidence=float(conf[0]),
        failure_magnitude=fail,
        failure_angle_degrees=_interp(fail, mags, angles),
        cliff_start_magnitude=start,
        cliff_end_magnitude=end,
        cliff_width_magnitude=width,
        cliff_width_degrees=width_deg,
        mean_confidence_drop_at_failure=(
            None if conf_at_fail is None else float(1.0 - conf_at_fail / conf[0])
        ),
    )


def _scorer_fn(scorer: LinearScorer, like: Any) -> Callable[[Any], np.ndarray]:
    """P(unsafe) for drifted unit rows; on torch the matvec stays on the device."""
    if type(like).__module__.startswith("torch"):
        import torch

        w = torch.as_tensor(scorer.weights, dtype=like.dtype, device=like.device)
        b = float(scorer.bias)
        return lambda x: torch.sigmoid((x @ w).float() + b).cpu().numpy().astype(np.float64)
    return lambda x: scorer.predict_proba(np.ascontiguousarray(x, dtype=np.float32))


@dataclass(frozen=True)
class _Ctx:
    model: str
    kind: DriftKind
    op: DriftOperator
    x: Any
    y: np.ndarray
    score: Callable[[Any], np.ndarray]


def _cell(ctx: _Ctx, m: float, sweep: str, settings: StressSettings) -> StressPoint:
    drifted = ctx.op.apply(ctx.x, m)
    p = ctx.score(drifted)
    metrics = labelled_metrics(
        p, ctx.y, high_confidence=settings.high_confidence, n_bins=settings.n_bins
    )
    lo, hi = (
        auc_bootstrap_ci(p, ctx.y, n_boot=settings.bootstrap, seed=settings.seed)
        if settings.bootstrap
        else (float("nan"), float("nan"))
    )
    return StressPoint(
        model=ctx.model,
        kind=ctx.kind,
        sweep=sweep,
        magnitude=float(m),
        angle_degrees=mean_angle(ctx.x, drifted),
        **{k: float(metrics[k]) for k in REPORTED},
        ece_top_range=expected_calibration_error(p, ctx.y, settings.n_bins, low=0.5),
        confident_error_share=confident_error_share(p, ctx.y, settings.high_confidence),
        accuracy_when_confident=accuracy_above_confidence(p, ctx.y, settings.confident_at),
        confident_share=float(np.mean(confidence(p) >= settings.confident_at)),
        roc_auc_low=lo,
        roc_auc_high=hi,
        roc_auc_p_chance=auc_chance_test(p, ctx.y),
    )


def run_stress(
    models: Mapping[str, StressModel],
    settings: StressSettings | None = None,
    *,
    device: str = "cpu",
    backend: Literal["numpy", "torch"] | None = None,
    progress: Callable[[int], None] | None = None,
    execution: ExecutionSettings | None = None,
) -> StressResult:
    """The factorial sweep: model x drift kind x magnitude, checkpoints then fine sweep.

    Parameters
    ----------
    models
        Name -> :class:`StressModel` (clean unit test embeddings, labels, frozen head).
    settings
        The sweep; paper A's defaults.
    device
        Where to run: ``"cpu"`` or a torch device such as ``"cuda"``.
    backend
        ``"numpy"`` or ``"torch"``; default numpy on CPU and torch elsewhere.
    progress
        Called with the number of cells just evaluated (for a progress bar).
    execution
        ``None`` / ``engine: local``: every curve in this process. ``engine: ray``: one Ray
        task per (model, drift kind) curve (its checkpoints and its fine sweep, which
        depends on them); the same operations on the same rows, so the same points.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.array([0, 1] * 100)
    >>> x = rng.normal(size=(200, 32)); x[:, 0] += 2 * y
    >>> x /= np.linalg.norm(x, axis=1, keepdims=True)
    >>> s = LinearScorer(np.eye(32, dtype=np.float32)[0] * 8, -2.0, True)
    >>> r = run_stress({"m": StressModel(x, y, s)}, StressSettings(kinds=["rotation"]))
    >>> r.cliffs[0].failure_magnitude is not None
    True
    """
    settings = settings or StressSettings()
    backend = backend or ("numpy" if device == "cpu" else "torch")
    if backend == "numpy" and device != "cpu":
        raise ValueError(f"the numpy backend runs on cpu, not {device!r}")
    t0 = time.perf_counter()
    points: list[StressPoint] = []
    cliffs: list[Cliff] = []
    # Rows are checked and normalised here, on either engine, so a bad matrix fails at once
    # and Ray workers receive exactly the rows the local loop would sweep.
    prepared = {name: _rows(model) for name, model in models.items()}
    if execution is not None and execution.is_ray:
        from silentwatch.offline.execution.tasks import map_cells

        units = [(name, kind) for name in models for kind in settings.kinds]
        curve_of = partial(
            _remote_curve, prepared=prepared, settings=settings, backend=backend, device=device
        )
        curves = map_cells(
            curve_of,
            units,
            execution,
            progress,
            weight=settings.checkpoints + settings.fine_steps + settings.linear_checkpoints,
            device=device,
        )
        for curve in curves:
            points.extend(curve)
            cliffs.append(summarise(curve, settings.failure_auc))
    else:
        for name, (x_np, y, scorer) in prepared.items():
            x, score = _on_backend(x_np, scorer, backend, device)
            for kind in settings.kinds:
                curve = _curve(name, kind, x_np, x, y, score, settings, progress)
                points.extend(curve)
                cliffs.append(summarise(curve, settings.failure_auc))
    return StressResult(
        settings=settings,
        points=points,
        cliffs=cliffs,
        device=device if backend == "numpy" or device != "cpu" else "cpu (torch)",
        rows={name: int(m.x.shape[0]) for name, m in models.items()},
        wall_seconds=time.perf_counter() - t0,
        execution=execution.describe() if execution is not None else {"engine": "local"},
    )


def _rows(model: StressModel) -> tuple[np.ndarray, np.ndarray, LinearScorer]:
    """Clean unit rows, flat labels and the head of one model."""
    return normalise_rows(model.x), np.asarray(model.y).reshape(-1), model.scorer


def _on_backend(
    x_np: np.ndarray, scorer: LinearScorer, backend: str, device: str
) -> tuple[Any, Callable[[Any], np.ndarray]]:
    """The rows on the sweep's backend and the head's scoring function for them."""
    x: Any = x_np
    if backend == "torch":
        import torch

        x = torch.as_tensor(x_np, device=device)
    return x, _scorer_fn(scorer, x)


def _curve(
    name: str,
    kind: DriftKind,
    x_np: np.ndarray,
    x: Any,
    y: np.ndarray,
    score: Callable[[Any], np.ndarray],
    settings: StressSettings,
    progress: Callable[[int], None] | None,
) -> list[StressPoint]:
    """One (model, kind) curve: the checkpoints, then the fine sweep up to the cliff."""
    op = DriftOperator(
        kind, n=x_np.shape[0], dim=x_np.shape[1], seed=settings.seed,
        max_magnitude=settings.max_magnitude,
    )  # fmt: skip

    ctx = _Ctx(name, kind, op, x, y, score)

    coarse = [_cell(ctx, m, "checkpoint", settings) for m in settings.magnitudes]
    if progress:
        progress(len(coarse))
    clean = coarse[0].roc_auc
    level = 0.5 + 0.1 * (clean - 0.5)
    past = [p.magnitude for p in coarse if p.roc_auc < level]
    hi = past[0] if past else settings.magnitudes[-1]
    grid = np.linspace(0.0, hi, settings.fine_steps)
    # The clean cell (magnitude 0) is already the first checkpoint: reuse it.
    fine = [coarse[0].model_copy(update={"sweep": "fine"})] if grid.size else []
    fine += [_cell(ctx, m, "fine", settings) for m in grid[1:]]
    if progress and fine:
        progress(len(fine))
    lin = np.linspace(0.0, settings.max_magnitude, settings.linear_checkpoints)
    linear = [coarse[0].model_copy(update={"sweep": "linear"})] if lin.size else []
    linear += [_cell(ctx, m, "linear", settings) for m in lin[1:]]
    if progress and linear:
        progress(len(linear))
    return coarse + fine + linear


def _remote_curve(
    unit: tuple[str, DriftKind],
    *,
    prepared: dict[str, tuple[np.ndarray, np.ndarray, LinearScorer]],
    settings: StressSettings,
    backend: str,
    device: str,
) -> list[StressPoint]:
    """One curve as a Ray task (module level, so workers import it by name)."""
    name, kind = unit
    x_np, y, scorer = prepared[name]
    x, score = _on_backend(x_np, scorer, backend, device)
    return _curve(name, kind, x_np, x, y, score, settings, None)


def normalise_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all() or not np.linalg.norm(x, axis=1).all():
        raise ValueError("stress embeddings must be finite and non-zero")
    return normalise(x)


def cells(settings: StressSettings, n_models: int) -> int:
    """How many (model, kind, magnitude) evaluations a sweep makes."""
    per_curve = settings.checkpoints + settings.fine_steps + settings.linear_checkpoints
    return n_models * len(settings.kinds) * per_curve
