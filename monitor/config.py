"""Sidecar configuration: flags > environment (``SILENTWATCH_*``) > YAML file > defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from silentwatch.monitor.detection.registry import (
    DEFAULT_CHANGE_PAIRS,
    check_detector_names,
    parse_change_pair,
)
from silentwatch.monitor.evaluation import paired
from silentwatch.monitor.evaluation.confirmation import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIRM_EVERY,
    DEFAULT_MARGIN,
)
from silentwatch.monitor.yaml_file import ConfigError, read_yaml_mapping

MiB = 1024 * 1024


class ServeSettings(BaseSettings):
    """Everything ``silentwatch serve`` can be told. Every key is also ``SILENTWATCH_<KEY>``."""

    model_config = SettingsConfigDict(
        env_prefix="SILENTWATCH_", extra="forbid", validate_default=True
    )
    # The config file's settings (load_settings sets them on a subclass; none by default).
    file_values: ClassVar[dict[str, Any]] = {}

    bundle: Path = Field(description="bundle directory to serve")
    host: str = Field("127.0.0.1", description="gRPC bind address (loopback by default)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_host: str = Field("127.0.0.1", description="/metrics bind address")
    metrics_port: int = Field(9464, ge=0, le=65535, description="/metrics port; 0 picks a free one")
    workers: int = Field(8, ge=1, le=256, description="gRPC handler threads")
    max_message_bytes: int = Field(16 * MiB, ge=1024, description="largest gRPC message accepted")
    max_batch_rows: int = Field(8192, ge=1, description="most rows in one ClassifyBatch/Observe")
    max_request_id_length: int = Field(128, ge=1, le=4096)
    store_capacity: int = Field(250_000, ge=1, description="predictions kept for the label join")
    store_ttl_seconds: float = Field(
        7 * 86400.0, gt=0, description="how long they wait for a label"
    )
    # -- durable state (docs/reliability.md) ---------------------------------------------
    store: Literal["sqlite", "memory"] = Field(
        "sqlite",
        description="where predictions awaiting labels and unfolded labels live: sqlite "
        "(durable: survives restarts and kill -9) or memory (lost on restart)",
    )
    state_dir: Path = Field(
        Path("silentwatch-state"),
        description="directory of the durable store (store.sqlite3) and its snapshots; "
        "give each sidecar its own (a volume in containers)",
    )
    store_synchronous: Literal["normal", "full"] = Field(
        "normal",
        description="sqlite durability: normal survives a killed process, full also a power "
        "loss (an fsync per write, slower)",
    )
    store_max_bytes: int = Field(
        1024 * MiB,
        ge=MiB,
        description="size cap of the durable store; beyond it writes fail, are counted "
        "(silentwatch_store_errors_total) and logged, and serving continues",
    )
    snapshot_interval_seconds: float = Field(
        30.0, gt=0, description="how often detector windows and calibration state are saved"
    )
    snapshot_max_age_seconds: float = Field(
        3600.0,
        gt=0,
        description="a detector-window snapshot older than this is discarded at start (logged); "
        "the labelled calibration state is always restored",
    )
    max_queued_rows: int = Field(
        32768, ge=1, description="rows the statistics worker may lag behind before sampling out"
    )
    embedder_version_policy: Literal["reject", "warn"] = Field(
        "reject",
        description="a request whose embedder_version the bundle was not validated for: "
        "refuse it (FAILED_PRECONDITION) or serve it and count it",
    )
    require_embedder_version: bool = Field(
        False, description="refuse requests that carry no embedder_version"
    )
    drain_seconds: float = Field(
        0.0, ge=0, description="after SIGTERM, report NOT_SERVING this long before closing"
    )
    grace_seconds: float = Field(10.0, ge=0, description="time in-flight calls get to finish")
    recording: bool = Field(
        True,
        description="record predictions for the label join and statistics; turn off only to "
        "measure the bare scoring path",
    )
    # -- detection engine (docs/detection.md) --------------------------------------------
    detection: bool = Field(
        True, description="run the drift detectors and calibration windows (off: traffic only)"
    )
    window_mode: Literal["count", "time"] = Field(
        "count", description="cut traffic into windows by row count or by time"
    )
    window_size: int | None = Field(
        None, ge=16, description="rows per count window (default: the bundle's calibrated size)"
    )
    window_stride: int | None = Field(
        None, ge=1, description="rows between evaluations; default = window_size (tumbling)"
    )
    window_seconds: float = Field(60.0, gt=0, description="time-window length")
    window_stride_seconds: float | None = Field(
        None, gt=0, description="seconds between time-window evaluations (default: tumbling)"
    )
    max_window_rows: int = Field(
        2048, ge=16, description="most rows a time window keeps (the newest)"
    )
    detectors: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="window detectors to run (default: every one the bundle calibrated); see "
        "docs/detection.md",
    )
    change_detectors: Annotated[list[str], NoDecode] = Field(
        [f"{kind}:{stream}" for kind, stream in DEFAULT_CHANGE_PAIRS],
        description="river change detectors as kind:stream (kswin:score is available, slow)",
    )
    domain_every: int = Field(
        4, ge=1, description="run the periodic detectors (the domain classifier) every k-th window"
    )
    pipeline_linger_seconds: float = Field(
        0.002,
        ge=0,
        le=0.1,
        description="the statistics worker, woken by small batches, waits this long for more "
        "before processing (one pass per few ms instead of one per unary call); 0: at once",
    )
    detection_process: bool = Field(
        False,
        description="compute window statistics in a child process (lower priority, fed "
        "through shared memory) instead of on the pipeline worker; see docs/detection.md",
    )
    max_window_evaluations_per_second: float = Field(
        5.0, ge=0, description="skip (and count) window evaluations beyond this rate; 0: no limit"
    )
    change_max_samples_per_second: float = Field(
        5000.0,
        ge=0,
        description="thin (and count) the change-point streams beyond this rate; 0: no limit",
    )
    confidence_band: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="a relative fall of mean confidence up to this fraction of the reference "
        "reads as 'steady' in GetStatus (informational; paper A: it fell only ~14%)",
    )
    label_window: int = Field(1000, ge=10, description="labelled samples in the rolling window")
    confirmation_margin: float = Field(
        DEFAULT_MARGIN,
        ge=0,
        lt=0.5,
        description="label confirmation: a ROC-AUC drop up to this is no worse (benign shifts "
        "stay within 0.01)",
    )
    confirmation_alpha: float = Field(
        DEFAULT_ALPHA,
        gt=0,
        lt=0.5,
        description="label confirmation: false-confirmation rate per check when no worse "
        "(with canary_alpha: the silent-failure signal's rate per check round)",
    )
    confirm_every: int = Field(
        DEFAULT_CONFIRM_EVERY, ge=1, description="label confirmation: joined labels between checks"
    )
    mismatch_hold_seconds: float = Field(
        300.0, gt=0, description="how long the embedder-version mismatch gauge stays up"
    )
    # -- text mode and canaries (needs the offline extra) ---------------------------------
    text_mode: bool = Field(
        False,
        description="accept text in Classify/ClassifyBatch and embed it with the bundle's own "
        "embedder (needs the offline extra); also runs the bundle's canaries",
    )
    text_embedder_path: Path | None = Field(
        None,
        description="local model directory for text mode when the bundle's embedder is "
        "not one silentwatch ships; its weights must match the bundle's sha256",
    )
    max_text_chars: int = Field(20_000, ge=1, description="longest text accepted in text mode")
    canary_interval_seconds: float = Field(
        300.0, gt=0, description="how often the bundle's canary texts are re-embedded and scored"
    )
    # -- paired canaries (docs/detection.md) ---------------------------------------------
    canary_margin: float = Field(
        paired.DEFAULT_MARGIN,
        ge=0,
        lt=0.5,
        description="paired canaries: a canary ROC-AUC drop up to this is no worse",
    )
    canary_alpha: float = Field(
        paired.DEFAULT_ALPHA,
        gt=0,
        lt=0.5,
        description="paired canaries: false-failure rate per submission when no worse, split "
        "between the AUC and the Brier test (with confirmation_alpha: the silent-failure "
        "signal's rate per check round)",
    )
    canary_brier_margin: float = Field(
        paired.DEFAULT_BRIER_MARGIN,
        ge=0,
        lt=1,
        description="paired canaries: a rise of the canaries' mean Brier score up to this is "
        "no worse",
    )
    canary_angle_tolerance_degrees: float = Field(
        paired.DEFAULT_ANGLE_TOLERANCE,
        ge=0,
        lt=90,
        description="paired canaries: a mean angle above this reads as 'embedder changed' "
        "(informational; the default sits above the measured numerical noise floor)",
    )
    # -- security (docs/security.md) -----------------------------------------------------
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain (server's own first) for the gRPC port; with "
        "tls_key_file turns TLS on",
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key of tls_cert_file (unencrypted; chmod 600)"
    )
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificate(s): turns mTLS on, clients must present a certificate "
        "signed by one of them",
    )
    admin_enabled: bool = Field(False, description="serve the admin RPCs (needs admin_token_file)")
    admin_token_file: Path | None = Field(
        None,
        description="file holding the admin bearer token (>= 16 printable ASCII characters)",
    )
    bundle_public_key: Path | None = Field(
        None,
        description="PEM Ed25519 public key: refuse a bundle without a valid signature.json "
        "by it (silentwatch bundle keygen / sign)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field(
        "text", description="stderr log lines: text, or one JSON object per line"
    )

    @field_validator("detectors", "change_detectors", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        # Flags and environment variables give "a,b"; YAML gives a list.
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("detectors")
    @classmethod
    def _registered(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else list(check_detector_names(v))

    @field_validator("change_detectors")
    @classmethod
    def _change_pairs(cls, v: list[str]) -> list[str]:
        for item in v:
            parse_change_pair(item)
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file's mapping, as read (and ${NAME}-expanded) by load_settings.
        from_file = InitSettingsSource(settings_cls, init_kwargs=dict(settings_cls.file_values))
        return (init_settings, env_settings, from_file)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> ServeSettings:
    """Build settings; ``overrides`` are command-line flags (``None`` means not given)."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    path = Path(config_file) if config_file else None
    if path is not None and not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    from_file: dict[str, Any] = {}
    settings_cls = ServeSettings
    if path is not None:
        from_file = _read_config_file(path)
        settings_cls = type("ServeSettings", (ServeSettings,), {"file_values": from_file})
    try:
        return settings_cls(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            f"{_source(e['loc'], flags, from_file, path)}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "config file", "setting names to values (`port: 50051` lines)")


def _source(
    loc: tuple[Any, ...], flags: dict[str, Any], from_file: dict[str, Any], path: Path | None
) -> str:
    """Where the offending value came from, by the precedence flags > environment > file."""
    key = str(loc[0]) if loc else ""
    if not key or key in flags:
        return " (flag)" if key else ""
    env = f"SILENTWATCH_{key}".upper()
    if any(name.upper() == env for name in os.environ):
        return f" (environment variable {env})"
    if key in from_file:
        return f" (in {path})"
    return ""
