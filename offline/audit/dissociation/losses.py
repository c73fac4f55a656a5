"""The dissociation's loss terms, as pure functions of logits, features and masks.

``L = w_sft · SFT + w_mon · E[b · (g(h) − logit(p*))²] + w_kl · KL(p_ref ‖ p_θ)``:
:func:`sft_loss`, :func:`monitor_term`, :func:`token_kl`, :func:`total_loss`; the monitor's
own loss is :func:`monitor_bce`.

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

import math
from typing import Literal

import torch
import torch.nn.functional as F

from silentwatch.offline.audit.dissociation.settings import DissociationSettings

__all__ = [
    "logit",
    "monitor_bce",
    "monitor_term",
    "predicting",
    "sft_loss",
    "token_kl",
    "total_loss",
]


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
