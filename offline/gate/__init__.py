"""The pre-release gate: ``silentwatch gate --config gate.yaml``."""

from silentwatch.offline.gate.config import GateConfig, load_gate_config
from silentwatch.offline.gate.run import GateError, GateReport, run_gate

__all__ = ["GateConfig", "GateError", "GateReport", "load_gate_config", "run_gate"]
