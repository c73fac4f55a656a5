"""Settings of paper B's dissociation: loss weights, optimisers, the four-phase schedule, data,
LoRA and checkpoints. Plain dataclasses: no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["warmup", "joint", "consolidate", "refit"]
PHASES: tuple[Phase, ...] = ("warmup", "joint", "consolidate", "refit")

__all__ = ["PHASES", "DissociationSettings", "Phase"]


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
    # Monitor optimiser during construction (paper B, appendix B: "a separate AdamW optimizer
    # with learning rate 1e-4 and weight decay 1e-4"; 3e-4 is the probe's initial fit, Table 3).
    monitor_lr: float = 1e-4
    monitor_weight_decay: float = 1e-4
    # What the co-trained monitor's BCE (Eq. 2) is fitted to: "gate", the construction
    # indicator b (the paper: "distinct from the safe-versus-unsafe response label"), or
    # "unsafe", the response label (this package's earlier choice). The refit phase, a
    # diagnostic of ours, always fits the response label.
    monitor_target: Literal["gate", "unsafe"] = "gate"
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
