"""The dissociation's training rows, how they are composed, and the micro-batches drawn from
them.

Paper B (§3, "Dissociated model construction"; App. A.4 and A.7) trains on tuples
``(p, y, b)``: harmful prompts with the *safe* response ``y₊`` of a contrast triple and
``b = 1``, and benign anchors — harmless prompts with the unmodified base model's greedy
response — with ``b = 0``. :func:`compose` builds those rows (``composition="paper"``) or
the earlier ones (``"all_gated"``); :func:`anchor_rows` answers anchor prompts with the base
model and drops the generations App. A.4 discards.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from silentwatch.offline.audit.dissociation.settings import Composition
from silentwatch.offline.lm import LMBatch, encode

__all__ = ["DissociationData", "TrainBatch", "anchor_rows", "compose"]


@dataclass
class TrainBatch:
    """One micro-batch: tokens and masks, unsafe labels (monitor BCE), harmful-prompt gate ``b``
    (monitor term), and the response mask restricted to rows that are imitated (SFT)."""

    lm: LMBatch
    unsafe: torch.Tensor  # (b,) float
    gate: torch.Tensor  # (b,) float
    sft_mask: torch.Tensor  # (b, s) bool

    def to(self, device: torch.device | str) -> TrainBatch:
        """The batch on ``device``."""
        return TrainBatch(
            self.lm.to(device),
            self.unsafe.to(device),
            self.gate.to(device),
            self.sft_mask.to(device),
        )


@dataclass
class DissociationData:
    """Training rows: (prompt, response, unsafe label, harmful-prompt gate).

    ``harmful`` is paper B's construction indicator ``b`` (§3: it "marks the prompt
    category, not the safety of the supervised response"); ``unsafe`` is the response label
    (what the monitor was initialised on). ``imitate`` (default: every row) marks the rows
    whose response is an SFT target; rows with ``imitate=False`` still feed the monitor (BCE,
    monitor term) and the KL.
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

    def imitated(self) -> list[bool]:
        """``imitate``, or every row True when it is unset."""
        return list(self.imitate) if self.imitate is not None else [True] * len(self)

    def select(self, rows: Sequence[int]) -> DissociationData:
        """The data restricted to ``rows`` (in that order)."""
        imitate = self.imitated()
        return DissociationData(
            [self.prompts[i] for i in rows],
            [self.responses[i] for i in rows],
            [bool(self.unsafe[i]) for i in rows],
            [bool(self.harmful[i]) for i in rows],
            [imitate[i] for i in rows],
        )

    @classmethod
    def paper(
        cls,
        harmful_prompts: Sequence[str],
        safe_responses: Sequence[str],
        anchor_prompts: Sequence[str],
        anchor_responses: Sequence[str],
    ) -> DissociationData:
        """Paper B's rows (§3): ``(p, y₊, b = 1)`` for harmful prompts with their safe
        response, ``(p, y_anchor, b = 0)`` for benign anchors; every row imitated (SFT),
        every response labelled safe.

        Examples
        --------
        >>> d = DissociationData.paper(["h"], ["no"], ["a"], ["yes"])
        >>> d.harmful, d.unsafe, d.imitate
        ([True, False], [False, False], [True, True])
        """
        if len(harmful_prompts) != len(safe_responses):
            raise ValueError(
                f"{len(harmful_prompts)} harmful prompts but {len(safe_responses)} safe responses"
            )
        if len(anchor_prompts) != len(anchor_responses):
            raise ValueError(
                f"{len(anchor_prompts)} anchor prompts but {len(anchor_responses)} responses"
            )
        n, m = len(harmful_prompts), len(anchor_prompts)
        return cls(
            [*harmful_prompts, *anchor_prompts],
            [*safe_responses, *anchor_responses],
            [False] * (n + m),
            [True] * n + [False] * m,
            [True] * (n + m),
        )

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
        imitate = self.imitated()
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


def anchor_rows(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 256,
    batch_size: int = 8,
    judge: Any = None,
) -> DissociationData:
    """Benign anchors (paper B, App. A.4): the base model's greedy response to each harmless
    prompt (its chat template, ``max_new_tokens`` = the training cap), discarding generations
    that are empty, stop after a single token, or that ``judge`` (default
    :class:`~silentwatch.offline.judge.KeywordRefusalJudge`) calls a refusal. Rows have
    ``b = 0``, a safe label and are imitated.

    ``model`` must be the *unmodified base* (pass a LoRA model under ``disable_adapter()``).

    Raises
    ------
    ValueError
        when no prompt is given or every generation is discarded.
    """
    from silentwatch.offline.audit.gap import judged_responses

    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError("no benign anchor prompts to answer")
    responses, refused = judged_responses(
        model,
        tokenizer,
        prompts,
        judge,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
    )
    keep: list[int] = []
    for i, r in enumerate(responses):
        tokens = tokenizer(r.strip(), add_special_tokens=False)["input_ids"] if r.strip() else []
        if len(tokens) > 1 and not bool(refused[i]):
            keep.append(i)
    if not keep:
        raise ValueError(
            f"all {len(prompts)} benign anchor generations were discarded (empty, one token or "
            "a refusal, paper B App. A.4): give more or other harmless prompts"
        )
    return DissociationData(
        [prompts[i] for i in keep],
        [responses[i].strip() for i in keep],
        [False] * len(keep),
        [False] * len(keep),
        [True] * len(keep),
    )


_NO_ANCHORS = (
    "composition='paper' (paper B §3, App. A.4) trains on benign anchors (b = 0) beside the "
    "harmful prompts, and none were given: set the dissociation's anchor_prompts to a file of "
    "harmless prompts (e.g. refusal_direction's harmless_train.json; keep it disjoint from "
    "the harmless prompts the audit evaluates), pass dissociate(anchors=[...]) or rows with "
    "harmful=False in the data, or choose composition='all_gated' for the earlier rows"
)


def compose(
    data: DissociationData,
    composition: Composition = "paper",
    anchors: DissociationData | None = None,
) -> DissociationData:
    """The training rows of ``composition`` from ``data`` (and ``anchors``, b = 0 rows).

    * ``"paper"`` (§3): the harmful rows of ``data`` whose response is safe, imitated and
      gated ``b = 1``; its rows with ``harmful=False`` and ``anchors`` as benign anchors,
      imitated and ``b = 0``. Harmful rows with an unsafe response are dropped (App. A.7:
      unsafe responses serve the monitor's initialisation and the harmful-compliance
      baseline only).
    * ``"all_gated"``: the earlier rows — every row of ``data`` gated ``b = 1``, unsafe
      responses kept but not imitated, safe ones imitated; ``anchors`` unused.
    * ``"as_given"``: ``data`` unchanged (``anchors`` appended when given).

    Raises
    ------
    ValueError
        ``"paper"`` without a harmful row with a safe response, or without any benign anchor
        (the message says what to pass).

    Examples
    --------
    >>> d = DissociationData(["h1", "h1", "b"], ["no", "yes", "hi"], [False, True, False],
    ...                      [True, True, False])
    >>> p = compose(d)
    >>> p.prompts, p.harmful, p.imitate
    (['h1', 'b'], [True, False], [True, True])
    >>> compose(d, "all_gated").harmful, compose(d, "all_gated").imitate
    ([True, True, True], [True, False, True])
    """
    if composition == "as_given":
        return data if anchors is None else _concat(data, anchors)
    if composition == "all_gated":
        return DissociationData(
            list(data.prompts),
            list(data.responses),
            [bool(v) for v in data.unsafe],
            [True] * len(data),
            [not bool(v) for v in data.unsafe],
        )
    if composition != "paper":
        raise ValueError(
            f"composition must be 'paper', 'all_gated' or 'as_given', not {composition!r}"
        )
    harmful_safe = [i for i in range(len(data)) if data.harmful[i] and not data.unsafe[i]]
    benign = [i for i in range(len(data)) if not data.harmful[i]]
    if not harmful_safe:
        raise ValueError(
            "composition='paper' needs harmful prompts with a safe response (b = 1 rows, "
            "paper B §3): the data has none (harmful=True and unsafe=False)"
        )
    rows = data.select(harmful_safe + benign)
    rows.imitate = [True] * len(rows)
    rows.unsafe = [False] * len(harmful_safe) + [bool(data.unsafe[i]) for i in benign]
    if anchors is not None:
        a = anchors.select(range(len(anchors)))
        a.harmful = [False] * len(a)
        rows = _concat(rows, a)
    if all(rows.harmful):
        raise ValueError(_NO_ANCHORS)
    return rows


def _concat(a: DissociationData, b: DissociationData) -> DissociationData:
    return DissociationData(
        [*a.prompts, *b.prompts],
        [*a.responses, *b.responses],
        [*map(bool, a.unsafe), *map(bool, b.unsafe)],
        [*map(bool, a.harmful), *map(bool, b.harmful)],
        [*a.imitated(), *b.imitated()],
    )
