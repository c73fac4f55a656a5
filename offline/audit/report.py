"""The audit's report: ``report.json`` (for CI), ``report.md`` and PNG plots per layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from silentwatch.offline.audit.run import AuditReport, ModelSide


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _sides(r: AuditReport) -> list[ModelSide]:
    return [r.base] + ([r.cand] if r.cand is not None else [])


def render_markdown(r: AuditReport) -> str:
    lines = [
        "# Representation audit (paper B)",
        "",
        f"**{r.summary}**",
        "",
        f"Base `{r.model}`; candidate `{r.candidate or '—'}`; "
        f"{r.layers} blocks, hidden {r.hidden}.",
        f"Probe examples (split by prompt): {r.data['examples']}; harmful prompts "
        f"{r.data['harmful_prompts']}, harmless {r.data['harmless_prompts']}.",
        "",
        "## Checks",
        "",
    ]
    if r.checks:
        lines += ["| check | value | limit | result | detail |", "|---|---|---|---|---|"]
        lines += [
            f"| {c.name} | {c.value:.3f} | {c.limit:.3f} | {'pass' if c.passed else 'FAIL'} "
            f"| {c.detail} |"
            for c in r.checks
        ]
    else:
        lines.append("No candidate, nothing judged.")
    lines += [
        "",
        "## Latent monitor probe",
        "",
        f"Trained on the base model's per-layer masked-mean hidden states; best epoch "
        f"{r.probe['best_epoch']} of {len(r.probe['val_auroc'])} by held-out AUROC "
        f"(before training {_f(r.probe['initial_val_auroc'])}). The same fixed probe reads "
        "both models' features of the held-out test pairs:",
        "",
        "| model | probe AUROC | sigmoid gap | refusal (harmful) | refusal (harmless) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {s.name} | {_f(s.probe_auroc)} | {_f(s.sigmoid_gap)} | {_f(s.refusal_harmful, 2)} "
        f"| {_f(s.refusal_harmless, 2)} |"
        for s in _sides(r)
    ]
    for s in _sides(r):
        if s.pgd:
            lines += [
                "",
                f"## Latent PGD on {s.name}",
                "",
                f"Clean refusal rate on the attacked prompts: "
                f"{_f(s.clean_refusal_on_attacked_prompts, 2)}. Success = not refused.",
                "",
                "| site | eps | method | n | success | ‖δ‖₂ | ‖δ‖/‖h‖ "
                "| target NLL clean → attacked |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {p['site']} | {p['eps']:g} | {p['method']} | {p['n']} "
                f"| {_f(p['success_rate'], 2)} | {_f(p['delta_norm'], 4)} "
                f"| {_f(p['relative_norm'], 5)} | {_f(p['nll_clean'], 2)} → {_f(p['nll'], 2)} |"
                for p in s.pgd
            ]
        if s.lvs:
            lines += [
                "",
                f"LVS on {s.name} = [S(y) − S(y′)]₊ / (log(1 + ‖δ‖₂) + η), all eps pooled:",
                "",
                "| site | n | mean (paper) | mean 95% CI | median | median 95% CI "
                "| random baseline mean | its 95% CI |",
                "|---|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {v['layer']} | {v['n']} | {_f(v['mean'])} "
                f"| [{_f(v.get('mean_ci_low'))}, {_f(v.get('mean_ci_high'))}] "
                f"| {_f(v['median'])} | [{_f(v['ci_low'])}, {_f(v['ci_high'])}] "
                f"| {_f(v.get('random_mean'))} "
                f"| [{_f(v.get('random_ci_low'))}, {_f(v.get('random_ci_high'))}] |"
                for v in s.lvs
            ]
        if s.lvs_by_eps:
            lines += [
                "",
                f"LVS on {s.name} per site and ε (not pooled), the random baseline beside it:",
                "",
                "| site | eps | n | mean (paper) | mean 95% CI | random mean | its 95% CI |",
                "|---|---|---|---|---|---|---|",
            ]
            for v in s.lvs_by_eps:
                site, _, eps = str(v["layer"]).rpartition("@")
                lines.append(
                    f"| {site} | {eps} | {v['n']} | {_f(v['mean'])} "
                    f"| [{_f(v.get('mean_ci_low'))}, {_f(v.get('mean_ci_high'))}] "
                    f"| {_f(v.get('random_mean'))} "
                    f"| [{_f(v.get('random_ci_low'))}, {_f(v.get('random_ci_high'))}] |"
                )
    if r.dissociation:
        last: dict[str, dict[str, Any]] = {}
        for rec in r.dissociation:
            last[rec["phase"]] = rec
        lines += [
            "",
            "## Dissociation (last step of each phase)",
            "",
            "| phase | step | monitor read | SFT | monitor term | KL | monitor BCE "
            "| σ(g) harmful | σ(g) benign |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {ph} | {rec['step']} | {rec.get('monitor', '')} | {_f(rec['sft'])} "
            f"| {_f(rec['monitor_term'])} | {_f(rec['kl'], 4)} | {_f(rec['monitor_bce'])} "
            f"| {_f(rec['p_harmful'])} | {_f(rec['p_benign'])} |"
            for ph, rec in last.items()
        ]
        if r.dissociation_instruments:
            lines += ["", "Instruments:", ""]
            lines += [f"* {k}: {v}" for k, v in r.dissociation_instruments.items()]
    for title, recs in (("the base", r.finetune), ("the candidate", r.finetune_candidate)):
        if not recs:
            continue
        lines += [
            "",
            f"## Harmful LoRA SFT of {title} (parameter-space intervention)",
            "",
            "| epoch | refusal | compliance | train loss |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {e['epoch']} | {_f(e['refusal_rate'], 2)} | {_f(e['compliance_rate'], 2)} "
            f"| {_f(e['train_loss'])} |"
            for e in recs
        ]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r.timings_seconds.items())]
    return "\n".join(lines) + "\n"


def _along(
    by_site: dict[str, Any], sites: list[str], key: str, none: float = float("nan")
) -> list[float]:
    """``key`` of each site's cell, NaN where a site has no cell, ``none`` where it is None."""
    vals = [by_site[t].get(key) if t in by_site else float("nan") for t in sites]
    return [none if v is None else v for v in vals]


def plot_layers(r: AuditReport, path: Path) -> Path | None:
    """Paper B's Fig. 4 / 5 layout, one row per model: across sites (in attack order), the
    attack's objective (target NLL), attack success and the mean LVS, one line per ε; the
    PGD attack solid, its norm-matched random baseline dotted."""
    sides = [s for s in _sides(r) if s.pgd]
    if not sides:
        return None
    from silentwatch.offline.stress.plots import headless_pyplot

    plt = headless_pyplot()
    fig, axes = plt.subplots(len(sides), 3, figsize=(14, 3.6 * len(sides)), squeeze=False)
    for row, s in zip(axes, sides, strict=True):
        pts = [p for p in s.pgd or [] if p["method"] != "clean"]
        sites = list(dict.fromkeys(p["site"] for p in pts))
        x = range(len(sites))
        for k, eps in enumerate(sorted({p["eps"] for p in pts})):
            colour = f"C{k}"
            for method, ls in (("pgd", "-"), ("random", ":")):
                cell = {p["site"]: p for p in pts if p["eps"] == eps and p["method"] == method}
                for ax, key in ((row[0], "nll"), (row[1], "success_rate")):
                    ax.plot(x, _along(cell, sites, key), ls, marker="o", color=colour,
                            label=f"ε {eps:g} {method}")  # fmt: skip
            by_eps = {str(v["layer"]).rpartition("@")[0]: v for v in s.lvs_by_eps or []
                      if str(v["layer"]).endswith(f"@{eps:g}")}  # fmt: skip
            for key, ls, method in (("mean", "-", "pgd"), ("random_mean", ":", "random")):
                if by_eps:
                    row[2].plot(x, _along(by_eps, sites, key, 0.0), ls, marker="o", color=colour,
                                label=f"ε {eps:g} {method}")  # fmt: skip
        for ax in row:
            ax.set_xticks(list(x), sites, rotation=45, ha="right", fontsize=7)
        row[0].set_ylabel('NLL of "Sure, here is"')
        row[1].set_ylabel("attack success (not refused)")
        row[1].set_ylim(-0.05, 1.05)
        row[2].set_ylabel("mean LVS (paper B)")
        row[0].set_title(s.name[:70], fontsize=8, loc="left")
        row[0].legend(fontsize=6, ncol=2)
        if row[2].lines:
            row[2].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probe(r: AuditReport, path: Path) -> Path:
    from silentwatch.offline.stress.plots import headless_pyplot

    plt = headless_pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    val = r.probe["val_auroc"]
    axes[0].plot(range(1, len(val) + 1), val, marker=".")
    axes[0].axvline(r.probe["best_epoch"], color="grey", ls="--", lw=1)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("held-out AUROC")
    axes[0].set_title("probe training (base)", fontsize=9)
    names = [s.name[:24] for s in _sides(r)]
    x = range(len(names))
    axes[1].bar([i - 0.2 for i in x], [s.probe_auroc for s in _sides(r)], 0.4, label="AUROC")
    axes[1].bar([i + 0.2 for i in x], [s.sigmoid_gap for s in _sides(r)], 0.4, label="sigmoid gap")
    axes[1].set_xticks(list(x), names, fontsize=7)
    axes[1].set_title("fixed base probe", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_audit_report(r: AuditReport, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(r.model_dump(mode="json"), indent=1) + "\n")
    paths[1].write_text(render_markdown(r))
    paths.append(plot_probe(r, out_dir / "probe.png"))
    layers = plot_layers(r, out_dir / "pgd_lvs.png")
    if layers is not None:
        paths.append(layers)
    return paths
