"""PNG plots of a stress sweep (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from silentwatch.offline.stress.sweep import StressResult

PANELS = (
    ("roc_auc", "ROC-AUC"),
    ("mean_confidence", "mean confidence max(p, 1-p)"),
    ("silent_failure_ratio", "silent-failure rate\n(errors with conf > 0.8 / errors)"),
)


def headless_pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or a gate runner
    import matplotlib.pyplot as plt

    return plt


def plot_stress(result: StressResult, path: Path, *, x: str = "magnitude") -> Path:
    """AUC, mean confidence and silent-failure rate against ``x`` ("magnitude" or
    "angle_degrees"), one line per (model, drift kind)."""
    plt = headless_pyplot()
    models = list(dict.fromkeys(p.model for p in result.points))
    kinds = list(dict.fromkeys(p.kind for p in result.points))
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 3.8 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        for c, (metric, label) in enumerate(PANELS):
            ax = axes[r][c]
            for kind in kinds:
                curve = result.curve(model, kind)
                xs = [getattr(p, x) for p in curve]
                ys = [getattr(p, metric) for p in curve]
                ax.plot(xs, ys, marker=".", label=kind)
            if metric == "roc_auc":
                ax.axhline(result.settings.failure_auc, color="grey", ls=":", lw=1)
                ax.axhline(0.5, color="black", lw=0.5)
            ax.set_title(f"{model}: {label}", fontsize=10)
            ax.set_xlabel("drift magnitude s" if x == "magnitude" else "measured angle (degrees)")
            if x == "angle_degrees":
                ax.set_xscale("symlog", linthresh=1.0)
                ax.set_xlim(left=0)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
