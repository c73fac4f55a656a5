"""``silentwatch stress`` outputs: stress.json, stress.md, curves against magnitude and angle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from silentwatch.offline.separability import Separability
from silentwatch.offline.stress.plots import plot_stress
from silentwatch.offline.stress.sweep import StressResult


def fmt_cell(v: float | None, fmt: str = ".3f") -> str:
    """A table cell: ``v`` formatted, or "n/a" where the value does not exist."""
    return "n/a" if v is None else format(v, fmt)


_f = fmt_cell


def _dups(data: dict[str, Any]) -> str:
    n = int(data.get("duplicates_dropped", 0) or 0)
    if not n:
        return ""
    return f" ({n:,} repeated texts dropped before balancing)"


def render_stress_markdown(
    result: StressResult,
    seps: dict[str, Separability],
    infos: dict[str, dict[str, Any]],
    data: dict[str, Any],
) -> str:
    s = result.settings
    lines = [
        "# Stress test (paper A)",
        "",
        f"Data `{data['path']}`: {data['rows_used']:,} rows used of {data['rows_loaded']:,}, "
        f"split {data['split']}, seed {data['seed']}"
        f"{_dups(data)}. Head: StandardScaler + "
        "LogisticRegression(C=1, balanced) on the train split, frozen; drift on the test split.",
        f"Sweep: checkpoints {s.magnitudes} plus {s.fine_steps} fine "
        f"steps and paper A's linear grid of {s.linear_checkpoints}; drift seed {s.seed}; "
        f"failure = ROC-AUC < {s.failure_auc}; {len(result.points)} cells in "
        f"{result.wall_seconds:.2f} s on {result.device}.",
        "",
        "## Models",
        "",
        "| model | name | dim | pooling | dtype | weights sha256 |",
        "|---|---|---|---|---|---|",
    ]
    for m, info in infos.items():
        sha = str(info.get("weights_sha256") or "")[:12]
        lines.append(
            f"| {m} | {info.get('name')} | {info.get('dim')} | {info.get('pooling')} "
            f"| {info.get('dtype')} | {sha} |"
        )
    lines += [
        "",
        "## Failure threshold and cliff",
        "",
        "| model | drift | clean AUC | fails at s | angle there | cliff width s | cliff width deg "
        "| conf drop at failure |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result.cliffs:
        lines.append(
            f"| {c.model} | {c.kind} | {c.clean_auc:.3f} | {_f(c.failure_magnitude, '.4f')} "
            f"| {_f(c.failure_angle_degrees, '.2f')} | {_f(c.cliff_width_magnitude, '.4f')} "
            f"| {_f(c.cliff_width_degrees, '.2f')} "
            f"| {_f(c.mean_confidence_drop_at_failure, '.1%')} |"
        )
    lines += _points_table(
        result,
        "checkpoint",
        "## Checkpoints",
        "The paper's range with its headline s = 0.02 included (denser where heads break).",
    )
    if s.linear_checkpoints:
        lines += _points_table(
            result,
            "linear",
            "## Paper A's linear grid",
            f"{s.linear_checkpoints} magnitudes evenly from 0 to {s.max_magnitude:g} "
            "(appendix B.2, Eq. 9).",
        )
    lines += [
        "",
        "## Separability (all used rows)",
        "",
        "| model | silhouette | Fisher ratio | class overlap |",
        "|---|---|---|---|",
    ]
    for m, sp in seps.items():
        lines.append(
            f"| {m} | {sp.silhouette:.4f} | {sp.fisher_ratio:.4f} | {sp.class_overlap:.3f} |"
        )
    lines += ["", "![curves](stress_curves.png)", "", "![by angle](stress_angles.png)", ""]
    return "\n".join(lines)


def _points_table(result: StressResult, sweep: str, title: str, note: str) -> list[str]:
    s = result.settings
    lines = [
        "",
        title,
        "",
        note + f" AUC with its 95% stratified bootstrap interval ({s.bootstrap} replicates) and "
        "the Mann-Whitney p-value of AUC = 0.5. Silent-failure rate: errors with confidence > "
        f"{s.high_confidence} over all errors; wrong & sure: the same errors over all rows; "
        f"acc at c >= {s.confident_at}: accuracy among rows that sure (their share in "
        f"brackets). ECE: {s.n_bins} bins over [0, 1] / over [0.5, 1].",
        "",
        "| model | drift | s | angle (deg) | ROC-AUC [95% CI] | p (AUC = 0.5) | acc | mean conf "
        f"| silent-failure rate | wrong & sure | acc at c >= {s.confident_at} "
        "| ECE [0,1] / [0.5,1] | high-conf error share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result.points:
        if p.sweep != sweep:
            continue
        lines.append(
            f"| {p.model} | {p.kind} | {p.magnitude:.4f} | {p.angle_degrees:.2f} "
            f"| {p.roc_auc:.3f} [{p.roc_auc_low:.3f}, {p.roc_auc_high:.3f}] "
            f"| {p.roc_auc_p_chance:.2g} | {p.accuracy:.3f} | {p.mean_confidence:.3f} "
            f"| {p.silent_failure_ratio:.3f} | {p.confident_error_share:.3f} "
            f"| {p.accuracy_when_confident:.3f} ({p.confident_share:.0%}) "
            f"| {p.ece:.3f} / {p.ece_top_range:.3f} | {p.high_confidence_error_ratio:.3f} |"
        )
    return lines


def write_stress_report(
    result: StressResult,
    seps: dict[str, Separability],
    infos: dict[str, dict[str, Any]],
    data: dict[str, Any],
    embed_seconds: dict[str, float],
    out_dir: Path,
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "data": data,
        "models": infos,
        "embed_seconds": embed_seconds,
        "separability": {k: v.model_dump() for k, v in seps.items()},
        "stress": result.model_dump(mode="json"),
    }
    paths = [out_dir / "stress.json", out_dir / "stress.md"]
    paths[0].write_text(json.dumps(payload, indent=2))
    paths[1].write_text(render_stress_markdown(result, seps, infos, data))
    paths.append(plot_stress(result, out_dir / "stress_curves.png"))
    paths.append(plot_stress(result, out_dir / "stress_angles.png", x="angle_degrees"))
    return paths
