"""Paper B's dissociated model: fine-tune a chat model so that its behaviour stays put while a
latent monitor reading its hidden states is pushed to a chosen belief on harmful prompts.

Paper B ("When Behavioral Safety Evaluation Fails: A Representation-Level Perspective",
arXiv 2606.08044) trains the model on

    L = w_sft · SFT + w_mon · E[b · (g(h) − logit(p*))²] + w_kl · KL(p_ref ‖ p_θ)

with ``w = (0.05, 0.1, 0.3)``, ``p* = 0.75``, ``h`` the ``L × d`` stack of attention-masked
per-layer mean hidden states (:func:`offline.hooks.layer_means`), ``g`` the latent monitor
(:class:`offline.audit.monitor.LatentMonitor`), ``b`` = 1 on harmful prompts and 0 otherwise,
and the KL token-wise and forward, the reference model detached. The monitor is co-trained by
BCE steps on detached hidden states of the same batch, fitted to the gate ``b`` (paper B,
Eq. 2; ``monitor_target="unsafe"`` fits the response label instead), with its own AdamW at
lr 1e-4 (appendix B).

Defaults follow the paper where it is explicit: every update is appendix B's four phases
(forward; Eq. 1 → model only; Eq. 2 on detached states → monitor only; both optimisers step
on the same accumulation cadence), and the rows are harmful prompts with safe responses
(``b = 1``) plus benign anchors answered by the base model (``b = 0``). The earlier staged
schedule (``schedule="staged"``) and all-gated rows (``composition="all_gated"``) remain
options. The co-trained *construction-time monitor* is not the audit's probe (§3: "a
separate fixed instrument").

The loss terms are pure functions (:func:`sft_loss`, :func:`monitor_term`, :func:`token_kl`,
:func:`total_loss`, :func:`monitor_bce`); :func:`dissociate` runs the training.

Modules: :mod:`~.settings` (:class:`DissociationSettings`), :mod:`~.losses` (the loss terms,
pure functions), :mod:`~.lora` (peft wrapping), :mod:`~.data` (training rows, their
composition, anchors, micro-batches), :mod:`~.trainer` (:func:`dissociate`) and
:mod:`~.checkpoints` (save / load); this package re-exports their public names.
"""

from __future__ import annotations

from silentwatch.offline.audit.dissociation.checkpoints import load_checkpoint, save_checkpoint
from silentwatch.offline.audit.dissociation.data import (
    DissociationData,
    TrainBatch,
    anchor_rows,
    compose,
)
from silentwatch.offline.audit.dissociation.lora import is_peft, wrap_lora
from silentwatch.offline.audit.dissociation.losses import (
    logit,
    monitor_bce,
    monitor_term,
    predicting,
    sft_loss,
    token_kl,
    total_loss,
)
from silentwatch.offline.audit.dissociation.settings import (
    PHASES,
    STAGED_PHASES,
    Composition,
    DissociationSettings,
    Phase,
    Schedule,
)
from silentwatch.offline.audit.dissociation.trainer import (
    CONSTRUCTION_MONITOR,
    REFIT_MONITOR,
    DissociationResult,
    StepRecord,
    dissociate,
    forward_with_features,
)

__all__ = [
    "CONSTRUCTION_MONITOR",
    "PHASES",
    "REFIT_MONITOR",
    "STAGED_PHASES",
    "Composition",
    "DissociationData",
    "DissociationResult",
    "DissociationSettings",
    "Phase",
    "Schedule",
    "StepRecord",
    "TrainBatch",
    "anchor_rows",
    "compose",
    "dissociate",
    "forward_with_features",
    "is_peft",
    "load_checkpoint",
    "logit",
    "monitor_bce",
    "monitor_term",
    "predicting",
    "save_checkpoint",
    "sft_loss",
    "token_kl",
    "total_loss",
    "wrap_lora",
]
