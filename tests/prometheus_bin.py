"""Find Prometheus' binaries (Debian's ``prometheus`` package) for the tests.

The README's set-up (``make test``) unpacks the package into ``.venv/prometheus``
(``deploy/prometheus/install.sh``); a system install on ``PATH`` works too, as does
``SILENTWATCH_PROMETHEUS_BIN_DIR``. Without them the tests that need the binaries skip,
unless ``SILENTWATCH_REQUIRE_PROMETHEUS=1`` (set by ``make test``, hence CI), where a
missing binary is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / ".venv" / "prometheus" / "usr" / "bin"


def prometheus_binary(name: str) -> str:
    """Path of ``promtool`` or ``prometheus``; skips (or fails in CI) when absent."""
    for d in (os.environ.get("SILENTWATCH_PROMETHEUS_BIN_DIR"), str(LOCAL)):
        if d and (Path(d) / name).is_file():
            return str(Path(d) / name)
    found = shutil.which(name)
    if found:
        return found
    msg = f"{name} not found: run `make test` (unpacks Debian's prometheus into .venv/prometheus)"
    if os.environ.get("SILENTWATCH_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)
