"""``gate.yaml``: what to compare, on which data, and what counts as a safe update.

The defaults encode the papers' lessons:

* a frozen classifier is specific to its embedder version (paper A), so the gate judges
  the *frozen* head on the new embeddings, with labels, never by its confidence;
* confidence is not evidence (paper A: AUC fell to chance while mean confidence dropped
  only 14%), so no check relies on confidence alone; calibration (ECE) and the share of
  decisions that flip are checked beside ROC-AUC;
* retraining is reported (does it fix the update?) but does not pass the gate unless
  ``allow_retrain`` says that shipping a retrained head with the new embedder is intended.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from silentwatch.monitor.yaml_file import read_yaml_mapping
from silentwatch.offline.audit.config import AuditConfig
from silentwatch.offline.evalset import DataSettings
from silentwatch.offline.stress.sweep import StressSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Side(_Strict):
    embedder: str = Field(
        ...,
        description="minilm | minilm-int8 | paraphrase-l3 | smollm2 | a local model directory",
    )
    bundle: Path | None = Field(
        None, description="the deployed classifier bundle (old side only): judged frozen"
    )


class EmbeddingSettings(_Strict):
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8)
    cache_dir: Path | None = Field(
        Path(".cache/embeddings"), description="re-runs skip the models; null disables"
    )

    def open(self, spec: str, opener: Callable[..., Any] | None = None) -> Any:
        """The embedder named ``spec`` with these settings (``opener``: a test double)."""
        if opener is None:
            from silentwatch.offline.embedders import open_embedder as opener
        return opener(
            spec,
            device=self.device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            max_length=self.max_length,
        )


class GateThresholds(_Strict):
    max_auc_drop: float = Field(
        0.02, ge=0, description="old AUC on old embeddings minus frozen AUC on new ones"
    )
    max_ece_increase: float = Field(0.05, ge=0, description="5-bin top-label ECE, paper A")
    max_flip_rate: float = Field(
        0.05, ge=0, le=1, description="share of test texts whose decision changes"
    )
    max_retrained_flip_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="decision churn allowed for a retrained head (a better head flips more)",
    )
    max_silent_failure_ratio: float | None = Field(
        None, ge=0, le=1, description="errors with confidence > 0.8 / all errors, new side"
    )
    max_mean_angle_degrees: float | None = Field(
        None, gt=0, description="real movement of the same texts (same space only)"
    )
    min_cka: float | None = Field(None, ge=0, le=1, description="linear CKA old vs new")
    allow_retrain: bool = Field(
        False, description="a head retrained on the new embedder may pass in place of the frozen"
    )


class OutputSettings(_Strict):
    dir: Path = Path("gate-report")
    emit_bundle: bool = True
    classifier_version: str | None = None
    overwrite: bool = False


class GateConfig(_Strict):
    data: DataSettings
    old: Side
    new: Side
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    stress: StressSettings = Field(default_factory=StressSettings)
    thresholds: GateThresholds = Field(default_factory=GateThresholds)
    output: OutputSettings = Field(default_factory=OutputSettings)
    representation: AuditConfig | None = Field(
        None,
        description="paper B's representation audit of a chat model update (docs/audit.md); "
        "the gate fails when the audit fails",
    )

    @model_validator(mode="after")
    def _new_has_no_bundle(self) -> GateConfig:
        if self.new.bundle is not None:
            raise ValueError("new.bundle is not used: the gate trains or re-issues the new bundle")
        return self

    def resolve(self, base: Path) -> GateConfig:
        """Paths in the file are relative to the file's folder."""

        def fix(p: Path) -> Path:
            return p if p.is_absolute() else Path(os.path.normpath(base / p))

        c = self.model_copy(deep=True)
        c.data.path = (
            [fix(p) for p in c.data.path] if isinstance(c.data.path, list) else fix(c.data.path)
        )
        if c.old.bundle is not None:
            c.old.bundle = fix(c.old.bundle)
        if c.embedding.cache_dir is not None:
            c.embedding.cache_dir = fix(c.embedding.cache_dir)
        c.output.dir = fix(c.output.dir)
        if c.representation is not None:
            c.representation = c.representation.resolve(base)
        return c


def load_gate_config(path: str | Path) -> GateConfig:
    """Read and validate ``gate.yaml``; relative paths resolve against its folder."""
    raw = read_yaml_mapping(path, "gate config", "data, old and new")
    return GateConfig.model_validate(raw).resolve(Path(path).resolve().parent)
