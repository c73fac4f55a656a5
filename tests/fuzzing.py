"""Hypothesis settings shared by the fuzz tests."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def examples(default: int, *suppress: HealthCheck) -> settings:
    """Reproducible settings (``derandomize``, no example database, no deadline) with
    ``default`` examples; ``SILENTWATCH_FUZZ_EXAMPLES`` overrides the count. Module-scoped
    fixtures are fine with function-scoped tests here; ``suppress`` adds health checks."""
    return settings(
        max_examples=int(os.environ.get("SILENTWATCH_FUZZ_EXAMPLES") or default),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, *suppress],
    )
