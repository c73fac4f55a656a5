"""Paper B's dissociated model: fine-tune a chat model so that its behaviour stays put while a
latent monitor reading its hidden states is pushed to a chosen belief on harmful prompts.

Paper B ("When Behavioral Safety Evaluation Fails: A Representation-Level Perspective",
arXiv 2606.08044) trains the model on

    L = w_sft · SFT + w_mon · E[b · (g(h) − logit(p*))²] + w_kl · KL(p_ref ‖ p_θ)

with ``w = (0.05, 0.1, 0.3)``, ``p* = 0.75``, ``h`` the ``L × d`` stack of attention-masked
per-layer mean hidden states (:func:`offline.hooks.layer_means`), ``g`` the latent monitor
(:class:`offline.audit.monitor.LatentMonitor`), ``b`` = 1 on harmful prompts and 0 otherwise,
and the KL token-wise and forward, the reference model detached. The monitor is co-trained by
alternating BCE steps on detached hidden states of the same batch with their unsafe labels.

The loss terms are pure functions (:func:`sft_loss`, :func:`monitor_term`, :func:`token_kl`,
:func:`total_loss`, :func:`monitor_bce`); :func:`dissociate` runs the schedule.

Example
-------
>>> import torch
>>> logits = torch.zeros(1, 3, 4)  # uniform over 4 tokens
>>> ids = torch.tensor([[0, 1, 2]])
>>> round(float(sft_loss(logits, ids, torch.tensor([[False, True, True]]))), 4)  # ln 4
1.3863
>>> g = torch.tensor([float(torch.log(torch.tensor(3.0))), 0.0])  # logit(0.75) = ln 3
>>> float(monitor_term(g, torch.tensor([1.0, 0.0])))
0.0
>>> float(token_kl(logits, logits, torch.ones(1, 3)))
0.0
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from silentwatch.offline.embedding import TORCH_DTYPES, resolve_dtype
from silentwatch.offline.hooks import capture, layer_means, masked_mean, num_layers, unwrap
from silentwatch.offline.lm import LMBatch, encode
from silentwatch.offline.progress import Reporter
from torch import nn

Phase = Literal["warmup", "joint", "consolidate", "refit"]
PHASES: tuple[Phase, ...] = ("warmup", "joint", "consolidate", "refit")

__all__ = [
    "DissociationData",
    "DissociationResult",
    "DissociationSettings",
    "StepRecord",
    "TrainBatch",
    "dissociate",
    "forward_with_features",
    "load_checkpoint",
    "monitor_bce",
    "monitor_term",
    "sft_loss",
    "token_kl",
    "total_loss",
    "wrap_lora",
]


# --------------------------------------------------------------------------- loss terms


def sft_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Mean next-token negative log-likelihood of the response tokens.

    ``SFT = −(1/N) Σ_{b,t : m[b,t]} log p_θ(x[b,t] | x[b,<t])``, with ``m`` the response mask
    and ``N = Σ m`` (positions ``t ≥ 1``; token ``t`` is predicted by logits at ``t − 1``).
    Token mean over the whole batch; 0 when no response token is present.

    Parameters
    ----------
    logits : (b, s, V) tensor
    input_ids : (b, s) long tensor
    response_mask : (b, s) tensor, True / 1 on response tokens

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 2)
    >>> round(float(sft_loss(logits, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))), 4)
    0.6931
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m = response_mask[:, 1:].to(nll.dtype)
    return (nll * m).sum() / m.sum().clamp_min(1.0)


def logit(p: float) -> float:
    """``log(p / (1 − p))``; ``logit(0.75) = ln 3``."""
    return math.log(p / (1.0 - p))


def monitor_term(
    monitor_logits: torch.Tensor,
    gate_b: torch.Tensor,
    target_p: float = 0.75,
    *,
    over: Literal["all", "gated"] = "all",
) -> torch.Tensor:
    """Paper B's monitor term ``E[b · (g(h) − logit(p*))²]``.

    ``over="all"`` (default) averages over **every row** of the batch,
    ``(1/n) Σ_i b_i (g_i − logit p*)²``: the formula's expectation is over the data, with
    ``b`` a multiplicative gate, so the term's effective weight scales with the share of
    harmful prompts, and per-micro-batch means add up exactly under gradient accumulation of
    equal-size batches. ``over="gated"`` divides by ``Σ b`` instead (mean over harmful rows
    only; 0 when there are none), which keeps the weight independent of the mix.

    Parameters
    ----------
    monitor_logits : (b,) tensor, the monitor's logits ``g(h)``
    gate_b : (b,) tensor, 1 for harmful prompts, 0 otherwise (fractional values are allowed)
    target_p : the monitor probability the model is pushed towards on gated rows

    Examples
    --------
    >>> g, b = torch.tensor([0.0, 5.0]), torch.tensor([1.0, 0.0])
    >>> round(float(monitor_term(g, b, 0.5)), 4), round(float(monitor_term(g, b, 0.75)), 4)
    (0.0, 0.6035)
    """
    b = gate_b.to(monitor_logits.device, torch.float32)
    sq = b * (monitor_logits.float() - logit(target_p)) ** 2
    if over == "all":
        return sq.mean()
    if over == "gated":
        return sq.sum() / b.sum().clamp_min(1.0)
    raise ValueError(f"over must be 'all' or 'gated', not {over!r}")


def token_kl(ref_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-wise forward KL from the reference, averaged over masked positions.

    ``KL = (1/N) Σ_{b,t : m[b,t]} Σ_v p_ref(v) (log p_ref(v) − log p_θ(v))``, ``N = Σ m``;
    ``ref_logits`` is detached (no gradient reaches the reference). Computed in float32.

    Examples
    --------
    >>> ref, new = torch.tensor([[[0.0, 0.0]]]), torch.tensor([[[0.0, math.log(3.0)]]])
    >>> round(float(token_kl(ref, new, torch.ones(1, 1))), 4)  # 0.5 ln 0.5/0.25 + 0.5 ln 0.5/0.75
    0.1438
    """
    logp_ref = torch.log_softmax(ref_logits.detach().float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def monitor_bce(monitor_logits: torch.Tensor, unsafe: torch.Tensor) -> torch.Tensor:
    """The monitor's loss: mean binary cross-entropy of ``σ(g)`` against the unsafe labels,
    ``−(1/n) Σ [y log σ(g) + (1 − y) log(1 − σ(g))]``.

    Examples
    --------
    >>> round(float(monitor_bce(torch.zeros(2), torch.tensor([0.0, 1.0]))), 4)
    0.6931
    """
    return F.binary_cross_entropy_with_logits(
        monitor_logits.float(), unsafe.to(monitor_logits.device, torch.float32)
    )


def total_loss(
    sft: torch.Tensor,
    monitor: torch.Tensor,
    kl: torch.Tensor,
    settings: DissociationSettings | None = None,
) -> torch.Tensor:
    """``w_sft · SFT + w_mon · monitor + w_kl · KL`` (paper B: 0.05, 0.1, 0.3).

    Examples
    --------
    >>> round(float(total_loss(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(1.0))), 4)
    0.45
    """
    s = settings or DissociationSettings()
    return s.sft_weight * sft + s.monitor_weight * monitor + s.kl_weight * kl


def predicting(mask: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a masked token: ``mask`` shifted left by one."""
    out = torch.zeros_like(mask)
    out[:, :-1] = mask[:, 1:]
    return out


# ----------------------------------------------------------------------------- settings


@dataclass
class DissociationSettings:
    """Everything :func:`dissociate` needs; defaults follow paper B where it gives a value.

    Phase lengths count optimiser updates (each consumes ``grad_accum`` micro-batches of
    ``batch_size`` rows); 0 skips a phase. ``lr=None`` means 1e-4 with LoRA, 1e-5 for full
    fine-tuning. ``dtype="auto"`` computes in bfloat16 on CUDA, float32 elsewhere: with LoRA
    the frozen base is cast to it (peft keeps adapters in float32); full fine-tuning keeps
    float32 master weights and runs forward passes under autocast.
    """

    # Loss (paper B).
    sft_weight: float = 0.05
    monitor_weight: float = 0.1
    kl_weight: float = 0.3
    target_p: float = 0.75
    monitor_over: Literal["all", "gated"] = "all"
    # "all": KL at every real token; "response": only at positions predicting a response token.
    kl_positions: Literal["all", "response"] = "all"
    # Model optimiser.
    lr: float | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    # Monitor optimiser (paper B's probe: AdamW, lr 3e-4, weight decay 1e-4).
    monitor_lr: float = 3e-4
    monitor_weight_decay: float = 1e-4
    monitor_steps_per_model_step: int = 1
    # Schedule (a reconstruction, see dissociate()).
    warmup_steps: int = 50
    joint_steps: int = 200
    consolidate_steps: int = 50
    refit_steps: int = 100
    refit_fresh: bool = True
    # Data.
    batch_size: int = 4
    grad_accum: int = 1
    max_prompt_tokens: int = 256
    max_response_tokens: int = 64
    # Full fine-tune or LoRA.
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] | None = None  # None: peft's default per architecture
    dtype: str = "auto"
    # Checkpoints: every N updates and after the last one (0 = never); needs checkpoint_dir.
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    seed: int = 0

    def model_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.lora else 1e-5

    def steps(self, phase: Phase) -> int:
        return int(getattr(self, f"{phase}_steps"))


# --------------------------------------------------------------------------------- data


@dataclass
class TrainBatch:
    """One micro-batch: tokens and masks, unsafe labels (monitor BCE), harmful-prompt gate ``b``
    (monitor term), and the response mask restricted to rows that are imitated (SFT)."""

    lm: LMBatch
    unsafe: torch.Tensor  # (b,) float
    gate: torch.Tensor  # (b,) float
    sft_mask: torch.Tensor  # (b, s) bool

    def to(self, device: torch.device | str) -> TrainBatch:
        return TrainBatch(
            self.lm.to(device),
            self.unsafe.to(device),
            self.gate.to(device),
            self.sft_mask.to(device),
        )


@dataclass
class DissociationData:
    """Training rows: (prompt, response, unsafe label, harmful-prompt gate).

    ``imitate`` (default: every row) marks the rows whose response is an SFT target; rows
    with ``imitate=False`` still feed the monitor (BCE, monitor term) and the KL, so e.g.
    compliant answers to harmful prompts can teach the monitor without being imitated.
    """

    prompts: list[str]
    responses: list[str]
    unsafe: list[bool]
    harmful: list[bool]
    imitate: list[bool] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        cols = {"responses": self.responses, "unsafe": self.unsafe, "harmful": self.harmful}
        if self.imitate is not None:
            cols["imitate"] = self.imitate
        for name, col in cols.items():
            if len(col) != n:
                raise ValueError(f"{n} prompts but {len(col)} {name}")
        if n == 0:
            raise ValueError("no training rows")

    def __len__(self) -> int:
        return len(self.prompts)

    def batches(
        self,
        tokenizer: Any,
        batch_size: int,
        *,
        seed: int = 0,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 64,
    ) -> Iterator[TrainBatch]:
        """Endless stream of ``batch_size``-row batches: a fresh permutation per epoch, epochs
        run into each other so every batch is full."""
        rng = np.random.default_rng(seed)
        order: list[int] = []
        imitate = self.imitate if self.imitate is not None else [True] * len(self)
        while True:
            while len(order) < batch_size:
                order.extend(rng.permutation(len(self)).tolist())
            idx, order = order[:batch_size], order[batch_size:]
            lm = encode(
                tokenizer,
                [self.prompts[i] for i in idx],
                [self.responses[i] for i in idx],
                max_prompt_tokens=max_prompt_tokens,
                max_response_tokens=max_response_tokens,
            )
            rows = torch.tensor([bool(imitate[i]) for i in idx]).unsqueeze(1)
            yield TrainBatch(
                lm,
                torch.tensor([float(self.unsafe[i]) for i in idx]),
                torch.tensor([float(self.harmful[i]) for i in idx]),
                lm.response_mask & rows,
            )


# ------------------------------------------------------------------------------ results


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


# ------------------------------------------------------------------------ model helpers


def forward_with_features(model: nn.Module, batch: LMBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass giving the logits ``(b, s, V)`` and, with their graph, the per-layer
    attention-masked means ``(b, L, d)`` (what :func:`offline.hooks.layer_means` computes with
    ``grad=True``, without a second forward pass)."""
    sites = [f"layer:{i}" for i in range(num_layers(model))]
    with capture(model, sites, detach=False) as seen:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    mask = batch.attention_mask
    return out.logits, torch.stack([masked_mean(seen[s], mask) for s in sites], dim=1)


def wrap_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] | None = None,
) -> nn.Module:
    """``peft.get_peft_model`` with a causal-LM LoRA config. The adapters are injected into
    ``model``'s own modules (it changes in place); ``B = 0`` at init, so the wrapped model
    computes exactly what ``model`` did."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a peft wrapper (it has ``disable_adapter()``)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` do not require grad inside the block (gradients still flow
    through it to its inputs)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


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


# ----------------------------------------------------------------------------- training


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

    def monitor_only(self, phase: Phase, monitor: nn.Module, opt: torch.optim.Optimizer) -> None:
        """Phases 1 and 4: a BCE step of ``monitor`` on the current model's features."""
        feats, ys, gates = [], [], []
        for tb in self.micro_batches():
            with self.autocast():
                feats.append(layer_means(self.model, tb.lm.input_ids, tb.lm.attention_mask).float())
            ys.append(tb.unsafe)
            gates.append(tb.gate)
        self.step += 1
        bce, g = self.bce_step(monitor, opt, torch.cat(feats), torch.cat(ys))
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
        g_all, y_all = torch.cat(gs), torch.cat(ys)
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


# -------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    path: Path,
    model: nn.Module,
    monitor: nn.Module,
    *,
    step: int,
    phase: str,
    settings: DissociationSettings,
) -> Path:
    """Write ``path/``: the adapter (peft ``save_pretrained``) or the full model
    (transformers ``save_pretrained``), ``monitor.pt`` (state dict + constructor arguments)
    and ``state.json`` (step, phase, settings)."""
    path.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(str(path))  # type: ignore[operator]
    else:
        unwrap(model).save_pretrained(str(path))  # type: ignore[operator]
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in monitor.state_dict().items()},
            "layers": getattr(monitor, "layers", None),
            "dim": getattr(monitor, "dim", None),
        },
        path / "monitor.pt",
    )
    state = {"step": step, "phase": phase, "settings": asdict(settings)}
    (path / "state.json").write_text(json.dumps(state, indent=2, default=str))
    return path


def load_checkpoint(
    path: str | Path, base_model: nn.Module | None = None
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """``(model, monitor, state)`` from a :func:`save_checkpoint` folder.

    An adapter checkpoint needs ``base_model`` (the model before LoRA wrapping, e.g. freshly
    loaded); a full checkpoint loads with ``AutoModelForCausalLM.from_pretrained``. The
    monitor is rebuilt as a ``LatentMonitor`` from the saved state.
    """
    from silentwatch.offline.audit.monitor import LatentMonitor

    path = Path(path)
    if (path / "adapter_config.json").exists():
        if base_model is None:
            raise ValueError(f"{path} holds a LoRA adapter: pass the base model")
        from peft import PeftModel

        model: nn.Module = PeftModel.from_pretrained(base_model, str(path))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path))
    blob = torch.load(path / "monitor.pt", weights_only=True)
    sd = blob["state_dict"]
    monitor = LatentMonitor(blob["layers"], blob["dim"], hidden=sd["proj.weight"].shape[0])
    monitor.load_state_dict(sd)
    state = json.loads((path / "state.json").read_text())
    return model.eval(), monitor, state
