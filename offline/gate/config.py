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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from silentwatch.monitor.yaml_file import read_yaml_mapping
from silentwatch.offline.audit.config import AuditConfig
from silentwatch.offline.evalset import DataSettings
from silentwatch.offline.execution.settings import ExecutionSettings
from silentwatch.offline.stress.sweep import StressSettings

#: The forward-pass dtypes an embedder accepts (``auto``: float32 on CPU, bfloat16 on CUDA).
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
#: The poolings an embedder accepts (kept in step with ``offline.embedders.base.POOLINGS``,
#: which is not imported here so that reading a config stays free of the embedders).
POOLINGS: tuple[str, ...] = ("mean", "cls", "last_token")
#: The settings a side may override; they change the vectors (or where they are made).
SIDE_SETTINGS: tuple[str, ...] = ("device", "dtype", "max_length", "pooling", "normalize")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_of(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is not None and value not in allowed:
        raise ValueError(f"unknown {what} {value!r}: use one of {', '.join(allowed)}")
    return value


class Side(_Strict):
    """One side of the update: the embedder and, optionally, its own settings.

    Every setting left out (``None``) is the shared ``embedding:`` block's, so a
    configuration-only update (the same weights at another ``max_length``, pooling or
    dtype) is one line under ``new:``.
    """

    embedder: str = Field(
        ...,
        description="minilm | minilm-int8 | paraphrase-l3 | smollm2 | a local model directory",
    )
    bundle: Path | None = Field(
        None, description="the deployed classifier bundle (old side only): judged frozen"
    )
    device: str | None = Field(None, description="default: embedding.device")
    dtype: str | None = Field(None, description="default: embedding.dtype")
    max_length: int | None = Field(None, ge=8, description="default: embedding.max_length")
    pooling: str | None = Field(None, description="default: embedding.pooling")
    normalize: bool | None = Field(None, description="default: embedding.normalize")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str | None) -> str | None:
        return _one_of(v, DTYPES, "dtype")

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, v: str | None) -> str | None:
        return _one_of(v, POOLINGS, "pooling")


class EmbeddingSettings(_Strict):
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8)
    pooling: str | None = Field(None, description="null: each model's own (mean for encoders)")
    normalize: bool = Field(True, description="unit-normalise the rows")
    cache_dir: Path | None = Field(
        Path(".cache/embeddings"), description="re-runs skip the models; null disables"
    )

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        return _one_of(v, DTYPES, "dtype") or v

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, v: str | None) -> str | None:
        return _one_of(v, POOLINGS, "pooling")

    def for_side(self, side: Side) -> EmbeddingSettings:
        """These settings with the side's own ones (those it sets) in their place.

        Parameters
        ----------
        side
            ``old`` or ``new`` from ``gate.yaml``.

        Returns
        -------
        EmbeddingSettings
            The effective settings that side's embedder is opened (and cached) with.
        """
        own = {k: getattr(side, k) for k in SIDE_SETTINGS if getattr(side, k) is not None}
        return self.model_copy(update=own)

    def describe(self) -> dict[str, Any]:
        """The settings that change a side's vectors, for the report."""
        return {k: getattr(self, k) for k in SIDE_SETTINGS}

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
            pooling=self.pooling,
            normalize=self.normalize,
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
    min_positives: int = Field(
        20,
        ge=2,
        description="a head is judged only with at least this many test rows of each class",
    )
    unjudged: Literal["fail", "warn"] = Field(
        "fail",
        description="a head with too few positives to judge fails the gate (fail) or is "
        "reported and shipped as it was (warn)",
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
    execution: ExecutionSettings = Field(
        default_factory=ExecutionSettings,
        description="local (default) or ray: embedding actor pools and stress cells on Ray",
    )
    representation: AuditConfig | None = Field(
        None,
        description="paper B's representation audit of a chat model update (docs/audit.md); "
        "the gate fails when the audit fails",
    )

    def side_settings(self, side: str) -> EmbeddingSettings:
        """The effective embedding settings of ``"old"`` or ``"new"``."""
        return self.embedding.for_side(getattr(self, side))

    def settings_changes(self) -> list[str]:
        """What differs between the two sides, one ``"key: old -> new"`` per setting.

        Returns
        -------
        list of str
            The embedder spec first (when it differs), then each differing setting in
            :data:`SIDE_SETTINGS` order; empty when both sides are configured alike.
        """
        out = []
        if self.old.embedder != self.new.embedder:
            out.append(f"embedder: {self.old.embedder} -> {self.new.embedder}")
        old, new = self.side_settings("old").describe(), self.side_settings("new").describe()
        for k in SIDE_SETTINGS:
            if old[k] != new[k]:
                # null pooling reads "model default": clearer in a report than "None".
                a, b = (("model default" if v is None else v) for v in (old[k], new[k]))
                out.append(f"{k}: {a} -> {b}")
        return out

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
