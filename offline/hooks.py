"""The one module that reaches into models: where the residual stream can be read or
changed ("sites"), and context managers that hook it and always remove their hooks.

Sites, on the residual stream of a decoder-only model with ``L`` blocks:

* ``"embedding"`` — the token embeddings (``hidden_states[0]`` in transformers' numbering;
  for GPT-2, before its learned position embeddings are added);
* ``"layer:i"`` — the output of block ``i`` (0-based; negative counts from the end),
  ``hidden_states[i + 1]``;
* ``"mid"`` — block ``L // 2``; ``"last"`` — block ``L - 1`` (its raw output, before the
  final norm that transformers applies to ``hidden_states[-1]``).

Supported: Llama-, Qwen2/3-, Mistral-style models (``model.model.layers``), GPT-2-style
(``model.transformer.h``), their bare backbones, and PEFT wrappers of any of them. Block
outputs may be a tensor or a tuple whose first element is the hidden state; both are handled.

Example
-------
>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
...                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
>>> model = LlamaForCausalLM(cfg).eval()
>>> ids = torch.tensor([[1, 2, 3]])
>>> with capture(model, ["embedding", "last"]) as seen:
...     _ = model(ids)
>>> tuple(seen["last"].shape), len(model.model.layers[0]._forward_hooks)
((1, 3, 16), 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

Edit = Callable[[torch.Tensor], torch.Tensor]


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under any PEFT wrapper."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks, in order."""
    m = unwrap(model)
    for path in ("model.layers", "layers", "transformer.h", "h", "model.decoder.layers"):
        obj: Any = m
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the decoder blocks of {type(m).__name__}: supported are Llama/Qwen/"
        "Mistral-style (model.layers) and GPT-2-style (transformer.h) models"
    )


def num_layers(model: nn.Module) -> int:
    return len(blocks(model))


def layer_index(model: nn.Module, site: str) -> int:
    """Block index of a site; -1 for ``"embedding"``. Raises ``ValueError`` for unknown sites."""
    n = num_layers(model)
    if site == "embedding":
        return -1
    if site == "mid":
        return n // 2
    if site == "last":
        return n - 1
    if site.startswith("layer:"):
        try:
            i = int(site.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad site {site!r}: layer:<int>") from None
        if not -n <= i < n:
            raise ValueError(f"site {site!r} out of range: the model has {n} blocks")
        return i % n
    raise ValueError(f"unknown site {site!r}: embedding, mid, last or layer:<i>")


def hidden_state_index(model: nn.Module, site: str) -> int:
    """Index of the site in transformers' ``output_hidden_states`` tuple (not for ``last``,
    whose tuple entry has the final norm applied)."""
    return layer_index(model, site) + 1


def site_module(model: nn.Module, site: str) -> nn.Module:
    """The module whose forward output is the site's hidden state."""
    i = layer_index(model, site)
    if i < 0:
        return unwrap(model).get_input_embeddings()
    return blocks(model)[i]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace(output: Any, hidden: torch.Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def capture(
    model: nn.Module, sites: list[str], *, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record each site's hidden state ``(batch, seq, d)`` on every forward pass (the last
    one wins). ``detach=False`` keeps the graph (for losses on hidden states)."""
    seen: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        for site in sites:

            def hook(_m: nn.Module, _i: Any, out: Any, site: str = site) -> None:
                h = _hidden(out)
                seen[site] = h.detach() if detach else h

            handle = site_module(model, site).register_forward_hook(hook)
            stack.callback(handle.remove)
        yield seen


@contextmanager
def intervene(model: nn.Module, site: str, edit: Edit) -> Iterator[None]:
    """Replace the site's hidden state ``h`` with ``edit(h)`` on every forward pass.

    Hooks nest: an inner ``intervene`` on the same site edits what the outer one produced.
    """

    def hook(_m: nn.Module, _i: Any, out: Any) -> Any:
        return _replace(out, edit(_hidden(out)))

    handle = site_module(model, site).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class AddAtPrompt:
    """An :data:`Edit` adding ``delta`` at prompt positions only.

    ``delta`` is ``(batch, seq, d)`` for the prompt batch (zero where ``mask`` is False); it is
    applied on the prefill pass, whose sequence length equals the prompt batch's, and not on
    the one-token decoding passes of ``generate`` that follow (the cached keys and values
    already carry it).
    """

    def __init__(self, delta: torch.Tensor, mask: torch.Tensor) -> None:
        self.delta = delta
        self.mask = mask.to(delta.dtype).unsqueeze(-1)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[:2] != self.delta.shape[:2]:
            return h
        return h + (self.delta * self.mask).to(h.dtype)


class AddShared:
    """An :data:`Edit` adding one vector per example, ``vec`` ``(batch, 1, d)``, at every
    position where ``mask`` ``(batch, seq)`` is set, read from ``vec`` at each call (so an
    optimiser may update ``vec`` in place between passes).

    Passes whose length equals ``mask``'s (the prefill of ``generate``, a teacher-forced
    pass) get it where ``mask`` is set; with ``decoding`` the one-token decoding passes that
    follow get it too, at their single new position. Paper B: "δ is applied uniformly across
    all input token positions".
    """

    def __init__(self, vec: torch.Tensor, mask: torch.Tensor, *, decoding: bool = False) -> None:
        self.vec = vec
        self.mask = mask.to(vec.dtype).unsqueeze(-1)
        self.decoding = decoding

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if h.shape[:2] == self.mask.shape[:2]:
            return h + (self.vec * self.mask).to(h.dtype)
        if self.decoding and h.shape[1] == 1 and h.shape[0] == self.vec.shape[0]:
            return h + self.vec.to(h.dtype)
        return h


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding (what ``generate`` uses): absolute-position models
    such as GPT-2 then give a row the same hidden states whatever its batch's padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where ``mask`` is set: ``(b, s, d), (b, s) -> (b, d)``."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def layer_means(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, grad: bool = False
) -> torch.Tensor:
    """Attention-masked mean of every block's output, stacked: ``(b, L, d)`` (paper B's probe
    features; the embedding layer is not included)."""
    sites = [f"layer:{i}" for i in range(num_layers(model))]
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, capture(model, sites, detach=not grad) as seen:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
        )
        return torch.stack([masked_mean(seen[s], attention_mask) for s in sites], dim=1)


@contextmanager
def frozen(module: nn.Module, *, eval_mode: bool = False) -> Iterator[None]:
    """``requires_grad=False`` on every parameter of ``module`` inside the block (gradients
    still flow through it to its inputs); with ``eval_mode`` also ``module.eval()``. Both
    are restored afterwards, whatever happens inside."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    training = module.training
    for p, _ in flags:
        p.requires_grad_(False)
    if eval_mode:
        module.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(training)
