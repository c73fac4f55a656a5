"""LoRA for the dissociation and the harmful fine-tune: wrap a causal LM with peft adapters,
tell a peft wrapper from a plain model. peft is imported only when called."""

from __future__ import annotations

from torch import nn

__all__ = ["is_peft", "wrap_lora"]


def wrap_lora(
    model: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: tuple[str, ...] | None = None,
) -> nn.Module:
    """``peft.get_peft_model`` with a causal-LM LoRA config. The adapters are injected into
    ``model``'s own modules (it changes in place); ``B = 0`` at init, so the wrapped model
    computes exactly what ``model`` did."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if target_modules else None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def is_peft(model: nn.Module) -> bool:
    """Whether ``model`` is a peft wrapper (it has ``disable_adapter()``)."""
    from peft import PeftModel

    return isinstance(model, PeftModel)
