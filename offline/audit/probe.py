"""Paper B's latent monitor probe: features from a language model and the training loop.

Paper B ("When Behavioral Safety Evaluation Fails: A Representation-Level Perspective",
arXiv 2606.08044) audits a model with a probe on its hidden states. For a (prompt, response)
sequence with attention mask ``m`` and block outputs ``h_l``, the features are the
attention-masked means

    ``H[l] = sum_t m_t h_l[t] / sum_t m_t``,  ``l = 0..L-1``  (an ``L × d`` stack),

and the probe :class:`~silentwatch.offline.audit.monitor.LatentMonitor` ``g(H)`` is trained
with binary cross-entropy on logits, ``BCE(g(H), y)`` (``y = 1`` unsafe), by AdamW (lr 3e-4,
weight decay 1e-4), mini-batches of 32 for 30 epochs, keeping the parameters of the epoch
with the best held-out AUROC.

Paper B does not standardise the features, and neither does this module: the probe sees raw
hidden-state means, whose scale grows with depth in most models (the first linear layer
absorbs it). Standardise outside if a model's scales make training unstable.

Example
-------
>>> import torch
>>> gen = torch.Generator().manual_seed(0)
>>> y = torch.arange(64) % 2
>>> x = torch.randn(64, 2, 4, generator=gen) + 2.0 * y[:, None, None]
>>> probe, fit = train_probe(x, y, x, y, ProbeSettings(epochs=5, hidden=8, lr=1e-2))
>>> len(fit.val_auroc), fit.best_val_auroc > 0.9
(5, True)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from silentwatch.offline.audit.monitor import HIDDEN, LatentMonitor
from silentwatch.offline.hooks import layer_means
from silentwatch.offline.lm import encode
from silentwatch.offline.progress import Reporter


@dataclass
class ProbeSettings:
    """Training settings (paper B's values by default). ``standardize`` z-scores every
    feature with the training rows' mean and standard deviation inside the monitor (not in
    the paper; off by default)."""

    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 30
    hidden: int = HIDDEN
    seed: int = 0
    device: str = "cpu"
    standardize: bool = False


@dataclass
class ProbeFit:
    """What training did: per-epoch mean training loss and held-out AUROC (epoch ``k`` is
    index ``k - 1``), the held-out AUROC before training and the 1-based best epoch, whose
    parameters the returned probe holds."""

    train_loss: list[float] = field(default_factory=list)
    val_auroc: list[float] = field(default_factory=list)
    initial_val_auroc: float = float("nan")
    best_epoch: int = 0

    @property
    def best_val_auroc(self) -> float:
        return self.val_auroc[self.best_epoch - 1] if self.best_epoch else float("nan")


def auroc(scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """ROC-AUC of raw scores (logits: no sigmoid, so no ties from saturation); equal to
    :func:`silentwatch.monitor.evaluation.classification.roc_auc` on any monotone map of the scores.

    >>> auroc(np.array([-2.0, 0.5, 0.1, 3.0]), np.array([0, 0, 1, 1]))
    0.75
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if np.unique(y).size != 2:
        raise ValueError("AUROC needs both classes (safe and unsafe) among the labels")
    return float(roc_auc_score(y, s))


@torch.no_grad()
def monitor_logits(
    monitor: nn.Module, feats: torch.Tensor, *, batch_size: int = 1024
) -> torch.Tensor:
    """The monitor's logits ``g(H)`` for ``(n, L, d)`` features, in eval mode, batched,
    float32 on CPU (the monitor's train/eval mode is restored)."""
    device = next(monitor.parameters()).device
    was_training = monitor.training
    monitor.eval()
    try:
        out = [
            monitor(feats[i : i + batch_size].to(device)).float().cpu()
            for i in range(0, feats.shape[0], batch_size)
        ]
    finally:
        monitor.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def extract_features(
    model: nn.Module,
    tokenizer: object,
    prompts: Sequence[str],
    responses: Sequence[str] | None = None,
    *,
    batch_size: int = 8,
    max_prompt_tokens: int = 256,
    max_response_tokens: int = 128,
    progress: Reporter | None = None,
) -> torch.Tensor:
    """Paper B's probe features ``(n, L, d)``, float32 on CPU, in the input order.

    Each (prompt, response) is encoded as the model sees it
    (:func:`~silentwatch.offline.lm.encode`: chat-formatted prompt, then the response and EOS)
    and every block's output is averaged over the attention mask
    (:func:`~silentwatch.offline.hooks.layer_means`). With left padding, models with absolute
    position embeddings (GPT-2) see positions shifted by the pad count, so their features
    depend slightly on the batch; rotary models (Llama, Qwen, SmolLM2) do not.
    ``responses=None`` gives prompt-only features. Rows are batched by length (less padding,
    faster); runs under ``torch.no_grad`` on the model's device.
    """
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    progress = progress or Reporter(enabled=False)
    n = len(prompts)
    lengths = [
        len(p) + (len(responses[i]) if responses is not None else 0) for i, p in enumerate(prompts)
    ]
    order = np.argsort(lengths, kind="stable")
    device = next(model.parameters()).device
    parts: list[torch.Tensor] = []
    with progress.bar("probe features", n) as advance:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size].tolist()
            batch = encode(
                tokenizer,
                [prompts[i] for i in rows],
                None if responses is None else [responses[i] for i in rows],
                max_prompt_tokens=max_prompt_tokens,
                max_response_tokens=max_response_tokens,
            ).to(device)
            feats = layer_means(model, batch.input_ids, batch.attention_mask)
            parts.append(feats.float().cpu())
            advance(len(rows))
    if not parts:
        raise ValueError("no prompts to extract features from")
    stacked = torch.cat(parts)
    out = torch.empty_like(stacked)
    out[torch.as_tensor(order)] = stacked
    return out


def _as_xy(feats: torch.Tensor, y: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    if feats.ndim != 3:
        raise ValueError(f"{name} features must be (n, layers, dim), got {tuple(feats.shape)}")
    labels = torch.as_tensor(np.asarray(y)).reshape(-1)
    if labels.shape[0] != feats.shape[0]:
        raise ValueError(f"{name}: {feats.shape[0]} feature rows but {labels.shape[0]} labels")
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError(f"{name} labels must be 0 (safe) or 1 (unsafe)")
    return labels.float()


def train_probe(
    train_feats: torch.Tensor,
    train_y: np.ndarray | torch.Tensor,
    val_feats: torch.Tensor,
    val_y: np.ndarray | torch.Tensor,
    settings: ProbeSettings | None = None,
    *,
    progress: Reporter | None = None,
) -> tuple[LatentMonitor, ProbeFit]:
    """Train a fresh :class:`LatentMonitor` on ``(n, L, d)`` features (paper B's recipe).

    ``min_θ E[BCE(g_θ(H), y)]`` with AdamW over shuffled mini-batches; after each epoch the
    held-out AUROC of ``g`` on ``val_feats`` is recorded and the parameters of the best epoch
    (the first, on ties) are the ones returned, in eval mode. Initialisation and shuffling
    are seeded by ``settings.seed`` without touching torch's global generator.
    """
    s = settings or ProbeSettings()
    progress = progress or Reporter(enabled=False)
    ytr = _as_xy(train_feats, train_y, "train")
    yva = _as_xy(val_feats, val_y, "val").numpy()
    if train_feats.shape[1:] != val_feats.shape[1:]:
        raise ValueError(
            f"train features are {tuple(train_feats.shape[1:])} per row but val features "
            f"{tuple(val_feats.shape[1:])}"
        )
    if np.unique(yva).size != 2 or torch.unique(ytr).numel() != 2:
        raise ValueError("train and val sets both need safe and unsafe examples")
    _, layers, dim = train_feats.shape
    device = torch.device(s.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        probe = LatentMonitor(layers, dim, hidden=s.hidden)
    if s.standardize:  # per-feature z-scores from the training rows (an option, not the paper)
        probe.center.copy_(train_feats.float().mean(0))
        probe.scale.copy_(train_feats.float().std(0).clamp_min(1e-6))
    probe.to(device)
    gen = torch.Generator().manual_seed(s.seed)
    opt = torch.optim.AdamW(probe.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    fit = ProbeFit(initial_val_auroc=auroc(monitor_logits(probe, val_feats), yva))
    best_state = copy.deepcopy(probe.state_dict())
    n = train_feats.shape[0]
    with progress.bar("probe epochs", s.epochs) as advance:
        for epoch in range(1, s.epochs + 1):
            probe.train()
            total = 0.0
            for idx in torch.randperm(n, generator=gen).split(s.batch_size):
                x, y = train_feats[idx].to(device), ytr[idx].to(device)
                loss = loss_fn(probe(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            fit.train_loss.append(total / n)
            fit.val_auroc.append(auroc(monitor_logits(probe, val_feats), yva))
            if not fit.best_epoch or fit.val_auroc[-1] > fit.best_val_auroc:
                fit.best_epoch = epoch
                best_state = copy.deepcopy(probe.state_dict())
            advance(1)
    probe.load_state_dict(best_state)
    return probe.eval(), fit
