"""Process logging: text for people, or one JSON object per line for log pipelines.

``configure_logging("INFO", "json")`` makes every stderr line a JSON object::

    {"ts": "2026-05-01T12:00:00.123Z", "level": "INFO",
     "logger": "silentwatch.monitor.serving.server",
     "msg": "serving classifier ...", "event": "serving"}

Context travels through ``extra=``: ``request_id``, ``rpc``, ``code``, ``peer`` and ``event``
become top-level keys; nothing else from ``extra`` is emitted, so an attribute a library
attaches to a record cannot smuggle a payload into the logs.

What is never logged: embeddings, texts, scores of individual requests, the admin token
and TLS or signing keys. Code that must mention a payload logs :func:`redact` of it (its
shape, never its content).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import os
import sys
from collections.abc import Sized
from typing import Any, Literal

LogFormat = Literal["json", "text"]
#: The ``extra=`` keys a JSON line carries (anything else passed via ``extra`` is dropped).
CONTEXT_KEYS = ("request_id", "rpc", "code", "peer", "event")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Marks the handler configure_logging installed, so a second call replaces it (tests,
# embedding applications) instead of doubling every line.
_OURS = "_silentwatch_handler"


def record_context(record: logging.LogRecord) -> dict[str, Any]:
    """The :data:`CONTEXT_KEYS` a record carries (``None`` values left out)."""
    out: dict[str, Any] = {}
    for key in CONTEXT_KEYS:
        value = getattr(record, key, None)
        if value is not None:
            # grpc.StatusCode.OK -> "OK": what the `code` label of the metrics says too.
            out[key] = value.name if isinstance(value, enum.Enum) else value
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped).

    Examples
    --------
    >>> rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hi %s", ("a",), None)
    >>> rec.request_id = "r1"
    >>> sorted(json.loads(JsonFormatter().format(rec)))
    ['level', 'logger', 'msg', 'request_id', 'ts']
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **record_context(record),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: any other object (a Path, a number type) must not break the line.
        return json.dumps(out, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The classic ``time LEVEL logger: message`` line, plus ``[key=value ...]`` context."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = [f"{k}={v}" for k, v in record_context(record).items()]
        if not context:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the context
        return f"{head} [{' '.join(context)}]{sep}{tail}"


def configure_logging(level: str, fmt: LogFormat = "text") -> logging.Handler:
    """Install the process's stderr handler on the root logger.

    Parameters
    ----------
    level
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (the ``log_level`` setting).
    fmt
        ``"json"`` (one object per line) or ``"text"`` (the ``log_format`` setting).

    Returns
    -------
    logging.Handler
        The installed handler (a second call replaces it; other handlers are left alone).

    Notes
    -----
    gRPC's C core logs on its own, in plain text, straight to stderr (a failed TLS
    handshake is an INFO line). In JSON mode ``GRPC_VERBOSITY`` defaults to ``ERROR`` so
    that only its errors break the one-object-per-line stream; the core reads the variable
    when ``grpc`` is first imported, so call this before that (``silentwatch serve`` does).
    An explicit ``GRPC_VERBOSITY`` in the environment wins.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log_format must be 'json' or 'text', not {fmt!r}")
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # Python warnings go through the same handler, so JSON mode keeps every line JSON.
    logging.captureWarnings(True)
    return handler


def redact(value: object) -> str:
    """A description of ``value`` that never contains its content.

    For logging about a payload (an embedding matrix, a text, raw bytes, a token) without
    logging the payload itself.

    Examples
    --------
    >>> import numpy as np
    >>> redact(np.zeros((4, 384), dtype=np.float32))
    '<float32 array shape=(4, 384)>'
    >>> redact("some user text")
    '<str len=14>'
    >>> redact(b"\\x00\\x01")
    '<bytes len=2>'
    """
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"<{dtype} array shape={tuple(shape)}>"
    if isinstance(value, Sized):
        return f"<{type(value).__name__} len={len(value)}>"
    return f"<{type(value).__name__}>"
