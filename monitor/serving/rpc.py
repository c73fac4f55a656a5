"""What every RPC of the sidecar shares: timing and counting by status code, turning
refusals into gRPC statuses, and logging them (rate-limited, with the request id, never
the payload). Used by the Monitor and the Admin servicers alike."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import grpc

from silentwatch.monitor.serving.errors import RequestError
from silentwatch.monitor.telemetry.prometheus import RequestMetrics

log = logging.getLogger(__name__)
R = TypeVar("R")


class Servicer(Protocol):
    """What :func:`rpc` needs from a servicer: where to count its calls."""

    metrics: RequestMetrics


def request_id_of(request: Any, context: grpc.ServicerContext, limit: int = 128) -> str:
    """The id a log line carries: the caller's ``x-request-id`` metadata, else the first
    request id in the message ("" when neither). Printable, at most ``limit`` characters."""
    rid = ""
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str):
            rid = value
            break
    if not rid:
        rid = getattr(request, "request_id", "") or ""
    if not rid:
        ids = getattr(request, "request_ids", None) or ()
        labels = getattr(request, "labels", None) or ()
        rid = ids[0] if len(ids) else (labels[0].request_id if len(labels) else "")
    return "".join(c if c.isprintable() else "?" for c in rid[:limit])


class RefusalLog:
    """Log refused requests with their request id, at most once per ``every`` seconds per
    (rpc, code); the lines in between are counted into the next one (never a log flood)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[tuple[str, grpc.StatusCode], float] = {}
        self._held: dict[tuple[str, grpc.StatusCode], int] = {}

    def __call__(
        self, name: str, code: grpc.StatusCode, message: str, request: Any, context: Any
    ) -> None:
        key = (name, code)
        now = time.monotonic()
        if now - self._last.get(key, float("-inf")) < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        log.warning(
            "%s refused (%s): %s%s",
            name,
            code.name,
            message,
            f" [+{held} more like it since the last line]" if held else "",
            extra={
                "rpc": name,
                "code": code,
                "request_id": request_id_of(request, context),
                "peer": context.peer(),
                "event": "request_refused",
            },
        )


refusals = RefusalLog()


def rpc(name: str) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Time the call, count it by status code, and turn refusals into gRPC statuses.

    Refusals are logged (rate-limited) with the request id; unexpected exceptions always,
    with their traceback. Payloads (embeddings, texts) never reach a log line.
    """

    def deco(fn: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(fn)
        def wrapper(self: Servicer, request: Any, context: grpc.ServicerContext) -> R:
            t0 = time.perf_counter()
            code = grpc.StatusCode.OK
            rows = 0
            try:
                result, rows = fn(self, request, context)
                return result
            except RequestError as exc:
                code = exc.code
                refusals(name, code, exc.message, request, context)
                context.abort(exc.code, exc.message)
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception(
                    "%s failed",
                    name,
                    extra={
                        "rpc": name,
                        "code": code,
                        "request_id": request_id_of(request, context),
                        "event": "request_failed",
                    },
                )
                context.abort(code, f"{name} failed inside the sidecar; see its logs")
            finally:
                self.metrics.observe(name, code, time.perf_counter() - t0, rows)

        return wrapper  # type: ignore[return-value]

    return deco
