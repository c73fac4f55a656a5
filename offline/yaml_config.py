"""Reading the offline commands' YAML files (``gate.yaml``, ``audit.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict[str, Any]:
    """The mapping in ``path``; ``ValueError`` naming the file when it is missing, not YAML,
    or not a mapping (``expected`` says what the mapping must hold).

    >>> read_yaml_mapping("nope.yaml", "gate config", "data")
    Traceback (most recent call last):
    ...
    ValueError: gate config nope.yaml does not exist
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping with {expected}")
    return raw
