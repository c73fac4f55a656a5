from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FloatValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("f32le", "values")
    F32LE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    f32le: bytes
    values: FloatValues
    def __init__(self, f32le: _Optional[bytes] = ..., values: _Optional[_Union[FloatValues, _Mapping]] = ...) -> None: ...

class EmbeddingMatrix(_message.Message):
    __slots__ = ("rows", "dim", "f32le", "values")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    F32LE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    f32le: bytes
    values: FloatValues
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., f32le: _Optional[bytes] = ..., values: _Optional[_Union[FloatValues, _Mapping]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("request_id", "embedding", "embedder_version", "classifier_version", "text", "heads")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    embedding: Embedding
    embedder_version: str
    classifier_version: str
    text: str
    heads: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., embedder_version: _Optional[str] = ..., classifier_version: _Optional[str] = ..., text: _Optional[str] = ..., heads: _Optional[_Iterable[str]] = ...) -> None: ...

class HeadScores(_message.Message):
    __slots__ = ("heads", "rows", "p_unsafe_f32le", "flagged", "confidence_f32le")
    HEADS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_F32LE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_F32LE_FIELD_NUMBER: _ClassVar[int]
    heads: _containers.RepeatedScalarFieldContainer[str]
    rows: int
    p_unsafe_f32le: bytes
    flagged: bytes
    confidence_f32le: bytes
    def __init__(self, heads: _Optional[_Iterable[str]] = ..., rows: _Optional[int] = ..., p_unsafe_f32le: _Optional[bytes] = ..., flagged: _Optional[bytes] = ..., confidence_f32le: _Optional[bytes] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("request_id", "p_unsafe", "flagged", "confidence", "classifier_version", "heads")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    p_unsafe: float
    flagged: bool
    confidence: float
    classifier_version: str
    heads: HeadScores
    def __init__(self, request_id: _Optional[str] = ..., p_unsafe: _Optional[float] = ..., flagged: _Optional[bool] = ..., confidence: _Optional[float] = ..., classifier_version: _Optional[str] = ..., heads: _Optional[_Union[HeadScores, _Mapping]] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("request_ids", "embeddings", "embedder_version", "classifier_version", "texts", "heads", "packed_request_ids")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    PACKED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    embeddings: EmbeddingMatrix
    embedder_version: str
    classifier_version: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    heads: _containers.RepeatedScalarFieldContainer[str]
    packed_request_ids: bytes
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., embedder_version: _Optional[str] = ..., classifier_version: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., heads: _Optional[_Iterable[str]] = ..., packed_request_ids: _Optional[bytes] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("p_unsafe", "flagged", "confidence", "classifier_version", "heads")
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    p_unsafe: _containers.RepeatedScalarFieldContainer[float]
    flagged: _containers.RepeatedScalarFieldContainer[bool]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    classifier_version: str
    heads: HeadScores
    def __init__(self, p_unsafe: _Optional[_Iterable[float]] = ..., flagged: _Optional[_Iterable[bool]] = ..., confidence: _Optional[_Iterable[float]] = ..., classifier_version: _Optional[str] = ..., heads: _Optional[_Union[HeadScores, _Mapping]] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("request_ids", "embeddings", "p_unsafe", "embedder_version", "packed_request_ids")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    embeddings: EmbeddingMatrix
    p_unsafe: _containers.RepeatedScalarFieldContainer[float]
    embedder_version: str
    packed_request_ids: bytes
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., p_unsafe: _Optional[_Iterable[float]] = ..., embedder_version: _Optional[str] = ..., packed_request_ids: _Optional[bytes] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("request_id", "unsafe", "p_unsafe", "embedder_version", "classifier_version", "head")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    unsafe: bool
    p_unsafe: float
    embedder_version: str
    classifier_version: str
    head: str
    def __init__(self, request_id: _Optional[str] = ..., unsafe: _Optional[bool] = ..., p_unsafe: _Optional[float] = ..., embedder_version: _Optional[str] = ..., classifier_version: _Optional[str] = ..., head: _Optional[str] = ...) -> None: ...

class SubmitLabelsRequest(_message.Message):
    __slots__ = ("labels", "packed_request_ids", "packed_unsafe", "packed_head", "packed_p_unsafe", "packed_embedder_version", "packed_classifier_version")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PACKED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    PACKED_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    PACKED_HEAD_FIELD_NUMBER: _ClassVar[int]
    PACKED_P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    PACKED_EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKED_CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    packed_request_ids: bytes
    packed_unsafe: bytes
    packed_head: str
    packed_p_unsafe: bytes
    packed_embedder_version: str
    packed_classifier_version: str
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., packed_request_ids: _Optional[bytes] = ..., packed_unsafe: _Optional[bytes] = ..., packed_head: _Optional[str] = ..., packed_p_unsafe: _Optional[bytes] = ..., packed_embedder_version: _Optional[str] = ..., packed_classifier_version: _Optional[str] = ...) -> None: ...

class SubmitLabelsResponse(_message.Message):
    __slots__ = ("received", "joined", "unknown", "expired", "already_labelled", "unmatched_request_ids", "joined_carried", "carried_refused")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_LABELLED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    JOINED_CARRIED_FIELD_NUMBER: _ClassVar[int]
    CARRIED_REFUSED_FIELD_NUMBER: _ClassVar[int]
    received: int
    joined: int
    unknown: int
    expired: int
    already_labelled: int
    unmatched_request_ids: _containers.RepeatedScalarFieldContainer[str]
    joined_carried: int
    carried_refused: int
    def __init__(self, received: _Optional[int] = ..., joined: _Optional[int] = ..., unknown: _Optional[int] = ..., expired: _Optional[int] = ..., already_labelled: _Optional[int] = ..., unmatched_request_ids: _Optional[_Iterable[str]] = ..., joined_carried: _Optional[int] = ..., carried_refused: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EmbedderIdentity(_message.Message):
    __slots__ = ("name", "version", "weights_sha256", "pooling", "accepted_versions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    weights_sha256: str
    pooling: str
    accepted_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., pooling: _Optional[str] = ..., accepted_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class TrafficStatus(_message.Message):
    __slots__ = ("predictions", "observed", "flagged", "embedder_version_mismatches")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_MISMATCHES_FIELD_NUMBER: _ClassVar[int]
    predictions: int
    observed: int
    flagged: int
    embedder_version_mismatches: int
    def __init__(self, predictions: _Optional[int] = ..., observed: _Optional[int] = ..., flagged: _Optional[int] = ..., embedder_version_mismatches: _Optional[int] = ...) -> None: ...

class LabelStatus(_message.Message):
    __slots__ = ("received", "joined", "unknown", "expired", "already_labelled", "joined_carried", "carried_refused")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_LABELLED_FIELD_NUMBER: _ClassVar[int]
    JOINED_CARRIED_FIELD_NUMBER: _ClassVar[int]
    CARRIED_REFUSED_FIELD_NUMBER: _ClassVar[int]
    received: int
    joined: int
    unknown: int
    expired: int
    already_labelled: int
    joined_carried: int
    carried_refused: int
    def __init__(self, received: _Optional[int] = ..., joined: _Optional[int] = ..., unknown: _Optional[int] = ..., expired: _Optional[int] = ..., already_labelled: _Optional[int] = ..., joined_carried: _Optional[int] = ..., carried_refused: _Optional[int] = ...) -> None: ...

class PredictionStoreStatus(_message.Message):
    __slots__ = ("entries", "capacity", "ttl_seconds", "evicted_capacity", "evicted_ttl", "durable", "backend", "unfolded_labels", "errors", "snapshots_written", "last_snapshot_seconds_ago", "labels_replayed_at_start", "predictions_not_recorded")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    EVICTED_TTL_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    UNFOLDED_LABELS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SNAPSHOT_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    LABELS_REPLAYED_AT_START_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_NOT_RECORDED_FIELD_NUMBER: _ClassVar[int]
    entries: int
    capacity: int
    ttl_seconds: float
    evicted_capacity: int
    evicted_ttl: int
    durable: bool
    backend: str
    unfolded_labels: int
    errors: int
    snapshots_written: int
    last_snapshot_seconds_ago: float
    labels_replayed_at_start: int
    predictions_not_recorded: int
    def __init__(self, entries: _Optional[int] = ..., capacity: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., evicted_capacity: _Optional[int] = ..., evicted_ttl: _Optional[int] = ..., durable: _Optional[bool] = ..., backend: _Optional[str] = ..., unfolded_labels: _Optional[int] = ..., errors: _Optional[int] = ..., snapshots_written: _Optional[int] = ..., last_snapshot_seconds_ago: _Optional[float] = ..., labels_replayed_at_start: _Optional[int] = ..., predictions_not_recorded: _Optional[int] = ...) -> None: ...

class PipelineStatus(_message.Message):
    __slots__ = ("queued", "processed_rows", "sampled_out_rows")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_ROWS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_OUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    queued: int
    processed_rows: int
    sampled_out_rows: int
    def __init__(self, queued: _Optional[int] = ..., processed_rows: _Optional[int] = ..., sampled_out_rows: _Optional[int] = ...) -> None: ...

class DetectorReading(_message.Message):
    __slots__ = ("name", "statistic", "threshold", "alarm", "window_rows", "alarms_total", "evaluated_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    ALARMS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    statistic: float
    threshold: float
    alarm: bool
    window_rows: int
    alarms_total: int
    evaluated_at: float
    def __init__(self, name: _Optional[str] = ..., statistic: _Optional[float] = ..., threshold: _Optional[float] = ..., alarm: _Optional[bool] = ..., window_rows: _Optional[int] = ..., alarms_total: _Optional[int] = ..., evaluated_at: _Optional[float] = ...) -> None: ...

class ConfidenceProfile(_message.Message):
    __slots__ = ("mean_confidence", "high_confidence_share", "positive_rate")
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    HIGH_CONFIDENCE_SHARE_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    mean_confidence: float
    high_confidence_share: float
    positive_rate: float
    def __init__(self, mean_confidence: _Optional[float] = ..., high_confidence_share: _Optional[float] = ..., positive_rate: _Optional[float] = ...) -> None: ...

class ConfidenceStatus(_message.Message):
    __slots__ = ("window", "reference", "mean_confidence_change", "mean_confidence_relative_change", "band")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_RELATIVE_CHANGE_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    window: ConfidenceProfile
    reference: ConfidenceProfile
    mean_confidence_change: float
    mean_confidence_relative_change: float
    band: float
    def __init__(self, window: _Optional[_Union[ConfidenceProfile, _Mapping]] = ..., reference: _Optional[_Union[ConfidenceProfile, _Mapping]] = ..., mean_confidence_change: _Optional[float] = ..., mean_confidence_relative_change: _Optional[float] = ..., band: _Optional[float] = ...) -> None: ...

class ChangePointStatus(_message.Message):
    __slots__ = ("detector", "stream", "change_points", "last_change_at", "samples", "null_change_points_per_10k")
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CHANGE_POINTS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_AT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NULL_CHANGE_POINTS_PER_10K_FIELD_NUMBER: _ClassVar[int]
    detector: str
    stream: str
    change_points: int
    last_change_at: int
    samples: int
    null_change_points_per_10k: float
    def __init__(self, detector: _Optional[str] = ..., stream: _Optional[str] = ..., change_points: _Optional[int] = ..., last_change_at: _Optional[int] = ..., samples: _Optional[int] = ..., null_change_points_per_10k: _Optional[float] = ...) -> None: ...

class WindowConfig(_message.Message):
    __slots__ = ("mode", "size", "stride", "seconds", "stride_seconds", "max_rows")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    STRIDE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    size: int
    stride: int
    seconds: float
    stride_seconds: float
    max_rows: int
    def __init__(self, mode: _Optional[str] = ..., size: _Optional[int] = ..., stride: _Optional[int] = ..., seconds: _Optional[float] = ..., stride_seconds: _Optional[float] = ..., max_rows: _Optional[int] = ...) -> None: ...

class DetectionStatus(_message.Message):
    __slots__ = ("enabled", "disabled_reason", "calibration_source", "false_alarm_rate", "window", "windows_evaluated", "windows_skipped", "rows_seen", "detectors", "centroid_angle_degrees", "confidence", "change_points", "input_drift", "change_thinned_rows", "input_drift_windows", "input_drift_false_alarm_rate")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FALSE_ALARM_RATE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_EVALUATED_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROWS_SEEN_FIELD_NUMBER: _ClassVar[int]
    DETECTORS_FIELD_NUMBER: _ClassVar[int]
    CENTROID_ANGLE_DEGREES_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CHANGE_POINTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DRIFT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_THINNED_ROWS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DRIFT_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DRIFT_FALSE_ALARM_RATE_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    disabled_reason: str
    calibration_source: str
    false_alarm_rate: float
    window: WindowConfig
    windows_evaluated: int
    windows_skipped: int
    rows_seen: int
    detectors: _containers.RepeatedCompositeFieldContainer[DetectorReading]
    centroid_angle_degrees: float
    confidence: ConfidenceStatus
    change_points: _containers.RepeatedCompositeFieldContainer[ChangePointStatus]
    input_drift: bool
    change_thinned_rows: int
    input_drift_windows: int
    input_drift_false_alarm_rate: float
    def __init__(self, enabled: _Optional[bool] = ..., disabled_reason: _Optional[str] = ..., calibration_source: _Optional[str] = ..., false_alarm_rate: _Optional[float] = ..., window: _Optional[_Union[WindowConfig, _Mapping]] = ..., windows_evaluated: _Optional[int] = ..., windows_skipped: _Optional[int] = ..., rows_seen: _Optional[int] = ..., detectors: _Optional[_Iterable[_Union[DetectorReading, _Mapping]]] = ..., centroid_angle_degrees: _Optional[float] = ..., confidence: _Optional[_Union[ConfidenceStatus, _Mapping]] = ..., change_points: _Optional[_Iterable[_Union[ChangePointStatus, _Mapping]]] = ..., input_drift: _Optional[bool] = ..., change_thinned_rows: _Optional[int] = ..., input_drift_windows: _Optional[int] = ..., input_drift_false_alarm_rate: _Optional[float] = ...) -> None: ...

class CalibrationMetrics(_message.Message):
    __slots__ = ("n", "positives", "roc_auc", "accuracy", "balanced_accuracy", "ece", "ece_positive_class", "brier", "log_loss", "silent_failure_ratio", "high_confidence_error_ratio", "mean_confidence", "confidence_minus_accuracy")
    N_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    ECE_POSITIVE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BRIER_FIELD_NUMBER: _ClassVar[int]
    LOG_LOSS_FIELD_NUMBER: _ClassVar[int]
    SILENT_FAILURE_RATIO_FIELD_NUMBER: _ClassVar[int]
    HIGH_CONFIDENCE_ERROR_RATIO_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_MINUS_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    n: int
    positives: int
    roc_auc: float
    accuracy: float
    balanced_accuracy: float
    ece: float
    ece_positive_class: float
    brier: float
    log_loss: float
    silent_failure_ratio: float
    high_confidence_error_ratio: float
    mean_confidence: float
    confidence_minus_accuracy: float
    def __init__(self, n: _Optional[int] = ..., positives: _Optional[int] = ..., roc_auc: _Optional[float] = ..., accuracy: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., ece: _Optional[float] = ..., ece_positive_class: _Optional[float] = ..., brier: _Optional[float] = ..., log_loss: _Optional[float] = ..., silent_failure_ratio: _Optional[float] = ..., high_confidence_error_ratio: _Optional[float] = ..., mean_confidence: _Optional[float] = ..., confidence_minus_accuracy: _Optional[float] = ...) -> None: ...

class LabelledStatus(_message.Message):
    __slots__ = ("window_size", "rolling", "cumulative", "confirmation")
    WINDOW_SIZE_FIELD_NUMBER: _ClassVar[int]
    ROLLING_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    window_size: int
    rolling: CalibrationMetrics
    cumulative: CalibrationMetrics
    confirmation: LabelConfirmation
    def __init__(self, window_size: _Optional[int] = ..., rolling: _Optional[_Union[CalibrationMetrics, _Mapping]] = ..., cumulative: _Optional[_Union[CalibrationMetrics, _Mapping]] = ..., confirmation: _Optional[_Union[LabelConfirmation, _Mapping]] = ...) -> None: ...

class LabelConfirmation(_message.Message):
    __slots__ = ("enabled", "reference_auc", "live_auc", "drop", "standard_error", "drop_lower_bound", "p_value", "confirmed", "n_positive", "n_negative", "margin", "alpha", "confirm_every", "checks", "confirmed_checks")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_AUC_FIELD_NUMBER: _ClassVar[int]
    LIVE_AUC_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    DROP_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    N_POSITIVE_FIELD_NUMBER: _ClassVar[int]
    N_NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_EVERY_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_CHECKS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    reference_auc: float
    live_auc: float
    drop: float
    standard_error: float
    drop_lower_bound: float
    p_value: float
    confirmed: bool
    n_positive: int
    n_negative: int
    margin: float
    alpha: float
    confirm_every: int
    checks: int
    confirmed_checks: int
    def __init__(self, enabled: _Optional[bool] = ..., reference_auc: _Optional[float] = ..., live_auc: _Optional[float] = ..., drop: _Optional[float] = ..., standard_error: _Optional[float] = ..., drop_lower_bound: _Optional[float] = ..., p_value: _Optional[float] = ..., confirmed: _Optional[bool] = ..., n_positive: _Optional[int] = ..., n_negative: _Optional[int] = ..., margin: _Optional[float] = ..., alpha: _Optional[float] = ..., confirm_every: _Optional[int] = ..., checks: _Optional[int] = ..., confirmed_checks: _Optional[int] = ...) -> None: ...

class IdentityStatus(_message.Message):
    __slots__ = ("embedder_version_mismatch", "last_mismatch_seconds_ago")
    EMBEDDER_VERSION_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    LAST_MISMATCH_SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    embedder_version_mismatch: bool
    last_mismatch_seconds_ago: float
    def __init__(self, embedder_version_mismatch: _Optional[bool] = ..., last_mismatch_seconds_ago: _Optional[float] = ...) -> None: ...

class CanaryStatus(_message.Message):
    __slots__ = ("enabled", "size", "runs", "last_run_at", "last_run_seconds", "metrics", "last_error")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    size: int
    runs: int
    last_run_at: float
    last_run_seconds: float
    metrics: CalibrationMetrics
    last_error: str
    def __init__(self, enabled: _Optional[bool] = ..., size: _Optional[int] = ..., runs: _Optional[int] = ..., last_run_at: _Optional[float] = ..., last_run_seconds: _Optional[float] = ..., metrics: _Optional[_Union[CalibrationMetrics, _Mapping]] = ..., last_error: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("classifier_version", "embedder", "embedding_dim", "flag_threshold", "uptime_seconds", "traffic", "labels", "store", "pipeline", "bundle_sha256", "detection", "labelled", "identity", "canary", "silent_failure", "paired_canaries", "heads")
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    FLAG_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DETECTION_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    SILENT_FAILURE_FIELD_NUMBER: _ClassVar[int]
    PAIRED_CANARIES_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    classifier_version: str
    embedder: EmbedderIdentity
    embedding_dim: int
    flag_threshold: float
    uptime_seconds: float
    traffic: TrafficStatus
    labels: LabelStatus
    store: PredictionStoreStatus
    pipeline: PipelineStatus
    bundle_sha256: str
    detection: DetectionStatus
    labelled: LabelledStatus
    identity: IdentityStatus
    canary: CanaryStatus
    silent_failure: SilentFailureStatus
    paired_canaries: PairedCanaryStatus
    heads: _containers.RepeatedCompositeFieldContainer[HeadStatus]
    def __init__(self, classifier_version: _Optional[str] = ..., embedder: _Optional[_Union[EmbedderIdentity, _Mapping]] = ..., embedding_dim: _Optional[int] = ..., flag_threshold: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., traffic: _Optional[_Union[TrafficStatus, _Mapping]] = ..., labels: _Optional[_Union[LabelStatus, _Mapping]] = ..., store: _Optional[_Union[PredictionStoreStatus, _Mapping]] = ..., pipeline: _Optional[_Union[PipelineStatus, _Mapping]] = ..., bundle_sha256: _Optional[str] = ..., detection: _Optional[_Union[DetectionStatus, _Mapping]] = ..., labelled: _Optional[_Union[LabelledStatus, _Mapping]] = ..., identity: _Optional[_Union[IdentityStatus, _Mapping]] = ..., canary: _Optional[_Union[CanaryStatus, _Mapping]] = ..., silent_failure: _Optional[_Union[SilentFailureStatus, _Mapping]] = ..., paired_canaries: _Optional[_Union[PairedCanaryStatus, _Mapping]] = ..., heads: _Optional[_Iterable[_Union[HeadStatus, _Mapping]]] = ...) -> None: ...

class HeadStatus(_message.Message):
    __slots__ = ("name", "is_default", "flag_threshold", "high_confidence", "flagged", "confidence", "labelled", "paired_canary", "silent_failure", "canary_positives")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    FLAG_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    HIGH_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    PAIRED_CANARY_FIELD_NUMBER: _ClassVar[int]
    SILENT_FAILURE_FIELD_NUMBER: _ClassVar[int]
    CANARY_POSITIVES_FIELD_NUMBER: _ClassVar[int]
    name: str
    is_default: bool
    flag_threshold: float
    high_confidence: float
    flagged: int
    confidence: ConfidenceStatus
    labelled: LabelledStatus
    paired_canary: PairedCanaryReading
    silent_failure: SilentFailureStatus
    canary_positives: int
    def __init__(self, name: _Optional[str] = ..., is_default: _Optional[bool] = ..., flag_threshold: _Optional[float] = ..., high_confidence: _Optional[float] = ..., flagged: _Optional[int] = ..., confidence: _Optional[_Union[ConfidenceStatus, _Mapping]] = ..., labelled: _Optional[_Union[LabelledStatus, _Mapping]] = ..., paired_canary: _Optional[_Union[PairedCanaryReading, _Mapping]] = ..., silent_failure: _Optional[_Union[SilentFailureStatus, _Mapping]] = ..., canary_positives: _Optional[int] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("estimate", "low", "high")
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    estimate: float
    low: float
    high: float
    def __init__(self, estimate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class PairedCanaryReading(_message.Message):
    __slots__ = ("size", "positives", "at", "source", "embedder_version", "angle_mean_degrees", "angle_median_degrees", "angle_p90_degrees", "angle_max_degrees", "linear_cka", "angle_tolerance_degrees", "embedder_changed", "roc_auc", "reference_roc_auc", "accuracy", "reference_accuracy", "ece", "reference_ece", "mean_confidence", "reference_mean_confidence", "flip_rate", "auc_drop", "auc_drop_standard_error", "auc_drop_lower_bound", "auc_drop_p_value", "margin", "alpha", "failure", "reference_brier", "live_brier", "brier_increase", "brier_increase_lower_bound", "brier_margin", "auc_drop_confirmed", "brier_increase_confirmed")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    POSITIVES_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANGLE_MEAN_DEGREES_FIELD_NUMBER: _ClassVar[int]
    ANGLE_MEDIAN_DEGREES_FIELD_NUMBER: _ClassVar[int]
    ANGLE_P90_DEGREES_FIELD_NUMBER: _ClassVar[int]
    ANGLE_MAX_DEGREES_FIELD_NUMBER: _ClassVar[int]
    LINEAR_CKA_FIELD_NUMBER: _ClassVar[int]
    ANGLE_TOLERANCE_DEGREES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_CHANGED_FIELD_NUMBER: _ClassVar[int]
    ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ROC_AUC_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ECE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ECE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FLIP_RATE_FIELD_NUMBER: _ClassVar[int]
    AUC_DROP_FIELD_NUMBER: _ClassVar[int]
    AUC_DROP_STANDARD_ERROR_FIELD_NUMBER: _ClassVar[int]
    AUC_DROP_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    AUC_DROP_P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_BRIER_FIELD_NUMBER: _ClassVar[int]
    LIVE_BRIER_FIELD_NUMBER: _ClassVar[int]
    BRIER_INCREASE_FIELD_NUMBER: _ClassVar[int]
    BRIER_INCREASE_LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    BRIER_MARGIN_FIELD_NUMBER: _ClassVar[int]
    AUC_DROP_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    BRIER_INCREASE_CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    size: int
    positives: int
    at: float
    source: str
    embedder_version: str
    angle_mean_degrees: float
    angle_median_degrees: float
    angle_p90_degrees: float
    angle_max_degrees: float
    linear_cka: float
    angle_tolerance_degrees: float
    embedder_changed: bool
    roc_auc: Interval
    reference_roc_auc: float
    accuracy: Interval
    reference_accuracy: float
    ece: Interval
    reference_ece: float
    mean_confidence: Interval
    reference_mean_confidence: float
    flip_rate: Interval
    auc_drop: float
    auc_drop_standard_error: float
    auc_drop_lower_bound: float
    auc_drop_p_value: float
    margin: float
    alpha: float
    failure: bool
    reference_brier: float
    live_brier: float
    brier_increase: float
    brier_increase_lower_bound: float
    brier_margin: float
    auc_drop_confirmed: bool
    brier_increase_confirmed: bool
    def __init__(self, size: _Optional[int] = ..., positives: _Optional[int] = ..., at: _Optional[float] = ..., source: _Optional[str] = ..., embedder_version: _Optional[str] = ..., angle_mean_degrees: _Optional[float] = ..., angle_median_degrees: _Optional[float] = ..., angle_p90_degrees: _Optional[float] = ..., angle_max_degrees: _Optional[float] = ..., linear_cka: _Optional[float] = ..., angle_tolerance_degrees: _Optional[float] = ..., embedder_changed: _Optional[bool] = ..., roc_auc: _Optional[_Union[Interval, _Mapping]] = ..., reference_roc_auc: _Optional[float] = ..., accuracy: _Optional[_Union[Interval, _Mapping]] = ..., reference_accuracy: _Optional[float] = ..., ece: _Optional[_Union[Interval, _Mapping]] = ..., reference_ece: _Optional[float] = ..., mean_confidence: _Optional[_Union[Interval, _Mapping]] = ..., reference_mean_confidence: _Optional[float] = ..., flip_rate: _Optional[_Union[Interval, _Mapping]] = ..., auc_drop: _Optional[float] = ..., auc_drop_standard_error: _Optional[float] = ..., auc_drop_lower_bound: _Optional[float] = ..., auc_drop_p_value: _Optional[float] = ..., margin: _Optional[float] = ..., alpha: _Optional[float] = ..., failure: _Optional[bool] = ..., reference_brier: _Optional[float] = ..., live_brier: _Optional[float] = ..., brier_increase: _Optional[float] = ..., brier_increase_lower_bound: _Optional[float] = ..., brier_margin: _Optional[float] = ..., auc_drop_confirmed: _Optional[bool] = ..., brier_increase_confirmed: _Optional[bool] = ...) -> None: ...

class PairedCanaryStatus(_message.Message):
    __slots__ = ("available", "unavailable_reason", "canary_set_id", "size", "submissions", "failures", "last_submitted_at", "last")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    CANARY_SET_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SUBMISSIONS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    available: bool
    unavailable_reason: str
    canary_set_id: str
    size: int
    submissions: int
    failures: int
    last_submitted_at: float
    last: PairedCanaryReading
    def __init__(self, available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., canary_set_id: _Optional[str] = ..., size: _Optional[int] = ..., submissions: _Optional[int] = ..., failures: _Optional[int] = ..., last_submitted_at: _Optional[float] = ..., last: _Optional[_Union[PairedCanaryReading, _Mapping]] = ...) -> None: ...

class SilentFailureStatus(_message.Message):
    __slots__ = ("active", "evidence", "sources", "unavailable", "false_alarm_rate", "summary")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    FALSE_ALARM_RATE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    active: bool
    evidence: _containers.RepeatedScalarFieldContainer[str]
    sources: _containers.RepeatedScalarFieldContainer[str]
    unavailable: _containers.RepeatedScalarFieldContainer[str]
    false_alarm_rate: float
    summary: str
    def __init__(self, active: _Optional[bool] = ..., evidence: _Optional[_Iterable[str]] = ..., sources: _Optional[_Iterable[str]] = ..., unavailable: _Optional[_Iterable[str]] = ..., false_alarm_rate: _Optional[float] = ..., summary: _Optional[str] = ...) -> None: ...

class GetCanariesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCanariesResponse(_message.Message):
    __slots__ = ("canary_set_id", "texts", "embedding_dim", "bundle_sha256", "classifier_version", "embedder")
    CANARY_SET_ID_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    canary_set_id: str
    texts: _containers.RepeatedScalarFieldContainer[str]
    embedding_dim: int
    bundle_sha256: str
    classifier_version: str
    embedder: EmbedderIdentity
    def __init__(self, canary_set_id: _Optional[str] = ..., texts: _Optional[_Iterable[str]] = ..., embedding_dim: _Optional[int] = ..., bundle_sha256: _Optional[str] = ..., classifier_version: _Optional[str] = ..., embedder: _Optional[_Union[EmbedderIdentity, _Mapping]] = ...) -> None: ...

class SubmitCanaryEmbeddingsRequest(_message.Message):
    __slots__ = ("canary_set_id", "embeddings", "embedder_version")
    CANARY_SET_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    canary_set_id: str
    embeddings: EmbeddingMatrix
    embedder_version: str
    def __init__(self, canary_set_id: _Optional[str] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., embedder_version: _Optional[str] = ...) -> None: ...

class SubmitCanaryEmbeddingsResponse(_message.Message):
    __slots__ = ("reading", "heads")
    READING_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    reading: PairedCanaryReading
    heads: _containers.RepeatedCompositeFieldContainer[HeadCanaryReading]
    def __init__(self, reading: _Optional[_Union[PairedCanaryReading, _Mapping]] = ..., heads: _Optional[_Iterable[_Union[HeadCanaryReading, _Mapping]]] = ...) -> None: ...

class HeadCanaryReading(_message.Message):
    __slots__ = ("head", "reading")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    READING_FIELD_NUMBER: _ClassVar[int]
    head: str
    reading: PairedCanaryReading
    def __init__(self, head: _Optional[str] = ..., reading: _Optional[_Union[PairedCanaryReading, _Mapping]] = ...) -> None: ...

class ReloadBundleRequest(_message.Message):
    __slots__ = ("bundle_path",)
    BUNDLE_PATH_FIELD_NUMBER: _ClassVar[int]
    bundle_path: str
    def __init__(self, bundle_path: _Optional[str] = ...) -> None: ...

class ReloadBundleResponse(_message.Message):
    __slots__ = ("reloaded", "bundle_sha256", "classifier_version", "message")
    RELOADED_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reloaded: bool
    bundle_sha256: str
    classifier_version: str
    message: str
    def __init__(self, reloaded: _Optional[bool] = ..., bundle_sha256: _Optional[str] = ..., classifier_version: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("written", "snapshots_written")
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    written: bool
    snapshots_written: int
    def __init__(self, written: _Optional[bool] = ..., snapshots_written: _Optional[int] = ...) -> None: ...
