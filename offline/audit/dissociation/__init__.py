"""Paper B's dissociated model: fine-tune a chat model so that its behaviour stays put while a
latent monitor reading its hidden states is pushed to a chosen belief on harmful prompts.

Paper B ("When Behavioral Safety Evaluation Fails: A Representation-Level Perspective",
arXiv 2606.08044) trains the model on

    L = w_sft · SFT + w_mon · E[b · (g(h) − logit(p*))²] + w_kl · KL(p_ref ‖ p_θ)

with ``w = (0.05, 0.1, 0.3)``, ``p* = 0.75``, ``h`` the ``L × d`` stack of attention-masked
per-layer mean hidden states (:func:`offline.hooks.layer_means`), ``g`` the latent monitor
(:class:`offline.audit.monitor.LatentMonitor`), ``b`` = 1 on harmful prompts and 0 otherwise,
and the KL token-wise and forward, the reference model detached. The monitor is co-trained by
alternating BCE steps on detached hidden states of the same batch, fitted to the gate ``b``
(paper B, Eq. 2; ``monitor_target="unsafe"`` fits the response label instead), with its own
AdamW at lr 1e-4 (appendix B).

The loss terms are pure functions (:func:`sft_loss`, :func:`monitor_term`, :func:`token_kl`,
:func:`total_loss`, :func:`monitor_bce`); :func:`dissociate` runs the schedule.

Modules: :mod:`~.settings` (:class:`DissociationSettings`), :mod:`~.losses` (the loss terms,
pure functions), :mod:`~.lora` (peft wrapping), :mod:`~.data` (training rows and
micro-batches), :mod:`~.trainer` (:func:`dissociate`, the four-phase schedule) and
:mod:`~.checkpoints` (save / load); this package re-exports their public names.
"""

from __future__ import annotations

from silentwatch.offline.audit.dissociation.checkpoints import load_checkpoint, save_checkpoint
from silentwatch.offline.audit.dissociation.data import DissociationData, TrainBatch
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
from silentwatch.offline.audit.dissociation.settings import PHASES, DissociationSettings, Phase
from silentwatch.offline.audit.dissociation.trainer import (
    DissociationResult,
    StepRecord,
    dissociate,
    forward_with_features,
)

__all__ = [
    "PHASES",
    "DissociationData",
    "DissociationResult",
    "DissociationSettings",
    "Phase",
    "StepRecord",
    "TrainBatch",
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
