"""The gate's outputs: report.json (the contract), report.md and PNG plots (for people)."""

from __future__ import annotations

from pathlib import Path

from silentwatch.offline.gate.run import GateReport, SideMetrics
from silentwatch.offline.stress.plots import headless_pyplot, plot_stress
from silentwatch.offline.stress.report import fmt_cell as _f


def plot_reliability(report: GateReport, path: Path) -> Path:
    """Top-label reliability diagrams: old head on old, frozen and retrained on new."""
    plt = headless_pyplot()
    sides: list[tuple[str, SideMetrics | None]] = [
        ("old head, old embedder", report.old_on_old),
        ("frozen old head, new embedder", report.frozen_on_new),
        ("retrained head, new embedder", report.retrained_on_new),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for ax, (title, m) in zip(axes, sides, strict=True):
        ax.plot([0.5, 1], [0.5, 1], color="grey", ls=":", lw=1)
        if m is not None:
            conf = [b[0] for b in m.reliability]
            acc = [b[1] for b in m.reliability]
            total = sum(b[2] for b in m.reliability)
            sizes = [max(8.0, 400.0 * b[2] / total) for b in m.reliability]
            ax.plot(conf, acc, color="C0")
            ax.scatter(conf, acc, s=sizes, color="C0", alpha=0.6)
            ax.set_title(f"{title}\nAUC {m.roc_auc:.3f}  ECE {m.ece:.3f}", fontsize=10)
        else:
            ax.set_title(f"{title}\n(dimension differs: not applicable)", fontsize=10)
        ax.set_xlim(0.48, 1.02)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("confidence max(p, 1-p)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_real_update(report: GateReport, path: Path) -> Path:
    """The synthetic AUC curves against measured angle, with the real update marked."""
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    stress = report.stress
    for kind in dict.fromkeys(p.kind for p in stress.points):
        curve = sorted(stress.curve("old", kind), key=lambda p: p.angle_degrees)
        xs, ys = [p.angle_degrees for p in curve], [p.roc_auc for p in curve]
        ax.plot(xs, ys, marker=".", label=kind)
    angle = report.real_drift.mean_angle_degrees
    if angle is not None and report.frozen_on_new is not None:
        ax.axvline(angle, color="red", ls="--", lw=1)
        auc = report.frozen_on_new.roc_auc
        label = f"real update: {angle:.1f} deg, frozen AUC {auc:.3f}"
        ax.scatter([angle], [auc], color="red", zorder=5, s=60, label=label)
    ax.axhline(stress.settings.failure_auc, color="grey", ls=":", lw=1)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("mean angle moved (degrees)")
    ax.set_ylabel("ROC-AUC of the frozen head")
    ax.set_title("Where the real update sits on paper A's stress curves", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metrics_table(report: GateReport) -> list[str]:
    rows = [
        ("old head on old embeddings", report.old_on_old),
        ("old head frozen on new embeddings", report.frozen_on_new),
        ("head retrained on new embeddings", report.retrained_on_new),
    ]
    out = [
        "| classifier | ROC-AUC | accuracy | mean conf | ECE (5 bins) | silent-failure rate "
        "| high-conf error share |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        if m is None:
            out.append(f"| {name} | n/a (dimension differs) | | | | | |")
            continue
        out.append(
            f"| {name} | {m.roc_auc:.3f} | {m.accuracy:.3f} | {m.mean_confidence:.3f} | "
            f"{m.ece:.3f} | {_f(m.silent_failure_ratio)} | {_f(m.high_confidence_error_ratio)} |"
        )
    return out


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _heads_section(r: GateReport) -> list[str]:
    """Every head's verdict with its ROC-AUCs and 95% DeLong intervals (several heads, or a
    head the test split cannot judge)."""
    if len(r.heads) < 2 and not any(h.verdict == "not_enough_positives" for h in r.heads):
        return []
    lines = [
        "",
        "## Heads",
        "",
        "| head | verdict | route | test unsafe / safe | ROC-AUC old | frozen on new "
        "| drop (95% CI) | retrained on new | flip rate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in r.heads:
        verdict = {"pass": "pass", "fail": "**FAIL**"}.get(h.verdict, "not enough positives")
        frozen = (
            "n/a"
            if h.frozen_on_new is None
            else f"{h.frozen_on_new.roc_auc:.3f}{_ci(h.roc_auc_ci.get('frozen'))}"
        )
        drop = "" if h.frozen_auc_drop is None else f"{h.frozen_auc_drop:+.3f}"
        lines.append(
            f"| {h.name} | {verdict} | {h.route or '—'} | {h.test_positives} / "
            f"{h.test_negatives} | {h.old_on_old.roc_auc:.3f}{_ci(h.roc_auc_ci.get('old'))} | "
            f"{frozen} | {drop}{_ci(h.frozen_auc_drop_ci)} | "
            f"{h.retrained_on_new.roc_auc:.3f}{_ci(h.roc_auc_ci.get('retrained'))} | "
            f"{_f(h.flip_rate, '.1%')} |"
        )
    lines += ["", *(f"* **{h.name}**: {h.summary}" for h in r.heads)]
    return lines


def _settings_section(r: GateReport) -> list[str]:
    """Each side's effective embedding settings, as run, and what differed."""
    if not r.embedding_settings:
        return []  # a report from before per-side settings
    keys = ("dtype", "max_length", "pooling", "normalized", "device", "dim", "backend")
    # What ran (EmbeddingInfo: auto dtype and model-default pooling resolved), not the YAML.
    rows = [(k, r.old_embedder.get(k, "—"), r.new_embedder.get(k, "—")) for k in keys]
    lines = ["", "## Embedder settings", "", "| setting | old | new |", "|---|---|---|"]
    for k, a, b in rows:
        mark = " (differs)" if a != b else ""
        lines.append(f"| {k} | {a} | {b}{mark} |")
    changed = "; ".join(r.settings_changed) if r.settings_changed else "nothing"
    kind = " (configuration-only update: same weights)" if r.configuration_only else ""
    lines += ["", f"Configured differences: {changed}{kind}."]
    return lines


def _duplicates(data: dict) -> str:
    """The data line's note on repeated texts dropped before balancing (none: no note)."""
    n = int(data.get("duplicates_dropped", 0) or 0)
    if not n:
        return ""
    conflicts = int(data.get("duplicate_label_conflicts", 0) or 0)
    return f"; {n:,} repeated texts dropped ({conflicts:,} with another label)"


def render_markdown(report: GateReport) -> str:
    r = report
    d = r.real_drift
    lines = [
        f"# Gate report: {r.verdict.upper()}",
        "",
        r.summary,
        "",
        f"* old embedder: `{r.old_embedder.get('name', r.old_embedder)}`",
        f"* new embedder: `{r.new_embedder.get('name', r.new_embedder)}`",
        f"* data: `{r.data['path']}`: {r.data['rows_used']:,} of {r.data['rows_loaded']:,} rows "
        f"({'balanced' if r.data['balanced'] else 'as found'}, {r.data['positives_used']:,} "
        f"unsafe), split {r.data['split']}, seed {r.data['seed']}" + _duplicates(r.data),
    ]
    if r.bundle:
        lines.append(f"* bundle for the sidecar: `{r.bundle}` (route: {r.route})")
    lines += _heads_section(r)
    lines += _settings_section(r)
    default = " (the default head)" if len(r.heads) > 1 else ""
    lines += ["", f"## Checks{default}", "", "| check | value | limit | result | detail |"]
    lines.append("|---|---|---|---|---|")
    for c in r.checks:
        result = "pass" if c.passed else "**FAIL**"
        lines.append(f"| {c.name} | {_f(c.value, '.4f')} | {c.limit:g} | {result} | {c.detail} |")
    lines += [
        "",
        "Retrained head, judged by the same thresholds (decision churn against the old head: "
        f"{r.retrained_flip_rate:.1%}, judged only if `max_retrained_flip_rate` is set):",
        "",
    ]
    lines += ["| check | value | limit | result |", "|---|---|---|---|"]
    for c in r.retrained_checks:
        result = "pass" if c.passed else "FAIL"
        lines.append(f"| {c.name} | {_f(c.value, '.4f')} | {c.limit:g} | {result} |")
    lines += ["", "## Classifiers on the test split", "", *_metrics_table(r)]
    if r.flip_rate is not None:
        lines += ["", f"Decisions that flip between old and frozen-on-new: **{r.flip_rate:.1%}**."]
    lines += [
        "",
        "## Real drift between the versions (test texts)",
        "",
        f"* same space: {d.same_space}",
        f"* angle (degrees): mean {_f(d.mean_angle_degrees, '.2f')}, median "
        f"{_f(d.median_angle_degrees, '.2f')}, 95th percentile {_f(d.p95_angle_degrees, '.2f')}",
        f"* linear CKA: {d.linear_cka:.4f}",
        "",
        "## Where the real update sits on the synthetic stress curves",
        "",
        f"| drift type | failure angle (AUC < {r.stress.settings.failure_auc:.2f}) "
        "| synthetic AUC at the real angle | real / failure angle |",
        "|---|---|---|---|",
    ]
    for p in r.stress_position:
        lines.append(
            f"| {p.kind} | {_f(p.failure_angle_degrees, '.2f')} "
            f"| {_f(p.synthetic_auc_at_real_angle)} | {_f(p.real_over_failure_angle, '.2f')} |"
        )
    lines += [
        "",
        "Synthetic drift is a yardstick, not a forecast: a real update moves embeddings in "
        "structured directions, so the frozen head's measured AUC above is what decides.",
        "",
        "## Stress sweep (paper A) on the old embeddings",
        "",
        "| drift type | clean AUC | failure magnitude | failure angle | cliff width (s) "
        "| cliff width (deg) | conf drop at failure |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r.stress.cliffs:
        lines.append(
            f"| {c.kind} | {c.clean_auc:.3f} | {_f(c.failure_magnitude, '.4f')} | "
            f"{_f(c.failure_angle_degrees, '.2f')} | {_f(c.cliff_width_magnitude, '.4f')} | "
            f"{_f(c.cliff_width_degrees, '.2f')} | {_f(c.mean_confidence_drop_at_failure, '.1%')} |"
        )
    lines += [
        "",
        "## Separability (all used rows)",
        "",
        "| space | silhouette | Fisher ratio | class overlap |",
        "|---|---|---|---|",
    ]
    for name, s in r.separability.items():
        lines.append(
            f"| {name} | {s.silhouette:.4f} | {s.fisher_ratio:.4f} | {s.class_overlap:.3f} |"
        )
    if r.representation is not None:
        a = r.representation
        lines += [
            "",
            "## Representation audit (paper B)",
            "",
            f"**{a.summary}** Full report: [representation/report.md](representation/report.md).",
            "",
            "| check | value | limit | result |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {c.name} | {c.value:.3f} | {c.limit:.3f} | {'pass' if c.passed else 'FAIL'} |"
            for c in a.checks
        ]
    lines += [
        "",
        "## Plots",
        "",
        "![stress curves](stress_curves.png)",
        "",
        "![real update on the stress curves](real_update.png)",
        "",
        "![reliability](reliability.png)",
        "",
        "## Timings (seconds)",
        "",
        ", ".join(f"{k} {v:.1f}" for k, v in r.timings_seconds.items()),
        "",
        _engine_line(r.execution),
        "",
    ]
    return "\n".join(lines)


def _engine_line(execution: dict[str, object]) -> str:
    """Which engine ran the embedding and the stress cells."""
    if execution.get("engine") != "ray":
        return "Engine: local (this process)."
    gpus = execution.get("gpus_per_replica")
    return (
        f"Engine: Ray at `{execution.get('address')}`, {execution.get('replicas')} embedding "
        f"replicas x {execution.get('cpus_per_replica')} CPU"
        + ("" if gpus is None else f", {gpus} GPU")
        + "."
    )


def write_report(report: GateReport, out_dir: Path) -> list[Path]:
    """report.json, report.md and three PNGs under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(report.model_dump_json(indent=2))
    paths[1].write_text(render_markdown(report))
    paths.append(plot_stress(report.stress, out_dir / "stress_curves.png"))
    paths.append(plot_real_update(report, out_dir / "real_update.png"))
    paths.append(plot_reliability(report, out_dir / "reliability.png"))
    if report.representation is not None:
        from silentwatch.offline.audit.report import write_audit_report

        paths += write_audit_report(report.representation, out_dir / "representation")
    return paths
