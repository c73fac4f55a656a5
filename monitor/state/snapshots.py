"""Snapshots of online state as bytes: arrays in an ``.npz`` plus a JSON header, no pickle.

Used to persist detector windows and the labelled calibration state across restarts
(:mod:`.persistence`). Decoding never unpickles (``allow_pickle=False``), so a tampered
snapshot can at worst be refused, never run code.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

_HEADER = "__header__"


class SnapshotError(ValueError):
    """A snapshot that cannot be used; it is discarded and the reason logged."""


def encode(arrays: dict[str, np.ndarray], header: dict[str, Any]) -> bytes:
    """Arrays and a JSON-serialisable header as one ``.npz`` byte string.

    >>> a, h = decode(encode({"x": np.arange(3)}, {"kind": "demo"}))
    >>> a["x"].tolist(), h["kind"]
    ([0, 1, 2], 'demo')
    """
    if _HEADER in arrays:
        raise ValueError(f"{_HEADER} is reserved")
    blob = np.frombuffer(json.dumps(header, allow_nan=True).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **{_HEADER: blob}, **arrays)
    return buf.getvalue()


def decode(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inverse of :func:`encode`; raises :class:`SnapshotError` on anything malformed."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop(_HEADER).tobytes().decode())
    except Exception as exc:  # any parse failure means "unusable", never a crash
        raise SnapshotError(f"unreadable snapshot ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict):
        raise SnapshotError("snapshot header is not an object")
    return arrays, header


def expect(arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """``arrays[name]`` if it has ``shape`` (-1: any length), else :class:`SnapshotError`."""
    a = arrays.get(name)
    if a is None:
        raise SnapshotError(f"snapshot lacks {name}")
    if a.ndim != len(shape) or any(s not in (-1, t) for s, t in zip(shape, a.shape, strict=True)):
        raise SnapshotError(f"snapshot {name} has shape {a.shape}, expected {shape}")
    return a
