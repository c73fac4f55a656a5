"""Wall time of paper A's full factorial stress sweep (issue target: < 30 s on CPU).

2 models x 3 drift types x 16 magnitudes x 2,000 test rows by default. Each model is a
384-d (MiniLM-sized) or 576-d (SmolLM2-sized) set of unit embeddings with a class signal
and paper A's head trained on it, so the work per cell is the real one: drift, re-normalise,
score, every labelled metric and the measured angle.

    .venv/bin/python benchmarks/stress.py [--rows 2000] [--dims 384 576] [--reps 3]
    .venv/bin/python benchmarks/stress.py --device cuda      # torch on a GPU
"""

from __future__ import annotations

import argparse

import numpy as np
from harness import device_sync, machine, markdown_table, quantile, repeat

from silentwatch.monitor.simulate.drift import normalise
from silentwatch.monitor.training import fit_classifier
from silentwatch.offline.gate.run import scorer_from_arrays
from silentwatch.offline.stress import StressModel, StressSettings, run_stress


def _model(rows: int, dim: int, seed: int) -> StressModel:
    rng = np.random.default_rng(seed)
    y = np.arange(2 * rows) % 2
    x = rng.normal(size=(2 * rows, dim)).astype(np.float32)
    x[:, : dim // 16] += np.where(y == 1, 0.25, -0.25)[:, None]
    x = normalise(x)
    head = scorer_from_arrays(fit_classifier(x[rows:], y[rows:], seed=seed))
    return StressModel(x[:rows], y[:rows], head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--dims", type=int, nargs="+", default=[384, 576])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    models = {f"d{d}": _model(args.rows, d, i) for i, d in enumerate(args.dims)}
    settings = StressSettings(
        kinds=["gaussian_per_dimension", "directional", "rotation"], fine_steps=8
    )
    n_cells = len(models) * len(settings.kinds) * (settings.checkpoints + settings.fine_steps)
    if args.device != "cpu":
        run_stress(models, settings, device=args.device)  # warm-up: CUDA context, kernels
    walls = repeat(
        lambda: run_stress(models, settings, device=args.device),
        args.reps,
        device_sync(args.device),
    )
    med = quantile(walls, 0.5)
    packages = ("numpy",) if args.device == "cpu" else ("numpy", "torch")
    print(f"machine: {machine(packages, f'device {args.device}')}")
    columns = [
        "models", "drift types", "magnitudes", "rows", "cells", "median wall (s)", "min (s)",
        "ms / cell",
    ]  # fmt: skip
    row = [
        f"{len(models)} ({', '.join(map(str, args.dims))}-d)",
        len(settings.kinds),
        settings.checkpoints + settings.fine_steps,
        f"{args.rows:,}",
        n_cells,
        f"{med:.2f}",
        f"{min(walls):.2f}",
        f"{1000 * med / n_cells:.1f}",
    ]
    print(markdown_table(columns, [row]))


if __name__ == "__main__":
    main()
