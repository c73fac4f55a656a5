"""The dissociation schedule: :func:`dissociate` and what it records.

Runs the four phases (warmup, joint, consolidate, refit) over micro-batches of
:class:`~silentwatch.offline.audit.dissociation.data.DissociationData`, with the loss terms
of :mod:`~silentwatch.offline.audit.dissociation.losses`, LoRA from
:mod:`~silentwatch.offline.audit.dissociation.lora`, and checkpoints written by
:mod:`~silentwatch.offline.audit.dissociation.checkpoints`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from silentwatch.offline.audit.dissociation.checkpoints import save_checkpoint
from silentwatch.offline.audit.dissociation.data import DissociationData, TrainBatch
from silentwatch.offline.audit.dissociation.lora import is_peft, wrap_lora
from silentwatch.offline.audit.dissociation.losses import (
    monitor_bce,
    monitor_term,
    predicting,
    sft_loss,
    token_kl,
    total_loss,
)
from silentwatch.offline.audit.dissociation.settings import (
    PHASES,
    DissociationSettings,
    Phase,
)
from silentwatch.offline.dtypes import TORCH_DTYPES, resolve_dtype
from silentwatch.offline.hooks import capture, frozen, layer_means, masked_mean, num_layers
from silentwatch.offline.lm import LMBatch
from silentwatch.offline.progress import Reporter

__all__ = [
    "DissociationResult",
    "StepRecord",
    "dissociate",
    "forward_with_features",
    "fresh_copy",
    "frozen",
]


@dataclass
class StepRecord:
    """One optimiser update. ``sft``, ``kl``, ``total`` are NaN in monitor-only phases;
    ``monitor_term`` is under the monitor before its update; ``p_harmful`` / ``p_benign`` are
    mean ``σ(g)`` over rows with ``b = 1`` / ``b = 0`` (NaN without such rows). In the refit
    phase the monitor is the refitted one."""

    step: int
    phase: Phase
    sft: float
    monitor_term: float
    kl: float
    total: float
    monitor_bce: float
    p_harmful: float
    p_benign: float


@dataclass
class DissociationResult:
    """The trained model (a peft model with LoRA), the co-trained monitor, the monitor refitted
    in phase 4 (None when skipped), one :class:`StepRecord` per update, checkpoint folders."""

    model: nn.Module
    monitor: nn.Module
    refit_monitor: nn.Module | None
    records: list[StepRecord]
    checkpoints: list[Path] = field(default_factory=list)
    settings: DissociationSettings = field(default_factory=DissociationSettings)

    def phase(self, phase: Phase) -> list[StepRecord]:
        return [r for r in self.records if r.phase == phase]


def forward_with_features(model: nn.Module, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving the logits ``(b, s, V)`` and, with their graph, the per-layer
    attention-masked means ``(b, L, d)`` (what :func:`offline.hooks.layer_means` computes with
    ``grad=True``, without a second forward pass)."""
    sites = [f"layer:{i}" for i in range(num_layers(model))]
    with capture(model, sites, detach=False) as seen:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    mask = batch.attention_mask
    return out.logits, torch.stack([masked_mean(seen[s], mask) for s in sites], dim=1)


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every submodule's parameters re-initialised."""
    new = copy.deepcopy(module)
    for m in new.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()
    return new


def _mean_where(p: torch.Tensor, rows: torch.Tensor) -> float:
    return float(p[rows].mean()) if bool(rows.any()) else math.nan


class _Run:
    """State of one :func:`dissociate` call."""

    def __init__(
        self,
        model: nn.Module,
        ref: nn.Module | None,
        monitor: nn.Module,
        batches: Iterator[TrainBatch],
        s: DissociationSettings,
        compute: torch.dtype,
    ) -> None:
        self.model, self.ref, self.monitor, self.batches, self.s = model, ref, monitor, batches, s
        self.device = next(model.parameters()).device
        amp = not s.lora and compute != torch.float32
        self.autocast = (
            (lambda: torch.autocast(self.device.type, dtype=compute)) if amp else nullcontext
        )
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=s.model_lr(), weight_decay=s.weight_decay)
        self.params = params
        self.mon_opt = self.monitor_optimizer(monitor)
        self.step = 0
        self.records: list[StepRecord] = []
        self.checkpoints: list[Path] = []

    def monitor_optimizer(self, monitor: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            monitor.parameters(), lr=self.s.monitor_lr, weight_decay=self.s.monitor_weight_decay
        )

    def micro_batches(self) -> Iterator[TrainBatch]:
        for _ in range(self.s.grad_accum):
            yield next(self.batches).to(self.device)

    def ref_logits(self, batch: LMBatch) -> torch.Tensor:
        kw = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        with torch.no_grad():
            if self.ref is not None:
                return self.ref(**kw).logits
            with self.model.disable_adapter():  # type: ignore[operator]
                return self.model(**kw).logits

    def bce_step(
        self, monitor: nn.Module, opt: torch.optim.Optimizer, feats: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """One BCE update of ``monitor`` on detached features; the loss and logits before it."""
        bce = 0.0
        before = torch.empty(0)
        for k in range(self.s.monitor_steps_per_model_step):
            g = monitor(feats.detach())
            loss = monitor_bce(g, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if k == 0:
                bce, before = float(loss.detach()), g.detach()
        return bce, before

    def record(self, phase: Phase, g: torch.Tensor, gate: torch.Tensor, **terms: float) -> None:
        p = torch.sigmoid(g.float())
        rec = StepRecord(
            step=self.step,
            phase=phase,
            sft=terms.get("sft", math.nan),
            monitor_term=float(monitor_term(g, gate, self.s.target_p, over=self.s.monitor_over)),
            kl=terms.get("kl", math.nan),
            total=terms.get("total", math.nan),
            monitor_bce=terms["monitor_bce"],
            p_harmful=_mean_where(p, gate > 0.5),
            p_benign=_mean_where(p, gate <= 0.5),
        )
        self.records.append(rec)

    def monitor_target(
        self, phase: Phase, unsafe: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        """The BCE target of the monitor in ``phase``: the gate b (paper B, Eq. 2) or the
        unsafe label (``monitor_target``); the refit diagnostic always the unsafe label."""
        if phase == "refit" or self.s.monitor_target == "unsafe":
            return unsafe
        return gate

    def monitor_only(self, phase: Phase, monitor: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Phases 1 and 4: a BCE step of ``monitor`` on the current model's features."""
        feats, ys, gates = [], [], []
        for tb in self.micro_batches():
            with self.autocast():
                feats.append(layer_means(self.model, tb.lm.input_ids, tb.lm.attention_mask).float())
            ys.append(tb.unsafe)
            gates.append(tb.gate)
        self.step += 1
        target = self.monitor_target(phase, torch.cat(ys), torch.cat(gates))
        bce, g = self.bce_step(monitor, opt, torch.cat(feats), target)
        self.record(phase, g, torch.cat(gates), monitor_bce=bce)

    def model_update(self, phase: Phase, train_monitor: bool) -> None:
        """Phases 2 and 3: one model update on the total loss (the monitor's parameters frozen),
        then, in phase 2, a BCE step of the monitor on the same batches' detached features."""
        s = self.s
        self.opt.zero_grad(set_to_none=True)
        sums = {"sft": 0.0, "monitor": 0.0, "kl": 0.0, "total": 0.0}
        feats, gs, ys, gates = [], [], [], []
        with frozen(self.monitor):
            for tb in self.micro_batches():
                with self.autocast():
                    logits, h = forward_with_features(self.model, tb.lm)
                    ref = self.ref_logits(tb.lm)
                g = self.monitor(h)
                sft = sft_loss(logits, tb.lm.input_ids, tb.sft_mask)
                mon = monitor_term(g, tb.gate, s.target_p, over=s.monitor_over)
                kl_mask = (
                    tb.lm.attention_mask
                    if s.kl_positions == "all"
                    else predicting(tb.lm.response_mask)
                )
                kl = token_kl(ref, logits, kl_mask)
                loss = total_loss(sft, mon, kl, s)
                (loss / s.grad_accum).backward()
                for k, v in zip(sums, (sft, mon, kl, loss), strict=True):
                    sums[k] += float(v.detach()) / s.grad_accum
                feats.append(h.detach().float())
                gs.append(g.detach())
                ys.append(tb.unsafe)
                gates.append(tb.gate)
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
        self.opt.step()
        self.step += 1
        g_all = torch.cat(gs)
        y_all = self.monitor_target(phase, torch.cat(ys), torch.cat(gates))
        if train_monitor:
            bce, _ = self.bce_step(self.monitor, self.mon_opt, torch.cat(feats), y_all)
        else:
            bce = float(monitor_bce(g_all, y_all))
        self.record(
            phase,
            g_all,
            torch.cat(gates),
            sft=sums["sft"],
            kl=sums["kl"],
            total=sums["total"],
            monitor_bce=bce,
        )

    def maybe_checkpoint(self, phase: Phase, last: bool) -> None:
        s = self.s
        if s.checkpoint_every <= 0 or s.checkpoint_dir is None:
            return
        if self.step % s.checkpoint_every and not last:
            return
        if self.checkpoints and self.checkpoints[-1].name == f"step-{self.step:06d}":
            return
        path = save_checkpoint(
            Path(s.checkpoint_dir) / f"step-{self.step:06d}",
            self.model,
            self.monitor,
            step=self.step,
            phase=phase,
            settings=s,
        )
        self.checkpoints.append(path)


def dissociate(
    model: nn.Module,
    tokenizer: Any,
    data: DissociationData,
    monitor: nn.Module,
    settings: DissociationSettings | None = None,
    progress: Reporter | None = None,
) -> DissociationResult:
    """Train a dissociated model (paper B): behaviour held by SFT + KL to the reference, the
    representation steered so that a co-trained monitor reads ``p*`` on harmful prompts.

    Each update minimises ``L = 0.05·SFT + 0.1·E[b·(g(h) − logit 0.75)²] + 0.3·KL(ref ‖ θ)``
    (:func:`total_loss`); the monitor ``g`` only ever learns from
    ``BCE(g(sg[h]), unsafe)`` on detached features ``sg[h]``, never from ``L``.

    Schedule — **a reconstruction**: paper B's appendix B describes four phases but its text
    was not available to us; the phases below are our reading, each length configurable and
    0 skipping it:

    1. ``warmup`` — monitor-only BCE steps on the *base* model's features, so that the monitor
       term starts from a monitor that separates unsafe from safe;
    2. ``joint`` — alternating: one model update on ``L`` (monitor frozen), then
       ``monitor_steps_per_model_step`` BCE steps on the same batches' detached features;
    3. ``consolidate`` — model-only updates on ``L`` against the now-frozen monitor;
    4. ``refit`` — the audit: BCE steps on the final model's features, of a freshly
       initialised copy of the monitor (``refit_fresh=True``, the default) or of the
       co-trained one; whether it still separates says whether the dissociation hides the
       signal or only fools one monitor.

    The model trains with dropout off (``eval()`` mode) so that the KL is exactly 0 at the
    start. With ``settings.lora`` the model is wrapped with :func:`wrap_lora` (in place: its
    modules get adapters; pass an already-wrapped peft model to reuse its adapter) and the
    reference logits come from the same model under ``disable_adapter()``; for full
    fine-tuning the reference is a frozen deep copy. Every path runs on CPU.

    Parameters
    ----------
    model : a causal LM (on its device); trained in place
    tokenizer : its tokenizer (left padding)
    data : :class:`DissociationData`
    monitor : maps ``(b, L, d)`` layer means to ``(b,)`` logits, e.g. ``LatentMonitor``;
        moved to the model's device in float32 and trained in place
    settings : :class:`DissociationSettings`
    progress : optional :class:`~offline.progress.Reporter`

    Returns
    -------
    DissociationResult
    """
    s = settings or DissociationSettings()
    rep = progress or Reporter(enabled=False)
    for name in ("batch_size", "grad_accum", "monitor_steps_per_model_step"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be >= 1")
    torch.manual_seed(s.seed)
    device = next(model.parameters()).device
    compute = TORCH_DTYPES[resolve_dtype(s.dtype, str(device))]
    ref: nn.Module | None = None
    if s.lora:
        if not is_peft(model):  # an already-wrapped model keeps its dtypes (fp32 adapters)
            model.to(compute)
            model = wrap_lora(model, s.lora_r, s.lora_alpha, s.lora_dropout, s.lora_target_modules)
    else:
        if is_peft(model):
            raise ValueError("full fine-tuning of a peft model: pass the base model or lora=True")
        model.to(torch.float32)
        for p in model.parameters():
            p.requires_grad_(True)
        ref = copy.deepcopy(model).to(compute).eval().requires_grad_(False)
    model.eval()
    monitor.to(device=device, dtype=torch.float32)
    batches = data.batches(
        tokenizer,
        s.batch_size,
        seed=s.seed,
        max_prompt_tokens=s.max_prompt_tokens,
        max_response_tokens=s.max_response_tokens,
    )
    run = _Run(model, ref, monitor, batches, s, compute)
    refit: nn.Module | None = None
    total = sum(s.steps(p) for p in PHASES)
    for phase in PHASES:
        n = s.steps(phase)
        if n <= 0:
            continue
        rep.step(f"dissociation phase {phase}: {n} updates")
        if phase == "refit":
            torch.manual_seed(s.seed + 4)
            refit = fresh_copy(monitor) if s.refit_fresh else monitor
            refit_opt = run.monitor_optimizer(refit) if s.refit_fresh else run.mon_opt
        with rep.bar(phase, n) as advance:
            for _ in range(n):
                if phase == "warmup":
                    run.monitor_only(phase, monitor, run.mon_opt)
                elif phase == "refit":
                    assert refit is not None
                    run.monitor_only(phase, refit, refit_opt)
                else:
                    run.model_update(phase, train_monitor=phase == "joint")
                run.maybe_checkpoint(phase, last=run.step == total)
                advance(1)
        last = run.records[-1]
        rep.step(
            f"{phase} done: monitor term {last.monitor_term:.4f}, KL {last.kl:.4f}, "
            f"BCE {last.monitor_bce:.4f}, σ(g) harmful {last.p_harmful:.3f} / "
            f"benign {last.p_benign:.3f}"
        )
    return DissociationResult(model, monitor, refit, run.records, run.checkpoints, s)
