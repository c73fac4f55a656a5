"""Paper B's latent PGD grid: clean answers, then the attack and its matched random baseline at
every site × ε, summarised per cell and turned into LVS inputs.

The attack itself (:mod:`silentwatch.offline.attacks.pgd`) knows nothing of the audit; this
module is the audit's use of it: it pairs every attack with its baseline, scores answers
with a harmlessness scorer (default: 1 for a refusal, so LVS is always defined) and feeds
:func:`silentwatch.offline.audit.lvs.lvs_table`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from silentwatch.offline.attacks.pgd import (
    PGDResult,
    PGDSettings,
    judge_responses,
    latent_pgd,
    model_device,
    prompt_batches,
    random_baseline,
    respond,
)
from silentwatch.offline.audit.lvs import LVSInput
from silentwatch.offline.execution.models import ModelRecipe, portable_model
from silentwatch.offline.judge import (
    HarmlessnessScorer,
    KeywordRefusalJudge,
    RefusalHarmlessness,
    RefusalJudge,
)
from silentwatch.offline.lm import encode
from silentwatch.offline.progress import Reporter

if TYPE_CHECKING:
    from silentwatch.offline.execution.settings import ExecutionSettings

__all__ = ["PGDGrid", "PGDRow", "run_pgd_grid"]


@dataclass
class PGDRow:
    """Summary of one (site, ε, method) cell: means over the prompts."""

    site: str
    eps: float
    method: str
    n: int
    success_rate: float
    harmless: float
    delta_norm: float
    relative_norm: float
    nll_clean: float
    nll: float


@dataclass
class PGDGrid:
    """Clean answers plus the attack and its baseline at every site × ε."""

    prompts: list[str]
    clean_responses: list[str]
    clean_refused: np.ndarray
    clean_harmless: np.ndarray
    results: list[PGDResult]

    def rows(self) -> list[PGDRow]:
        """A ``clean`` row (no δ; site "-", ε 0), then one row per result in run order."""

        def mean(x: np.ndarray | None) -> float:
            return float("nan") if x is None or len(x) == 0 else float(np.mean(x))

        n, nan = len(self.prompts), float("nan")
        clean = PGDRow(
            "-", 0.0, "clean", n, mean(~self.clean_refused), mean(self.clean_harmless),
            0.0, 0.0, nan, nan,
        )  # fmt: skip
        return [clean] + [
            PGDRow(
                r.site,
                r.eps,
                r.method,
                len(r.prompts),
                r.success_rate,
                mean(r.harmless),
                mean(r.delta_norm),
                mean(r.relative_norm),
                mean(r.nll_clean),
                mean(r.nll),
            )
            for r in self.results
        ]

    def markdown(self) -> str:
        """:meth:`rows` as a markdown table."""
        lines = [
            "| site | eps | method | n | success | S mean | ‖δ‖₂ | ‖δ‖/‖h‖ | NLL clean | NLL |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows():
            lines.append(
                f"| {r.site} | {r.eps:g} | {r.method} | {r.n} | {r.success_rate:.2f} | "
                f"{r.harmless:.2f} | {r.delta_norm:.4g} | {r.relative_norm:.2e} | "
                f"{r.nll_clean:.3f} | {r.nll:.3f} |"
            )
        return "\n".join(lines)

    def lvs_inputs(self, method: str = "pgd", *, by_eps: bool = False) -> dict[str, LVSInput]:
        """Inputs of :func:`silentwatch.offline.audit.lvs.lvs_table`: per site (all ε pooled),
        or per ``"site@eps"`` with ``by_eps``; S(y) from the clean answers."""
        groups: dict[str, list[PGDResult]] = {}
        for r in self.results:
            if r.method == method and r.harmless is not None:
                key = f"{r.site}@{r.eps:g}" if by_eps else r.site
                groups.setdefault(key, []).append(r)
        return {
            k: LVSInput(
                np.concatenate([self.clean_harmless for _ in rs]),
                np.concatenate([r.harmless for r in rs if r.harmless is not None]),
                np.concatenate([r.delta_norm for r in rs]),
            )
            for k, rs in groups.items()
        }


def run_pgd_grid(
    model: nn.Module,
    tok: Any,
    prompts: Sequence[str],
    settings: PGDSettings | None = None,
    judge: RefusalJudge | None = None,
    scorer: HarmlessnessScorer | None = None,
    progress: Reporter | None = None,
    execution: ExecutionSettings | None = None,
) -> PGDGrid:
    """Clean answers, then for every site × ε the batched attack and its matched random
    baseline. ``scorer`` defaults to :class:`RefusalHarmlessness` over ``judge`` (S = 1 for
    a refusal), so LVS is always defined.

    ``execution`` with ``engine: ray`` runs each (site, ε) cell as a Ray task on a copy of
    the model (shipped once through the object store); the attack is seeded per example,
    so the cells give the local loop's results, in the same order.
    """
    s = settings or PGDSettings()
    prompts = list(prompts)
    judge = judge or KeywordRefusalJudge()
    scorer = scorer or RefusalHarmlessness(judge)
    progress = progress or Reporter(enabled=False)
    dev = model_device(model)
    clean: list[str] = []
    for chunk in prompt_batches(prompts, s.batch_size):
        batch = encode(tok, chunk, max_prompt_tokens=s.max_prompt_tokens).to(dev)
        clean += respond(model, tok, batch, s.max_new_tokens)
    refused, harmless = judge_responses(prompts, clean, judge, scorer)
    assert refused is not None and harmless is not None
    progress.step(f"clean answers: refusal rate {refused.mean():.2f} on {len(prompts)} prompts")
    results: list[PGDResult] = []
    cells = [(site, eps) for site in s.sites for eps in s.eps]
    cell_of = partial(
        _pgd_cell, model=model, tok=tok, prompts=prompts, s=s, judge=judge, scorer=scorer
    )

    def said(pgd: PGDResult, rnd: PGDResult) -> None:
        progress.step(
            f"{pgd.site} eps={pgd.eps:g}: success pgd {pgd.success_rate:.2f} random "
            f"{rnd.success_rate:.2f}, nll {pgd.nll_clean.mean():.3f} -> "
            f"{pgd.nll.mean():.3f}"
        )

    recipe = None
    if execution is not None and execution.is_ray:
        # Ray ships the weights, not the live model (its hooks may not pickle); a model
        # that is no plain transformers model (a LoRA-wrapped candidate) stays here.
        recipe = portable_model(model)
        if recipe is None:
            name = type(model).__name__
            progress.step(f"latent PGD runs in this process: a {name} is not shipped to Ray")

    with progress.bar("latent PGD", total=len(cells)) as advance:
        if recipe is not None:
            from silentwatch.offline.execution.tasks import map_cells

            remote_cell = partial(cell_of, model=recipe)
            for pgd, rnd in map_cells(remote_cell, cells, execution, advance, device=str(dev)):
                results += [pgd, rnd]
                said(pgd, rnd)
        else:
            for cell in cells:
                pgd, rnd = cell_of(cell)
                results += [pgd, rnd]
                said(pgd, rnd)
                advance(1)
    return PGDGrid(prompts, clean, refused, harmless, results)


def _pgd_cell(
    cell: tuple[str, float],
    *,
    model: nn.Module | ModelRecipe,
    tok: Any,
    prompts: list[str],
    s: PGDSettings,
    judge: RefusalJudge,
    scorer: HarmlessnessScorer,
) -> tuple[PGDResult, PGDResult]:
    """The attack at one (site, ε) and its random baseline of the same norms (on a Ray
    worker, ``model`` is a recipe, built once per worker)."""
    site, eps = cell
    if isinstance(model, ModelRecipe):
        model = model.build()
    pgd = latent_pgd(model, tok, prompts, site, eps, s, judge=judge, scorer=scorer)
    rnd = random_baseline(
        model,
        tok,
        prompts,
        site,
        pgd.delta_norm,
        s,
        eps=eps,
        judge=judge,
        scorer=scorer,
    )
    return pgd, rnd
