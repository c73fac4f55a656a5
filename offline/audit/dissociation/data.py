"""The dissociation's training rows and the micro-batches drawn from them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from silentwatch.offline.lm import LMBatch, encode

__all__ = ["DissociationData", "TrainBatch"]


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
