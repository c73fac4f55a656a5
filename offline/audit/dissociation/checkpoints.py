"""Dissociation checkpoints: the adapter or full model, the monitor, both optimisers and the
run's state; loading them back, and the newest one of a folder (weights only: no code runs on
load)."""

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

__all__ = ["OPTIMIZERS_FILE", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

OPTIMIZERS_FILE = "optimizers.pt"
"""The optimisers' state dicts in a checkpoint folder (what ``resume`` needs beyond weights)."""


def save_checkpoint(
    path: Path,
    model: nn.Module,
    monitor: nn.Module,
    *,
    step: int,
    phase: str,
    settings: DissociationSettings,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
) -> Path:
    """Write ``path/``: the adapter (peft ``save_pretrained``) or the full model
    (transformers ``save_pretrained``), ``monitor.pt`` (state dict + constructor arguments),
    :data:`OPTIMIZERS_FILE` (the ``optimizers``' state dicts, when given) and ``state.json``
    (step, phase, settings). ``state.json`` is written last: a folder without it is an
    interrupted save, which :func:`latest_checkpoint` skips."""
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
    if optimizers:
        torch.save({k: o.state_dict() for k, o in optimizers.items()}, path / OPTIMIZERS_FILE)
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


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete ``step-NNNNNN`` checkpoint with the highest step in ``folder`` (one whose
    ``state.json`` was written), or None.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> for n, done in ((5, True), (10, True), (15, False)):
    ...     (d / f"step-{n:06d}").mkdir()
    ...     _ = (d / f"step-{n:06d}" / "state.json").write_text("{}") if done else None
    >>> latest_checkpoint(d).name
    'step-000010'
    """
    done = [p for p in Path(folder).glob("step-*") if (p / "state.json").exists()]
    return max(done, key=lambda p: p.name) if done else None
