"""Settings of paper B's dissociation: loss weights, optimisers, the training schedule, the
training-row composition, LoRA and checkpoints. Plain dataclasses: no torch.

Every field carries a docstring; those that follow paper B cite where ("§3" is the section
"The Existence of Dissociated Model", "App. B" the appendix "Training details", "Eq. 1" the
model's objective, "Eq. 2" the co-trained monitor's BCE). Fields marked *option* are not in
the paper (a deviation kept selectable); the defaults follow the paper where it is explicit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Phase = Literal["train", "warmup", "joint", "consolidate", "refit"]
"""What a :class:`~.trainer.StepRecord` row is: ``"train"`` is one update of paper B's
four-step loop (the default ``schedule="paper"``); the other four are the stages of the
``schedule="staged"`` option."""

STAGED_PHASES: tuple[Phase, ...] = ("warmup", "joint", "consolidate", "refit")
PHASES = STAGED_PHASES  # the earlier name
Schedule = Literal["paper", "staged"]
Composition = Literal["paper", "all_gated", "as_given"]

__all__ = [
    "PHASES",
    "STAGED_PHASES",
    "Composition",
    "DissociationSettings",
    "Phase",
    "Schedule",
]


@dataclass
class DissociationSettings:
    """Everything :func:`~.trainer.dissociate` needs; defaults follow paper B where it gives a
    value.

    Step counts are optimiser updates of the model, each over ``grad_accum`` micro-batches of
    ``batch_size`` rows. ``lr=None`` means 1e-4 with LoRA, 1e-5 for full fine-tuning.
    ``dtype="auto"`` computes in bfloat16 on CUDA, float32 elsewhere: with LoRA the frozen
    base is cast to it (peft keeps adapters in float32); full fine-tuning keeps float32 master
    weights and runs forward passes under autocast.
    """

    # ---------------------------------------------------------------- loss (§3, Eq. 1)
    sft_weight: float = 0.05
    """λ_SFT of Eq. 1 (App. B, "Loss coefficients and target": 0.05)."""
    monitor_weight: float = 0.1
    """λ_mon of Eq. 1 (App. B: 0.1)."""
    kl_weight: float = 0.3
    """λ_KL of Eq. 1 (App. B: 0.3)."""
    target_p: float = 0.75
    """τ: the monitor term pulls g(h) to ℓ* = logit(τ) on gated rows (§3, App. B: 0.75)."""
    monitor_over: Literal["all", "gated"] = "all"
    """How Eq. 1's E[b·(g − ℓ*)²] is averaged: "all" rows (the expectation over the data, as
    written), or *option* "gated" (mean over rows with b = 1 only)."""
    kl_positions: Literal["all", "response"] = "all"
    """Where the token-wise KL is taken: "all" real tokens (App. B, "KL implementation note":
    "at every position t"), or *option* "response" (positions predicting a response token)."""

    # ------------------------------------------------------------------- model optimiser
    lr: float | None = None
    """The model's AdamW learning rate; None: 1e-4 with LoRA, 1e-5 full. *Deviation*: App. B,
    Table 4 uses 2e-5 with warmup ratio 0.1 and linear decay; here the rate is constant."""
    weight_decay: float = 0.0
    """The model optimiser's weight decay (App. B gives none)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip of the model's update; None: no clipping (App. B gives none)."""

    # ---------------------------------------------------- construction-time monitor (Eq. 2)
    monitor_lr: float = 1e-4
    """The co-trained monitor's AdamW learning rate (App. B, "Monitor update during
    dissociated-model training": "a separate AdamW optimizer with learning rate 1e-4"; 3e-4 is
    the initial probe fit of Table 3)."""
    monitor_weight_decay: float = 1e-4
    """The co-trained monitor's AdamW weight decay (App. B: 1e-4)."""
    monitor_target: Literal["gate", "unsafe"] = "gate"
    """The target of Eq. 2's BCE: "gate", the construction indicator b (§3: "distinct from the
    safe-versus-unsafe response label"; App. B), or *option* "unsafe", the response label (this
    package's earlier choice). The staged schedule's refit diagnostic always fits "unsafe"."""
    monitor_steps_per_model_step: int = 1
    """BCE steps of the monitor per model update. The paper's loop takes exactly one (App. B:
    the monitor optimiser "steps on the same gradient-accumulation cadence as the model
    optimizer"), so ``schedule="paper"`` requires 1; larger values are a ``staged`` option."""

    # ------------------------------------------------------------------------- schedule
    schedule: Schedule = "paper"
    """"paper" (default): App. B's four phases *inside every update* — (1) one forward pass
    giving logits and hidden states; (2) Eq. 1 backpropagated to θ only, the monitor's φ held
    fixed; (3) the same hidden states, detached, through the monitor, Eq. 2's BCE
    backpropagated to φ only; (4) after ``grad_accum`` micro-batches the model optimiser and
    the monitor optimiser step together. Runs ``updates`` (or ``epochs``) updates.
    *Option* "staged": this package's earlier reading, separate warmup / joint / consolidate /
    refit stages of ``warmup_steps`` ... ``refit_steps`` updates (not the paper)."""
    updates: int = 250
    """Model updates of the "paper" schedule (ignored when ``epochs`` is set, and by
    "staged"). 250 = the staged default's model updates (200 joint + 50 consolidate)."""
    epochs: float | None = None
    """Train the "paper" schedule for this many passes over the training rows instead of
    ``updates`` (App. B, Table 4: 3 epochs); ``ceil(epochs · rows / (batch_size ·
    grad_accum))`` updates."""
    warmup_steps: int = 50
    """*Staged option*: monitor-only BCE updates on the base model's features."""
    joint_steps: int = 200
    """*Staged option*: model update on Eq. 1, then a monitor BCE update on the same batches."""
    consolidate_steps: int = 50
    """*Staged option*: model-only updates against the frozen monitor."""
    refit_steps: int = 100
    """*Staged option*: a diagnostic monitor fitted to the unsafe label on the final model's
    features. Not the audit probe (the audit fits its own fixed probe on the base model)."""
    refit_fresh: bool = True
    """*Staged option*: the refit starts from a freshly initialised copy of the monitor."""

    # ----------------------------------------------------------------------------- data
    composition: Composition = "paper"
    """Which training rows (p, y, b) :func:`~.trainer.dissociate` builds from its data (§3,
    "Dissociated model construction"; App. A.4, A.7). "paper" (default): harmful prompts with
    their *safe* response y₊, b = 1, plus benign anchors — harmless prompts with the
    unmodified base model's greedy response — b = 0; rows with unsafe responses are dropped.
    Anchors come from rows of the data with ``harmful=False``, from ``anchor_prompts`` (a
    file) or from ``dissociate(anchors=...)``; none at all is an error. *Option*
    "all_gated": the earlier rows — every row gated b = 1, unsafe-response rows kept (they feed
    the monitor and the KL, not the SFT), no anchors. *Option* "as_given": the rows exactly as
    passed."""
    anchor_prompts: str | None = None
    """A file of harmless prompts for the benign anchors (App. A.4), read like
    ``data.harmless_prompts``: a JSON list of objects (refusal_direction's
    ``harmless_train.json``), JSONL, CSV/TSV, parquet or a JSON list of strings. Keep it
    disjoint from the prompts the audit evaluates (App. A.4 splits 90 % / 10 %): use the
    ``harmless_train`` split here when ``harmless_val`` measures refusal."""
    anchor_column: str = "instruction"
    """The prompt column of ``anchor_prompts``."""
    anchor_limit: int | None = None
    """Read at most this many anchor prompts (None: all)."""
    anchor_batch_size: int = 8
    """Prompts per generate() call when the base model answers the anchor prompts."""

    batch_size: int = 4
    """Rows per micro-batch (App. B, Table 4: per-device micro-batch 2)."""
    grad_accum: int = 1
    """Micro-batches per update, for the model and (App. B) the monitor alike (Table 4: 8)."""
    max_prompt_tokens: int = 256
    """Prompt tokens kept (from the left)."""
    max_response_tokens: int = 64
    """Response tokens kept; also the cap of the anchors' generated responses (App. A.4: "the
    same sequence-length cap used during training")."""

    # ------------------------------------------------------------------ model / precision
    lora: bool = True
    """LoRA adapters (*option*, the default here for CPU budgets); False: full fine-tuning
    (App. B fine-tunes the full model)."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_target_modules: tuple[str, ...] | None = None
    """Modules wrapped with LoRA; None: peft's default per architecture."""
    dtype: str = "auto"
    """Compute dtype: "auto" (bfloat16 on CUDA as App. B, float32 elsewhere), or a name."""

    # ------------------------------------------------------------------------ checkpoints
    checkpoint_every: int = 0
    """Save every N updates and after the last one (0 = never); needs ``checkpoint_dir``."""
    checkpoint_dir: str | None = None
    """Where checkpoints go (``step-NNNNNN/`` folders)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in ``checkpoint_dir`` (weights, monitor,
    both optimisers' state, the batch order), so an interrupted run rerun with the same
    settings ends where an uninterrupted one would; no checkpoint there: start afresh.
    ``schedule="paper"`` only."""
    seed: int = 0
    """Seed of batch order and initialisation."""

    def model_lr(self) -> float:
        """The model's learning rate: ``lr``, else 1e-4 with LoRA and 1e-5 without."""
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.lora else 1e-5

    def steps(self, phase: Phase) -> int:
        """Updates of a staged phase (``warmup_steps`` ...); "train" has :meth:`paper_updates`."""
        if phase == "train":
            raise ValueError("the paper schedule's length is paper_updates(rows)")
        return int(getattr(self, f"{phase}_steps"))

    def paper_updates(self, rows: int) -> int:
        """Model updates of the "paper" schedule over ``rows`` training rows: ``updates``, or
        ``ceil(epochs · rows / (batch_size · grad_accum))`` when ``epochs`` is set.

        Examples
        --------
        >>> DissociationSettings(updates=7).paper_updates(100)
        7
        >>> DissociationSettings(epochs=3, batch_size=2, grad_accum=8).paper_updates(100)
        19
        """
        if self.epochs is None:
            return int(self.updates)
        return max(1, math.ceil(self.epochs * rows / (self.batch_size * self.grad_accum)))
