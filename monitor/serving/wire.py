"""Decode and validate requests from the wire: one ``numpy.frombuffer`` per message.

Also :class:`MalformedRequestGuard`, which turns bytes that are not protobuf into
INVALID_ARGUMENT instead of grpcio's INTERNAL.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from silentwatch.monitor.scoring import confidence, row_norms
from silentwatch.monitor.serving.errors import invalid
from silentwatch.v1 import monitor_pb2 as pb

log = logging.getLogger(__name__)

_F32LE = np.dtype("<f4")
_MATRIX = pb.EmbeddingMatrix.DESCRIPTOR.full_name


def _hint(dim: int) -> str:
    return f"send {dim} float32 values per embedding as packed little-endian bytes (f32le)"


def decode_embedding(msg: pb.Embedding, dim: int) -> np.ndarray:
    """One embedding as a (1, dim) float32 matrix."""
    kind = msg.WhichOneof("data")
    if kind == "f32le":
        raw = msg.f32le
        if len(raw) == 0:
            raise invalid(f"embedding is empty; {_hint(dim)}")
        if len(raw) != dim * 4:
            got = f"{len(raw) // 4} values" if len(raw) % 4 == 0 else f"{len(raw)} bytes"
            raise invalid(
                f"embedding has {got} but this bundle expects dimension {dim} "
                f"({dim * 4} bytes); check that the embedder matches the bundle"
            )
        return np.frombuffer(raw, dtype=_F32LE).reshape(1, dim)
    if kind == "values":
        n = len(msg.values.values)
        if n == 0:
            raise invalid(f"embedding is empty; {_hint(dim)}")
        if n != dim:
            raise invalid(
                f"embedding has {n} values but this bundle expects dimension {dim}; "
                "check that the embedder matches the bundle"
            )
        return np.asarray(msg.values.values, dtype=np.float32).reshape(1, dim)
    raise invalid(f"embedding is missing; {_hint(dim)}")


def decode_matrix(msg: pb.EmbeddingMatrix, dim: int, max_rows: int) -> np.ndarray:
    """A batch as an (n, dim) float32 matrix (a read-only view on the request bytes)."""
    if msg.dim != dim:
        raise invalid(
            f"embeddings.dim is {msg.dim} but this bundle expects dimension {dim}; "
            "check that the embedder matches the bundle"
        )
    n = msg.rows
    if n == 0:
        raise invalid("embeddings.rows is 0; a batch needs at least one embedding")
    if n > max_rows:
        raise invalid(
            f"batch has {n} rows, more than the limit of {max_rows}; split it into smaller "
            "batches (or raise max_batch_rows)"
        )
    kind = msg.WhichOneof("data")
    if kind == "f32le":
        raw = msg.f32le
        if len(raw) != n * dim * 4:
            raise invalid(
                f"embeddings.f32le has {len(raw)} bytes but rows={n} x dim={dim} needs "
                f"{n * dim * 4}; pack rows contiguously as little-endian float32"
            )
        return np.frombuffer(raw, dtype=_F32LE).reshape(n, dim)
    if kind == "values":
        vals = msg.values.values
        if len(vals) != n * dim:
            raise invalid(
                f"embeddings.values has {len(vals)} floats but rows={n} x dim={dim} needs {n * dim}"
            )
        return np.asarray(vals, dtype=np.float32).reshape(n, dim)
    raise invalid(f"embeddings carry no data; {_hint(dim)}")


def checked_norms(x: np.ndarray, *, need_nonzero: bool) -> np.ndarray:
    """Row norms, refusing NaN/Inf (and zero rows when the bundle normalises).

    A non-finite value makes its row's norm non-finite, so one vectorised pass
    finds them; the slow per-row look happens only on the error path.
    """
    norms = row_norms(x)
    if not np.isfinite(norms).all():
        bad_rows = np.flatnonzero(~np.isfinite(norms))
        really_bad = [int(r) for r in bad_rows if not np.isfinite(x[r]).all()]
        if really_bad:
            raise invalid(
                f"embedding rows {really_bad[:5]}{' ...' if len(really_bad) > 5 else ''} contain "
                "NaN or Inf; fix the embedder output before sending"
            )
        raise invalid(
            f"embedding rows {bad_rows[:5].tolist()} overflow float32 when squared; "
            "send unit-normalised embeddings"
        )
    if need_nonzero and not norms.all():
        zero = np.flatnonzero(norms == 0)
        tiny = [int(r) for r in zero if x[r].any()]
        if tiny:
            raise invalid(
                f"embedding rows {tiny[:5]}{' ...' if len(tiny) > 5 else ''} are too small to be "
                "put on the unit sphere (their squared length underflows float32); send "
                "unit-normalised embeddings"
            )
        raise invalid(
            f"embedding rows {zero[:5].tolist()} are all zeros and cannot be put on the unit "
            "sphere; check the embedder output"
        )
    return norms


def check_request_ids(ids: list[str], rows: int, max_len: int) -> None:
    """Ids are optional, but when given: one per row, non-empty, bounded.

    Uniqueness is the prediction store's to enforce (it must hold across requests too).
    """
    if not ids:
        return
    if len(ids) != rows:
        raise invalid(f"{len(ids)} request_ids for {rows} rows; send one id per row, or none")
    if "" in ids:
        raise invalid(f"request_ids[{ids.index('')}] is empty; send a non-empty id or no ids")
    longest = max(map(len, ids))
    if longest > max_len:
        raise invalid(
            f"a request id is {longest} characters, more than the limit of {max_len}; use shorter "
            "ids (or raise max_request_id_length)"
        )


PACKED_ID_BYTES = 16


def packed_ids(
    raw: bytes,
    rows: int,
    *,
    field: str = "packed_request_ids",
    per: str = "row",
    then: str = "nothing was recorded",
) -> list[bytes]:
    """Columnar ids: ``rows`` ids of 16 bytes each, split with one ``numpy.frombuffer``.

    Raises INVALID_ARGUMENT naming ``field`` when the length is not 16 bytes per ``per``.

    >>> packed_ids(bytes(range(32)), 2)[1].hex()
    '101112131415161718191a1b1c1d1e1f'
    """
    size, width = len(raw), PACKED_ID_BYTES
    if size % width:
        raise invalid(
            f"{field} has {size} bytes, not a multiple of {width}; send {width} bytes per id "
            f"(e.g. a UUID's bytes), one id per {per}; {then}"
        )
    if size // width != rows:
        raise invalid(
            f"{field} holds {size // width} ids for {rows} {per.split(' ')[0]}s; send one "
            f"{width}-byte id per {per}; {then}"
        )
    return np.frombuffer(raw, dtype=f"V{width}").tolist()


def request_ids_of(request: Any, rows: int, max_len: int) -> list[str] | list[bytes]:
    """A batch request's ids: ``request_ids`` (strings) or ``packed_request_ids`` (16-byte
    ids), never both; empty when it sent none."""
    packed = request.packed_request_ids
    if packed:
        if len(request.request_ids):
            raise invalid("send request_ids or packed_request_ids, not both; nothing was recorded")
        return packed_ids(packed, rows)
    ids = list(request.request_ids)
    check_request_ids(ids, rows, max_len)
    return ids


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    """A protobuf varint at ``pos``: (value, position after it); ValueError when truncated or
    longer than 10 bytes."""
    value = shift = 0
    for i in range(pos, min(pos + 10, len(raw))):
        b = raw[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    raise ValueError("bad varint")


class MatrixView:
    """An ``EmbeddingMatrix`` whose ``f32le`` is a view on the request bytes (not a copy).

    Duck-types what :func:`decode_matrix` reads: ``rows``, ``dim``, ``WhichOneof("data")``
    and ``f32le``.
    """

    __slots__ = ("dim", "f32le", "rows")

    def __init__(self, rows: int, dim: int, f32le: memoryview) -> None:
        self.rows, self.dim, self.f32le = rows, dim, f32le

    def WhichOneof(self, group: str) -> str | None:
        return "f32le" if group == "data" else None


class ZeroCopyRequest:
    """A batch request parsed without copying its embeddings: ``embeddings`` is a
    :class:`MatrixView`; every other field is read from the parsed rest of the message."""

    __slots__ = ("_rest", "embeddings")

    def __init__(self, rest: Any, embeddings: MatrixView) -> None:
        self._rest, self.embeddings = rest, embeddings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rest, name)

    def HasField(self, name: str) -> bool:
        return name == "embeddings" or self._rest.HasField(name)


def parse_zero_copy(raw: bytes, message_cls: Any, field_number: int) -> ZeroCopyRequest | None:
    """Parse a batch request whose first field is its ``EmbeddingMatrix`` (``field_number``)
    without copying the matrix: ``None`` when the bytes are laid out any other way (the
    caller then parses them as usual, with the same result).

    grpcio hands the handler the request as one ``bytes``; ``FromString`` copies the
    embeddings into its arena and reading ``.f32le`` copies them again (~90 µs each for a
    4 MB batch on one core, more with the cache under load). Here the matrix's header
    (``rows``, ``dim``, one ``f32le``) is read by hand and the rest of the message, a few
    kB of ids and versions, is parsed by protobuf. A request serialised in field order
    with ``packed_request_ids`` (or no ids) starts with the matrix; one with string
    ``request_ids`` (field 1) does not, and takes the usual path. Anything unexpected in
    the header (another field, ``values`` instead of ``f32le``, a value over 32 bits, the
    matrix given twice) also takes the usual path, so both parse alike.

    >>> from silentwatch.v1 import monitor_pb2 as pb
    >>> m = pb.ClassifyBatchRequest(embedder_version="v1", packed_request_ids=bytes(16),
    ...     embeddings=pb.EmbeddingMatrix(rows=1, dim=2, f32le=bytes(8)))
    >>> r = parse_zero_copy(m.SerializeToString(), pb.ClassifyBatchRequest, 2)
    >>> (r.embeddings.rows, r.embeddings.dim, len(r.embeddings.f32le), r.embedder_version)
    (1, 2, 8, 'v1')
    >>> parse_zero_copy(pb.ClassifyBatchRequest(request_ids=["a"]).SerializeToString(),
    ...                 pb.ClassifyBatchRequest, 2) is None
    True
    """
    try:
        tag, pos = _varint(raw, 0)
        if tag != (field_number << 3 | 2):
            return None
        length, pos = _varint(raw, pos)
        end = pos + length
        if end > len(raw):
            return None
        rows = dim = 0
        data: tuple[int, int] | None = None
        while pos < end:
            tag, pos = _varint(raw, pos)
            if tag in (0x08, 0x10):  # rows = 1, dim = 2 (varints; the last one counts)
                value, pos = _varint(raw, pos)
                if value >= 1 << 32:  # protobuf would truncate a uint32; let it
                    return None
                if tag == 0x08:
                    rows = value
                else:
                    dim = value
            elif tag == 0x1A:  # f32le = 3
                size, pos = _varint(raw, pos)
                data, pos = (pos, pos + size), pos + size
            else:
                return None
        if pos != end or data is None:
            return None
    except ValueError:
        return None
    rest = message_cls.FromString(raw[end:])  # raises DecodeError like the usual parse
    if rest.HasField("embeddings"):  # given twice: protobuf merges; leave that to it
        return None
    return ZeroCopyRequest(rest, MatrixView(rows, dim, memoryview(raw)[data[0] : data[1]]))


@functools.cache
def zero_copy_field(message_cls: Any) -> int:
    """The field number of ``message_cls``'s ``EmbeddingMatrix embeddings`` (0: it has none,
    and :func:`parse_zero_copy` does not apply)."""
    descriptor = getattr(message_cls, "DESCRIPTOR", None)
    field = getattr(descriptor, "fields_by_name", {}).get("embeddings")
    if field is None or field.message_type is None:
        return 0
    return field.number if field.message_type.full_name == _MATRIX else 0


def parse_request(
    raw: bytes, message_cls: Any, fallback: Callable[[bytes], Any] | None = None
) -> Any:
    """``raw`` as ``message_cls``: without copying the embeddings where
    :func:`parse_zero_copy` applies, else with ``fallback`` (protobuf's ``FromString``
    unless given: the guard passes the handler's own deserializer).

    >>> from silentwatch.v1 import monitor_pb2 as pb
    >>> type(parse_request(b"", pb.ClassifyBatchRequest)).__name__
    'ClassifyBatchRequest'
    """
    number = zero_copy_field(message_cls)
    request = number and parse_zero_copy(raw, message_cls, number)
    return request or (fallback or message_cls.FromString)(raw)


class MalformedRequestGuard(grpc.ServerInterceptor):
    """Answer a request that is not valid protobuf with INVALID_ARGUMENT, naming its type.

    Left to itself grpcio parses the request before any servicer code runs and answers bytes
    it cannot parse with ``INTERNAL "Exception deserializing request!"`` (and an ERROR
    traceback in the log): a server fault, by its code, for what is the caller's mistake.
    This interceptor hands the servicer's methods the raw bytes instead, parses them itself,
    and refuses what does not parse with INVALID_ARGUMENT and a message naming the expected
    message type; ``on_refused(rpc_name)`` lets the caller count the refusal (a metric).

    Parsing in the handler is also the cheap path for large requests: a no-op server that
    lets grpcio's ``request_deserializer`` parse a 4 MB ClassifyBatch spends 2.7× the CPU
    per request of one that parses the raw bytes itself (benchmarks/serving.py, transport
    floor; docs/benchmarks.md), so keep this guard in front of the batch methods.
    Only unary-unary methods of the ``services`` named (full names) are wrapped; health and
    reflection keep grpcio's handling. Install it last in ``grpc.server(interceptors=...)``
    so that it wraps the servicer's own handler.
    """

    def __init__(self, *services: str, on_refused: Callable[[str], None] | None = None) -> None:
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._on_refused = on_refused

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        # Wrapped per call, never cached: an interceptor further down (authentication) may
        # answer the same method differently for different callers.
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if (
            handler is None
            or not method.startswith(self._prefixes)
            or handler.unary_unary is None
            or handler.request_deserializer is None
            or handler.request_streaming
            or handler.response_streaming
        ):
            return handler
        return self._guard(method.rpartition("/")[2], handler)

    def _guard(self, rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse = handler.request_deserializer
        behavior = handler.unary_unary
        message_cls = getattr(parse, "__self__", None)
        descriptor = getattr(message_cls, "DESCRIPTOR", None)
        type_name = getattr(descriptor, "full_name", f"{rpc} request")
        on_refused = self._on_refused

        def unary_unary(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                request = parse_request(raw, message_cls, parse)
            except Exception as exc:  # DecodeError, or whatever a custom deserializer raises
                reason = str(exc).rpartition(": ")[2] or type(exc).__name__
                if on_refused is not None:
                    try:
                        on_refused(rpc)
                    except Exception:  # a metric must not turn the refusal into UNKNOWN
                        log.exception("counting a malformed %s request failed", rpc)
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"the {len(raw)}-byte request is not a valid {type_name} protobuf message "
                    f"({reason}); build requests with code generated from the sidecar's own "
                    "proto/silentwatch/v1 files",
                )
            return behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, request_deserializer=None, response_serializer=handler.response_serializer
        )


def select_heads(requested: Any, names: tuple[str, ...]) -> np.ndarray | None:
    """Column indices of the heads a request named (``None``: it named none).

    Raises INVALID_ARGUMENT naming an unknown or repeated head; checked before anything
    is recorded.

    >>> select_heads(["threat"], ("toxicity", "threat")).tolist()
    [1]
    >>> select_heads([], ("toxicity",)) is None
    True
    """
    if not len(requested):
        return None
    index = {n: j for j, n in enumerate(names)}
    cols = []
    for name in requested:
        j = index.get(name)
        if j is None:
            raise invalid(
                f"heads names {name!r}, which this bundle does not have (its heads: "
                f"{', '.join(names)}); nothing was recorded"
            )
        cols.append(j)
    if len(set(cols)) != len(cols):
        raise invalid("heads names a head twice; name each head once (nothing was recorded)")
    return np.asarray(cols, dtype=np.intp)


def head_scores_message(
    p: np.ndarray, names: tuple[str, ...], flags: np.ndarray, cols: np.ndarray | None
) -> pb.HeadScores:
    """Every head's (or the chosen ``cols``') scores, packed row-major: one ``tobytes``
    per field, so a client decodes n rows x k heads with one ``numpy.frombuffer`` each.

    >>> import numpy as np
    >>> m = head_scores_message(np.array([[0.9, 0.2]], dtype=np.float32), ("a", "b"),
    ...                         np.array([0.5, 0.5], dtype=np.float32), None)
    >>> list(m.heads), np.frombuffer(m.flagged, dtype=np.uint8).tolist()
    (['a', 'b'], [1, 0])
    """
    if cols is not None:
        p, flags, names = p[:, cols], flags[cols], tuple(names[j] for j in cols)
    p = np.ascontiguousarray(p, dtype=_F32LE)
    return pb.HeadScores(
        heads=names,
        rows=p.shape[0],
        p_unsafe_f32le=p.tobytes(),
        flagged=(p >= flags).astype(np.uint8).tobytes(),
        confidence_f32le=np.maximum(p, 1.0 - p).astype(_F32LE, copy=False).tobytes(),
    )


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def batch_reply(
    p: np.ndarray, threshold: float, classifier_version: str
) -> pb.ClassifyBatchResponse:
    """The ClassifyBatch reply for scores ``p`` ((n,) P(unsafe) of the default head).

    Built as bytes (each repeated field is packed on the wire: one ``tobytes`` each) and
    parsed once: 7 µs for 1,024 rows on one core, against 71 µs for three
    ``extend(p.tolist())``; the message, and its serialised bytes, are the same.

    >>> import numpy as np
    >>> r = batch_reply(np.array([0.25, 0.75], dtype=np.float32), 0.5, "c1")
    >>> list(r.p_unsafe), list(r.flagged), list(r.confidence), r.classifier_version
    ([0.25, 0.75], [False, True], [0.75, 0.75], 'c1')
    """
    p = np.ascontiguousarray(p, dtype=_F32LE)
    n = p.shape[0]
    parts: list[bytes] = []
    if n:
        size = _varint_bytes(4 * n)
        parts += [b"\x0a", size, p.tobytes()]  # p_unsafe = 1
        parts += [b"\x12", _varint_bytes(n), (p >= threshold).view(np.uint8).tobytes()]  # 2
        parts += [b"\x1a", size, confidence(p).astype(_F32LE, copy=False).tobytes()]  # 3
    if classifier_version:
        text = classifier_version.encode()
        parts += [b"\x22", _varint_bytes(len(text)), text]  # classifier_version = 4
    return pb.ClassifyBatchResponse.FromString(b"".join(parts))


def decode_head_scores(msg: pb.HeadScores) -> dict[str, np.ndarray]:
    """A :class:`HeadScores` message as ``{"p_unsafe", "flagged", "confidence"}`` arrays of
    shape (rows, heads), for clients (one ``numpy.frombuffer`` per field)."""
    shape = (msg.rows, len(msg.heads))
    return {
        "p_unsafe": np.frombuffer(msg.p_unsafe_f32le, dtype=_F32LE).reshape(shape),
        "flagged": np.frombuffer(msg.flagged, dtype=np.uint8).reshape(shape).astype(bool),
        "confidence": np.frombuffer(msg.confidence_f32le, dtype=_F32LE).reshape(shape),
    }
