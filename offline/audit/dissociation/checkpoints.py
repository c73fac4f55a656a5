"""Dissociation checkpoints: the adapter or full model, the monitor and the run's state, and
loading them back (weights only: no code runs on load)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from silentwatch.offline.audit.dissociation.lora import is_peft
from silentwatch.offline.audit.dissociation.settings import DissociationSettings
from silentwatch.offline.hooks import unwrap

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    path: Path,
    model: nn.Module,
    monitor: nn.Module,
    *,
    step: int,
    phase: str,
    settings: DissociationSettings,
) -> Path:
    """Write ``path/``: the adapter (peft ``save_pretrained``) or the full model
    (transformers ``save_pretrained``), ``monitor.pt`` (state dict + constructor arguments)
    and ``state.json`` (step, phase, settings)."""
    path.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(str(path))  # type: ignore[operator]
    else:
        unwrap(model).save_pretrained(str(path))  # type: ignore[operator]
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in monitor.state_dict().items()},
            "layers": getattr(monitor, "layers", None),
            "dim": getattr(monitor, "dim", None),
        },
        path / "monitor.pt",
    )
    state = {"step": step, "phase": phase, "settings": asdict(settings)}
    (path / "state.json").write_text(json.dumps(state, indent=2, default=str))
    return path


def load_checkpoint(
    path: str | Path, base_model: nn.Module | None = None
) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """``(model, monitor, state)`` from a :func:`save_checkpoint` folder.

    An adapter checkpoint needs ``base_model`` (the model before LoRA wrapping, e.g. freshly
    loaded); a full checkpoint loads with ``AutoModelForCausalLM.from_pretrained``. The
    monitor is rebuilt as a ``LatentMonitor`` from the saved state.
    """
    from silentwatch.offline.audit.monitor import LatentMonitor

    path = Path(path)
    if (path / "adapter_config.json").exists():
        if base_model is None:
            raise ValueError(f"{path} holds a LoRA adapter: pass the base model")
        from peft import PeftModel

        model: nn.Module = PeftModel.from_pretrained(base_model, str(path))
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(path))
    blob = torch.load(path / "monitor.pt", weights_only=True)
    sd = blob["state_dict"]
    monitor = LatentMonitor(blob["layers"], blob["dim"], hidden=sd["proj.weight"].shape[0])
    monitor.load_state_dict(sd)
    state = json.loads((path / "state.json").read_text())
    return model.eval(), monitor, state
