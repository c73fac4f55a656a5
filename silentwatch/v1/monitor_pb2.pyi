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
    __slots__ = ("request_id", "embedding", "embedder_version", "classifier_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    embedding: Embedding
    embedder_version: str
    classifier_version: str
    def __init__(self, request_id: _Optional[str] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., embedder_version: _Optional[str] = ..., classifier_version: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("request_id", "p_unsafe", "flagged", "confidence", "classifier_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    p_unsafe: float
    flagged: bool
    confidence: float
    classifier_version: str
    def __init__(self, request_id: _Optional[str] = ..., p_unsafe: _Optional[float] = ..., flagged: _Optional[bool] = ..., confidence: _Optional[float] = ..., classifier_version: _Optional[str] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("request_ids", "embeddings", "embedder_version", "classifier_version")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    embeddings: EmbeddingMatrix
    embedder_version: str
    classifier_version: str
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., embedder_version: _Optional[str] = ..., classifier_version: _Optional[str] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("p_unsafe", "flagged", "confidence", "classifier_version")
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_VERSION_FIELD_NUMBER: _ClassVar[int]
    p_unsafe: _containers.RepeatedScalarFieldContainer[float]
    flagged: _containers.RepeatedScalarFieldContainer[bool]
    confidence: _containers.RepeatedScalarFieldContainer[float]
    classifier_version: str
    def __init__(self, p_unsafe: _Optional[_Iterable[float]] = ..., flagged: _Optional[_Iterable[bool]] = ..., confidence: _Optional[_Iterable[float]] = ..., classifier_version: _Optional[str] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("request_ids", "embeddings", "p_unsafe", "embedder_version")
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    P_UNSAFE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    embeddings: EmbeddingMatrix
    p_unsafe: _containers.RepeatedScalarFieldContainer[float]
    embedder_version: str
    def __init__(self, request_ids: _Optional[_Iterable[str]] = ..., embeddings: _Optional[_Union[EmbeddingMatrix, _Mapping]] = ..., p_unsafe: _Optional[_Iterable[float]] = ..., embedder_version: _Optional[str] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("request_id", "unsafe")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    unsafe: bool
    def __init__(self, request_id: _Optional[str] = ..., unsafe: _Optional[bool] = ...) -> None: ...

class SubmitLabelsRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class SubmitLabelsResponse(_message.Message):
    __slots__ = ("received", "joined", "unknown", "expired", "already_labelled", "unmatched_request_ids")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_LABELLED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    received: int
    joined: int
    unknown: int
    expired: int
    already_labelled: int
    unmatched_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, received: _Optional[int] = ..., joined: _Optional[int] = ..., unknown: _Optional[int] = ..., expired: _Optional[int] = ..., already_labelled: _Optional[int] = ..., unmatched_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...

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
    __slots__ = ("received", "joined", "unknown", "expired", "already_labelled")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    ALREADY_LABELLED_FIELD_NUMBER: _ClassVar[int]
    received: int
    joined: int
    unknown: int
    expired: int
    already_labelled: int
    def __init__(self, received: _Optional[int] = ..., joined: _Optional[int] = ..., unknown: _Optional[int] = ..., expired: _Optional[int] = ..., already_labelled: _Optional[int] = ...) -> None: ...

class PredictionStoreStatus(_message.Message):
    __slots__ = ("entries", "capacity", "ttl_seconds", "evicted_capacity", "evicted_ttl")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    EVICTED_TTL_FIELD_NUMBER: _ClassVar[int]
    entries: int
    capacity: int
    ttl_seconds: float
    evicted_capacity: int
    evicted_ttl: int
    def __init__(self, entries: _Optional[int] = ..., capacity: _Optional[int] = ..., ttl_seconds: _Optional[float] = ..., evicted_capacity: _Optional[int] = ..., evicted_ttl: _Optional[int] = ...) -> None: ...

class PipelineStatus(_message.Message):
    __slots__ = ("queued", "processed_rows", "sampled_out_rows")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_ROWS_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_OUT_ROWS_FIELD_NUMBER: _ClassVar[int]
    queued: int
    processed_rows: int
    sampled_out_rows: int
    def __init__(self, queued: _Optional[int] = ..., processed_rows: _Optional[int] = ..., sampled_out_rows: _Optional[int] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("classifier_version", "embedder", "embedding_dim", "flag_threshold", "uptime_seconds", "traffic", "labels", "store", "pipeline", "bundle_sha256")
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
    def __init__(self, classifier_version: _Optional[str] = ..., embedder: _Optional[_Union[EmbedderIdentity, _Mapping]] = ..., embedding_dim: _Optional[int] = ..., flag_threshold: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., traffic: _Optional[_Union[TrafficStatus, _Mapping]] = ..., labels: _Optional[_Union[LabelStatus, _Mapping]] = ..., store: _Optional[_Union[PredictionStoreStatus, _Mapping]] = ..., pipeline: _Optional[_Union[PipelineStatus, _Mapping]] = ..., bundle_sha256: _Optional[str] = ...) -> None: ...
