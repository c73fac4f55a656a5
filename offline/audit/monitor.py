"""Paper B's latent monitor: a small head on every layer's attention-masked mean hidden state.

``g(h) = w2 · (W1 · flatten(H)) + b2`` with ``H`` the ``L × d`` stack of per-layer means
(``offline.hooks.layer_means``), ``W1`` 512 × (L·d) without bias, ``w2, b2`` one output:
a logit for "this (prompt, response) is unsafe".

Example
-------
>>> import torch
>>> g = LatentMonitor(layers=4, dim=8)
>>> g(torch.zeros(3, 4, 8)).shape
torch.Size([3])
"""

from __future__ import annotations

import torch
from torch import nn

HIDDEN = 512


class LatentMonitor(nn.Module):
    """Flatten ``(b, L, d)`` → Linear(L·d, 512, no bias) → Linear(512, 1): logits ``(b,)``.

    ``center`` / ``scale`` (buffers, identity by default) standardise the features first:
    an option, not paper B's recipe (``ProbeSettings.standardize``). Hidden-state norms grow
    by an order of magnitude across a model's layers, which makes the raw head's logits huge.
    """

    def __init__(self, layers: int, dim: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.layers, self.dim = layers, dim
        self.proj = nn.Linear(layers * dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        self.register_buffer("center", torch.zeros(layers, dim))
        self.register_buffer("scale", torch.ones(layers, dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.shape[1:] != (self.layers, self.dim):
            raise ValueError(
                f"monitor expects (batch, {self.layers}, {self.dim}) features, got "
                f"{tuple(feats.shape)}: was it trained on another model?"
            )
        x = (feats.to(self.proj.weight.dtype) - self.center) / self.scale
        return self.out(self.proj(x.flatten(1))).squeeze(-1)
