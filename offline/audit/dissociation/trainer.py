"""The dissociation's training loop: :func:`dissociate` and what it records.

By default (``schedule="paper"``) every update is paper B's four phases (App. B, "Monitor
update during dissociated-model training"): forward pass; Eq. 1 backpropagated to the model
only; the detached hidden states through the monitor and Eq. 2's BCE backpropagated to the
monitor only; both optimisers stepping on the same gradient-accumulation cadence. The
``schedule="staged"`` option runs the earlier warmup / joint / consolidate / refit stages.
Rows come from :mod:`~silentwatch.offline.audit.dissociation.data` (:func:`compose`), loss
terms from :mod:`~silentwatch.offline.audit.dissociation.losses`, LoRA from
:mod:`~silentwatch.offline.audit.dissociation.lora`, checkpoints from
:mod:`~silentwatch.offline.audit.dissociation.checkpoints`.

Three instruments, kept apart (§3: "The standalone audit probe ... is a separate fixed
instrument"): the *construction-time monitor* passed to :func:`dissociate`, co-trained by
Eq. 2 and returned as :attr:`DissociationResult.monitor`; the *audit probe*, fitted by the
audit on the base model and never touched here (pass it as ``audit_probe`` to have that
checked); and, with the staged option only, the *refit monitor*, a diagnostic.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from silentwatch.offline.audit.dissociation.checkpoints import (
    OPTIMIZERS_FILE,
    latest_checkpoint,
    save_checkpoint,
)
from silentwatch.offline.audit.dissociation.data import (
    DissociationData,
    TrainBatch,
    anchor_rows,
    compose,
)
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
    STAGED_PHASES,
    DissociationSettings,
    Phase,
)
from silentwatch.offline.dtypes import TORCH_DTYPES, resolve_dtype
from silentwatch.offline.hooks import capture, frozen, layer_means, masked_mean, num_layers
from silentwatch.offline.lm import LMBatch
from silentwatch.offline.progress import Reporter

__all__ = [
    "CONSTRUCTION_MONITOR",
    "REFIT_MONITOR",
    "DissociationResult",
    "StepRecord",
    "dissociate",
    "forward_with_features",
    "fresh_copy",
    "frozen",
]

CONSTRUCTION_MONITOR = "construction monitor"
""":attr:`StepRecord.monitor` of rows read by the co-trained construction-time monitor."""
REFIT_MONITOR = "refit monitor (diagnostic)"
""":attr:`StepRecord.monitor` of the staged option's refit rows."""


@dataclass
class StepRecord:
    """One optimiser update.

    ``sft``, ``kl``, ``total`` are NaN in monitor-only phases; ``monitor_term`` is under the
    monitor before its update; ``monitor_bce`` is Eq. 2's BCE before the update (the mean
    over the update's micro-batches); ``p_harmful`` / ``p_benign`` are mean ``σ(g)`` over
    rows with ``b = 1`` / ``b = 0`` (NaN without such rows). ``monitor`` names the instrument
    whose readings these are: :data:`CONSTRUCTION_MONITOR` (never the audit probe) or, in the
    staged refit phase, :data:`REFIT_MONITOR`.
    """

    step: int
    phase: Phase
    sft: float
    monitor_term: float
    kl: float
    total: float
    monitor_bce: float
    p_harmful: float
    p_benign: float
    monitor: str = CONSTRUCTION_MONITOR


@dataclass
class DissociationResult:
    """The trained model (a peft model with LoRA), the co-trained construction-time monitor,
    the staged option's refit monitor (None otherwise), one :class:`StepRecord` per update,
    checkpoint folders, the settings, the training rows used (after :func:`compose`), and
    whether an ``audit_probe`` was checked to stay separate and unchanged."""

    model: nn.Module
    monitor: nn.Module
    refit_monitor: nn.Module | None
    records: list[StepRecord]
    checkpoints: list[Path] = field(default_factory=list)
    settings: DissociationSettings = field(default_factory=DissociationSettings)
    rows: DissociationData | None = None
    audit_probe_checked: bool = False

    def phase(self, phase: Phase) -> list[StepRecord]:
        """The records of ``phase``."""
        return [r for r in self.records if r.phase == phase]

    def instruments(self) -> dict[str, str]:
        """Which monitor is which, for a report (paper B §3: the audit probe "is a separate
        fixed instrument")."""
        checked = " (checked: no shared parameters, unchanged)" if self.audit_probe_checked else ""
        out = {
            "construction_monitor": (
                "co-trained during construction on Eq. 2's BCE (target "
                f"{self.settings.monitor_target!r}), starting from the monitor passed in; "
                "DissociationResult.monitor; the StepRecords' readings"
            ),
            "audit_probe": (
                "fitted by the audit on base-model features and held fixed: not trained, "
                "not read here" + checked
            ),
        }
        if self.refit_monitor is not None:
            out["refit_monitor"] = (
                "staged option only: fitted to the unsafe label on the final model's features "
                "after training; a diagnostic, not the audit probe"
            )
        return out


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


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _check_separate(monitor: nn.Module, audit_probe: nn.Module) -> None:
    """The construction-time monitor must not be, or share parameters with, the audit probe."""
    if monitor is audit_probe:
        raise ValueError(
            "the construction-time monitor is the audit probe itself: paper B (§3) keeps the "
            "audit probe a separate fixed instrument; pass a copy (copy.deepcopy(probe))"
        )
    ptrs = {p.data_ptr() for p in audit_probe.parameters()}
    if any(p.data_ptr() in ptrs for p in monitor.parameters()):
        raise ValueError(
            "the construction-time monitor shares parameters with the audit probe: training "
            "it would move the audit probe; pass a copy (copy.deepcopy(probe))"
        )


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
        """App. B: a separate AdamW, lr ``monitor_lr`` (1e-4), decay ``monitor_weight_decay``."""
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

    def objective(
        self, tb: TrainBatch, logits: torch.Tensor, h: torch.Tensor, ref: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Eq. 1 on one micro-batch under the current monitor: ``(loss, terms, g)``."""
        s = self.s
        g = self.monitor(h)
        sft = sft_loss(logits, tb.lm.input_ids, tb.sft_mask)
        mon = monitor_term(g, tb.gate, s.target_p, over=s.monitor_over)
        positions = tb.lm.response_mask if s.kl_positions == "response" else None
        kl_mask = tb.lm.attention_mask if positions is None else predicting(positions)
        kl = token_kl(ref, logits, kl_mask)
        loss = total_loss(sft, mon, kl, s)
        return loss, {"sft": sft, "kl": kl, "total": loss}, g

    def bce_step(
        self, monitor: nn.Module, opt: torch.optim.Optimizer, feats: torch.Tensor, y: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """``monitor_steps_per_model_step`` BCE updates of ``monitor`` on detached features;
        the loss and logits before the first."""
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

    def record(
        self,
        phase: Phase,
        g: torch.Tensor,
        gate: torch.Tensor,
        monitor: str = CONSTRUCTION_MONITOR,
        **terms: float,
    ) -> None:
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
            monitor=monitor,
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

    # ------------------------------------------------------------ paper B's update (App. B)

    def paper_update(self) -> None:
        """One update of paper B's loop (App. B), over ``grad_accum`` micro-batches:

        1. forward pass: logits and the hidden-state means ``h`` (with their graph), and the
           detached reference's logits;
        2. Eq. 1 backpropagated to θ only — the monitor's φ frozen (``requires_grad=False``)
           for that graph, so no gradient reaches φ;
        3. ``sg[h]`` (detached) through the monitor, Eq. 2's BCE backpropagated to φ only —
           nothing reaches θ;
        4. after the last micro-batch the model optimiser, then the monitor optimiser, step
           once each: the same accumulation cadence, φ mutated only after every model
           backward of the update has completed.

        Both losses are divided by ``grad_accum``, so accumulated gradients are those of the
        mean over the update's micro-batches.
        """
        s = self.s
        self.opt.zero_grad(set_to_none=True)
        self.mon_opt.zero_grad(set_to_none=True)
        sums = {"sft": 0.0, "kl": 0.0, "total": 0.0, "monitor_bce": 0.0}
        gs, gates = [], []
        for tb in self.micro_batches():
            # (1) forward pass (and the detached reference's logits)
            with self.autocast():
                logits, h = forward_with_features(self.model, tb.lm)
                ref = self.ref_logits(tb.lm)
            # (2) Eq. 1 -> θ only
            with frozen(self.monitor):
                loss, terms, g = self.objective(tb, logits, h, ref)
            (loss / s.grad_accum).backward()
            # (3) Eq. 2 on the same batch's detached states -> φ only
            y = self.monitor_target("train", tb.unsafe, tb.gate)
            bce = monitor_bce(self.monitor(h.detach().float()), y)
            (bce / s.grad_accum).backward()
            for k, v in terms.items():
                sums[k] += float(v.detach()) / s.grad_accum
            sums["monitor_bce"] += float(bce.detach()) / s.grad_accum
            gs.append(g.detach())
            gates.append(tb.gate)
        # (4) both optimisers, same cadence
        if s.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
        self.opt.step()
        self.mon_opt.step()
        self.step += 1
        self.record("train", torch.cat(gs), torch.cat(gates), **sums)

    # ------------------------------------------------------------------ the staged option

    def monitor_only(
        self,
        phase: Phase,
        monitor: nn.Module,
        opt: torch.optim.Optimizer,
        name: str = CONSTRUCTION_MONITOR,
    ) -> None:
        """Staged warmup and refit: a BCE step of ``monitor`` on the current model's features."""
        feats, ys, gates = [], [], []
        for tb in self.micro_batches():
            with self.autocast():
                feats.append(layer_means(self.model, tb.lm.input_ids, tb.lm.attention_mask).float())
            ys.append(tb.unsafe)
            gates.append(tb.gate)
        self.step += 1
        target = self.monitor_target(phase, torch.cat(ys), torch.cat(gates))
        bce, g = self.bce_step(monitor, opt, torch.cat(feats), target)
        self.record(phase, g, torch.cat(gates), name, monitor_bce=bce)

    def model_update(self, phase: Phase, train_monitor: bool) -> None:
        """Staged joint and consolidate: one model update on Eq. 1 (the monitor frozen), then,
        in joint, ``monitor_steps_per_model_step`` BCE steps of the monitor on the same
        batches' detached features."""
        s = self.s
        self.opt.zero_grad(set_to_none=True)
        sums = {"sft": 0.0, "kl": 0.0, "total": 0.0}
        feats, gs, ys, gates = [], [], [], []
        with frozen(self.monitor):
            for tb in self.micro_batches():
                with self.autocast():
                    logits, h = forward_with_features(self.model, tb.lm)
                    ref = self.ref_logits(tb.lm)
                loss, terms, g = self.objective(tb, logits, h, ref)
                (loss / s.grad_accum).backward()
                for k, v in terms.items():
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
        self.record(phase, g_all, torch.cat(gates), monitor_bce=bce, **sums)

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
            optimizers={"model": self.opt, "monitor": self.mon_opt},
        )
        self.checkpoints.append(path)

    def restore(self, path: Path) -> None:
        """Continue a paper-schedule run from checkpoint ``path``: the trained weights (adapter
        or full model), the construction monitor, both optimisers' state, the update count,
        and the batch stream advanced past the batches already used (the same seed gives the
        same order), so the remaining updates are those an uninterrupted run would take."""
        state = json.loads((path / "state.json").read_text())
        if state.get("phase") != "train":
            raise ValueError(
                f"{path} was saved in phase {state.get('phase')!r}: resume continues "
                "schedule='paper' runs only"
            )
        saved = state.get("settings", {})
        differ = [k for k in _RESUME_MUST_MATCH if k in saved and saved[k] != _jsonable(self.s, k)]
        if differ:
            detail = ", ".join(f"{k} {saved[k]!r} != {_jsonable(self.s, k)!r}" for k in differ)
            raise ValueError(f"{path} was trained with other settings ({detail})")
        if not (path / OPTIMIZERS_FILE).exists():
            raise ValueError(f"{path} holds no optimiser state ({OPTIMIZERS_FILE}): cannot resume")
        if is_peft(self.model):
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(self.model, load_peft_weights(str(path), device="cpu"))
        else:
            from transformers import AutoModelForCausalLM

            saved_model = AutoModelForCausalLM.from_pretrained(str(path))
            self.model.load_state_dict(saved_model.state_dict())
        self.monitor.load_state_dict(
            torch.load(path / "monitor.pt", weights_only=True)["state_dict"]
        )
        opts = torch.load(path / OPTIMIZERS_FILE, weights_only=True)
        self.opt.load_state_dict(opts["model"])
        self.mon_opt.load_state_dict(opts["monitor"])
        self.step = int(state["step"])
        for _ in range(self.step * self.s.grad_accum):
            next(self.batches)
        self.checkpoints.append(path)


_RESUME_MUST_MATCH = (
    "seed",
    "batch_size",
    "grad_accum",
    "schedule",
    "composition",
    "lora",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "max_prompt_tokens",
    "max_response_tokens",
    "monitor_target",
)
"""Settings that decide the batch order or the parameters' shapes: a checkpoint trained with
others cannot be continued."""


def _jsonable(s: DissociationSettings, key: str) -> Any:
    v = getattr(s, key)
    return list(v) if isinstance(v, tuple) else v


def _validate(s: DissociationSettings) -> None:
    for name in ("batch_size", "grad_accum", "monitor_steps_per_model_step"):
        if getattr(s, name) < 1:
            raise ValueError(f"{name} must be >= 1")
    if s.schedule not in ("paper", "staged"):
        raise ValueError(f"schedule must be 'paper' or 'staged', not {s.schedule!r}")
    if s.composition not in ("paper", "all_gated", "as_given"):
        raise ValueError(
            f"composition must be 'paper', 'all_gated' or 'as_given', not {s.composition!r}"
        )
    if s.schedule == "paper":
        if s.monitor_steps_per_model_step != 1:
            raise ValueError(
                "schedule='paper' steps the monitor once per model update (paper B App. B: "
                "'on the same gradient-accumulation cadence'); monitor_steps_per_model_step "
                f"= {s.monitor_steps_per_model_step} needs schedule='staged'"
            )
        if s.epochs is None and s.updates < 0:
            raise ValueError("updates must be >= 0")
        if s.epochs is not None and s.epochs <= 0:
            raise ValueError("epochs must be > 0")


def _anchor_prompts(s: DissociationSettings, anchors: Sequence[str] | None) -> list[str]:
    out = list(anchors or [])
    if s.anchor_prompts is not None:
        from silentwatch.offline.audit.data import load_prompts

        out += load_prompts(s.anchor_prompts, column=s.anchor_column, limit=s.anchor_limit)
    return out


def _training_rows(
    model: nn.Module,
    tokenizer: Any,
    data: DissociationData,
    s: DissociationSettings,
    anchors: Sequence[str] | None,
) -> DissociationData:
    """``compose(data, s.composition, anchor rows)``; anchor prompts answered by the base."""
    if s.composition == "all_gated":
        return compose(data, "all_gated")
    prompts = _anchor_prompts(s, anchors)
    anchor_data = None
    if prompts:
        model.eval()
        off = model.disable_adapter() if is_peft(model) else nullcontext()  # type: ignore[operator]
        with off:
            anchor_data = anchor_rows(
                model,
                tokenizer,
                prompts,
                max_new_tokens=s.max_response_tokens,
                max_prompt_tokens=s.max_prompt_tokens,
                batch_size=s.anchor_batch_size,
            )
    return compose(data, s.composition, anchor_data)


def dissociate(
    model: nn.Module,
    tokenizer: Any,
    data: DissociationData,
    monitor: nn.Module,
    settings: DissociationSettings | None = None,
    progress: Reporter | None = None,
    *,
    anchors: Sequence[str] | None = None,
    audit_probe: nn.Module | None = None,
    resume: str | Path | None = None,
) -> DissociationResult:
    """Train a dissociated model (paper B §3): behaviour held by SFT + KL to the reference,
    the representation steered so that a co-trained monitor reads ``p*`` on harmful prompts.

    The model minimises Eq. 1, ``L = 0.05·SFT + 0.1·E[b·(g(h) − logit 0.75)²] +
    0.3·KL(ref ‖ θ)`` (:func:`total_loss`); the monitor ``g`` only ever learns from Eq. 2,
    ``BCE(g(sg[h]), b)`` on detached features (``monitor_target="unsafe"``: the response
    label), never from ``L``.

    **Rows** (``settings.composition``, :func:`compose`): by default paper B's — the harmful
    rows of ``data`` with a safe response (b = 1) and benign anchors (b = 0): ``data``'s rows
    with ``harmful=False``, plus ``anchors`` and the prompts of ``settings.anchor_prompts``,
    answered greedily by the unmodified base model (App. A.4, :func:`anchor_rows`) before any
    update. No anchor at all raises :class:`ValueError`.

    **Schedule** (``settings.schedule``): by default paper B's loop, each update the four
    phases of App. B (``_Run.paper_update``): forward; Eq. 1 → θ only; Eq. 2 on ``sg[h]`` →
    φ only; both optimisers step every ``grad_accum`` micro-batches.
    ``settings.paper_updates(rows)`` updates, recorded with phase ``"train"``. The
    ``"staged"`` option (not the paper) runs, each length configurable and 0 skipping it:

    1. ``warmup`` — monitor-only BCE steps on the base model's features;
    2. ``joint`` — one model update on ``L`` (monitor frozen), then
       ``monitor_steps_per_model_step`` BCE steps on the same batches' detached features;
    3. ``consolidate`` — model-only updates on ``L`` against the frozen monitor;
    4. ``refit`` — a diagnostic: BCE steps, on the unsafe label, of a freshly initialised copy
       of the monitor (``refit_fresh=True``) or of the co-trained one, on the final model's
       features. It is *not* the audit probe.

    **Instruments.** ``monitor`` is the construction-time monitor (trained in place); the
    audit's probe is a separate fixed instrument (§3) — pass it as ``audit_probe`` to have
    :func:`dissociate` refuse a monitor that is, or shares parameters with, it, and verify
    that it is unchanged afterwards. :meth:`DissociationResult.instruments` says which is
    which.

    The model trains with dropout off (``eval()`` mode) so that the KL is exactly 0 at the
    start. With ``settings.lora`` the model is wrapped with :func:`wrap_lora` (in place: its
    modules get adapters; pass an already-wrapped peft model to reuse its adapter) and the
    reference logits come from the same model under ``disable_adapter()``; for full
    fine-tuning the reference is a frozen deep copy. Every path runs on CPU.

    Parameters
    ----------
    model : a causal LM (on its device); trained in place
    tokenizer : its tokenizer (left padding)
    data : :class:`DissociationData`, composed per ``settings.composition``
    monitor : the construction-time monitor: maps ``(b, L, d)`` layer means to ``(b,)``
        logits, e.g. ``LatentMonitor``; moved to the model's device in float32 and trained in
        place
    settings : :class:`DissociationSettings`
    progress : optional :class:`~offline.progress.Reporter`
    anchors : harmless prompts for benign anchors (answered by the base model)
    audit_probe : the audit's fixed probe, only to check that it stays separate
    resume : a checkpoint folder of an earlier run with the same settings to continue from
        (``settings.resume`` picks the newest in ``checkpoint_dir``); the run then takes the
        remaining updates only, and the result's ``records`` hold those

    Returns
    -------
    DissociationResult

    Raises
    ------
    ValueError
        bad settings, no benign anchor under ``composition="paper"``, or a monitor that is
        (or shares parameters with) ``audit_probe``.
    """
    s = settings or DissociationSettings()
    rep = progress or Reporter(enabled=False)
    _validate(s)
    probe_state = None
    if audit_probe is not None:
        _check_separate(monitor, audit_probe)
        probe_state = _state(audit_probe)
    torch.manual_seed(s.seed)
    rows = _training_rows(model, tokenizer, data, s, anchors)
    n_h = sum(map(bool, rows.harmful))
    rep.step(f"dissociation rows ({s.composition}): {n_h} gated b = 1, {len(rows) - n_h} b = 0")
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
    for p in monitor.parameters():
        p.requires_grad_(True)
    batches = rows.batches(
        tokenizer,
        s.batch_size,
        seed=s.seed,
        max_prompt_tokens=s.max_prompt_tokens,
        max_response_tokens=s.max_response_tokens,
    )
    run = _Run(model, ref, monitor, batches, s, compute)
    if resume is None and s.resume and s.checkpoint_dir is not None:
        resume = latest_checkpoint(s.checkpoint_dir)
    if resume is not None:
        if s.schedule != "paper":
            raise ValueError("resume continues schedule='paper' runs only")
        run.restore(Path(resume))
        rep.step(f"dissociation resumed from {resume} (update {run.step})")
    refit: nn.Module | None = None
    if s.schedule == "paper":
        n = s.paper_updates(len(rows))
        rep.step(f"dissociation (paper B's four-phase update): {n} updates")
        with rep.bar("train", max(n - run.step, 0)) as advance:
            for _ in range(max(n - run.step, 0)):
                run.paper_update()
                run.maybe_checkpoint("train", last=run.step == n)
                advance(1)
        if run.records:
            _report(rep, "train", run.records[-1])
    else:
        refit = _staged(run, monitor, rep)
    checked = False
    if audit_probe is not None and probe_state is not None:
        after = _state(audit_probe)
        if any(not torch.equal(after[k], v) for k, v in probe_state.items()):
            raise RuntimeError("the audit probe changed during dissociation")
        checked = True
    return DissociationResult(
        run.model, monitor, refit, run.records, run.checkpoints, s, rows, checked
    )


def _report(rep: Reporter, phase: str, last: StepRecord) -> None:
    rep.step(
        f"{phase} done: monitor term {last.monitor_term:.4f}, KL {last.kl:.4f}, "
        f"BCE {last.monitor_bce:.4f}, σ(g) harmful {last.p_harmful:.3f} / "
        f"benign {last.p_benign:.3f}"
    )


def _staged(run: _Run, monitor: nn.Module, rep: Reporter) -> nn.Module | None:
    """The ``schedule="staged"`` option: warmup, joint, consolidate, refit."""
    s = run.s
    refit: nn.Module | None = None
    refit_opt = run.mon_opt
    total = sum(s.steps(p) for p in STAGED_PHASES)
    for phase in STAGED_PHASES:
        n = s.steps(phase)
        if n <= 0:
            continue
        rep.step(f"dissociation phase {phase} (staged option): {n} updates")
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
                    run.monitor_only(phase, refit, refit_opt, REFIT_MONITOR)
                else:
                    run.model_update(phase, train_monitor=phase == "joint")
                run.maybe_checkpoint(phase, last=run.step == total)
                advance(1)
        _report(rep, phase, run.records[-1])
    return refit
