"""torch dtypes by name, and the ``auto`` rule: one home for the embedders, the LM loader
and the audit's fine-tuning."""

from __future__ import annotations

from typing import Literal

import torch

DType = Literal["auto", "float32", "bfloat16", "float16"]
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str, device: str) -> str:
    """``"auto"`` -> ``"bfloat16"`` on CUDA, ``"float32"`` elsewhere; others are checked.

    >>> resolve_dtype("auto", "cpu"), resolve_dtype("float16", "cuda:0")
    ('float32', 'float16')

    Raises
    ------
    ValueError
        For a dtype that is not one of ``auto``, ``float32``, ``bfloat16``, ``float16``.
    """
    if dtype == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, not {dtype!r}")
    return dtype
