"""A transformers model in a form Ray can ship to its workers.

A live model cannot always be pickled: transformers installs output-recording hooks that
hold ``ContextVar`` objects. :class:`ModelRecipe` carries what rebuilds it instead (class,
config, generation config, weights on the CPU, dtype, device); a worker builds it once and
keeps it for the next cell of the same run. torch and transformers are imported inside
the functions, so the local engine never pays for this module.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelRecipe", "portable_model"]

# The model a worker process built last: cells of one run share it. One entry only, so a
# long-lived worker does not accumulate models of earlier runs.
_BUILT: dict[str, Any] = {}


@dataclass
class ModelRecipe:
    """What rebuilds a transformers model on a Ray worker, weights included.

    Attributes
    ----------
    cls
        The model's class (a ``PreTrainedModel`` subclass).
    config, generation_config
        Deep copies of the model's configurations.
    state
        ``state_dict()`` on the CPU.
    dtype, device
        Where and in what precision the rebuilt model runs (the original's).
    key
        Identifies this recipe in a worker's cache of built models.
    """

    cls: type
    config: Any
    generation_config: Any
    state: dict[str, Any]
    dtype: Any
    device: str
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def build(self) -> Any:
        """The model, built once per worker process and reused by later cells."""
        model = _BUILT.get(self.key)
        if model is None:
            model = self.cls(self.config)
            model.load_state_dict(self.state)
            if self.generation_config is not None:
                model.generation_config = copy.deepcopy(self.generation_config)
            model = model.to(device=self.device, dtype=self.dtype).eval()
            _BUILT.clear()
            _BUILT[self.key] = model
        return model


def portable_model(model: Any) -> ModelRecipe | None:
    """A :class:`ModelRecipe` of ``model``, or None when it is no plain transformers model
    (a PEFT-wrapped candidate, say), which then runs its cells locally.

    Parameters
    ----------
    model
        A model in eval mode.

    Returns
    -------
    ModelRecipe or None
    """
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - the offline extra is installed wherever this runs
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    first = next(model.parameters())
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return ModelRecipe(
        cls=type(model),
        config=copy.deepcopy(model.config),
        generation_config=copy.deepcopy(getattr(model, "generation_config", None)),
        state=state,
        dtype=first.dtype,
        device=str(first.device),
    )
