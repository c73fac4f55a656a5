"""Paired canaries from the service that embeds the traffic: the two-line integration.

The moderation service owns the live embedder, so it is the one that can show the sidecar
what that embedder does to the bundle's canary texts. Give :class:`CanaryClient` an
``embed(texts) -> (n, d) array`` function (the same one that embeds live traffic) and it
fetches the canary texts, embeds them, submits the embeddings and returns the sidecar's
paired reading::

    from silentwatch.client import CanaryClient
    CanaryClient("localhost:50051").start(my_embed, interval=300)  # on deploy, then every 5 min

``check`` runs once (call it from a deploy hook before traffic moves to a new embedder);
``start`` runs it in a daemon thread on a schedule. A reading with ``failure`` set means
the frozen classifier got worse on the canaries: the sidecar raises
``silentwatch_silent_failure`` and logs it; ``check`` only returns it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import grpc
import numpy as np

from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
Embed = Callable[[list[str]], np.ndarray]


class CanaryClient:
    """Fetch, embed and submit the sidecar's canaries (module docstring).

    Parameters
    ----------
    target
        ``host:port`` of the sidecar's gRPC port, or an open :class:`grpc.Channel`.
    embedder_version
        Sent with each submission so the reading says which embedder produced it.
    metadata
        gRPC metadata for every call (e.g. an ``authorization`` header in front of a proxy).
    timeout
        Seconds per call.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        embedder_version: str = "",
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float = 30.0,
    ) -> None:
        self._own = isinstance(target, str)
        self.channel = grpc.insecure_channel(target) if isinstance(target, str) else target
        self.stub = pb_grpc.MonitorStub(self.channel)
        self.embedder_version = embedder_version
        self.metadata = tuple(metadata)
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: pb.PairedCanaryReading | None = None
        self.last_error: str = ""

    def check(self, embed: Embed) -> pb.PairedCanaryReading:
        """One round: GetCanaries, ``embed`` the texts, SubmitCanaryEmbeddings.

        Retries once when the sidecar reloaded its bundle between the two calls. Raises
        :class:`ValueError` when ``embed`` returns the wrong shape or non-finite values,
        and :class:`grpc.RpcError` for a refused call (its details say what to do).
        """
        for attempt in (0, 1):
            c = self.stub.GetCanaries(
                pb.GetCanariesRequest(), timeout=self.timeout, metadata=self.metadata
            )
            texts = list(c.texts)
            x = np.ascontiguousarray(embed(texts), dtype="<f4")
            if x.shape != (len(texts), c.embedding_dim):
                raise ValueError(
                    f"embed() returned shape {x.shape} for {len(texts)} canary texts; the "
                    f"sidecar expects ({len(texts)}, {c.embedding_dim}), one row per text in order"
                )
            if not np.isfinite(x).all():
                raise ValueError("embed() returned NaN or Inf for some canary texts")
            request = pb.SubmitCanaryEmbeddingsRequest(
                canary_set_id=c.canary_set_id,
                embeddings=pb.EmbeddingMatrix(rows=x.shape[0], dim=x.shape[1], f32le=x.tobytes()),
                embedder_version=self.embedder_version,
            )
            try:
                resp = self.stub.SubmitCanaryEmbeddings(
                    request, timeout=self.timeout, metadata=self.metadata
                )
            except grpc.RpcError as exc:
                stale = exc.code() == grpc.StatusCode.FAILED_PRECONDITION and "no longer" in (
                    exc.details() or ""
                )
                if stale and attempt == 0:
                    continue  # the bundle changed between the calls: fetch its canaries
                raise
            self.last = resp.reading
            return resp.reading
        raise AssertionError("unreachable")  # pragma: no cover

    def start(
        self,
        embed: Embed,
        *,
        interval: float = 300.0,
        on_reading: Callable[[pb.PairedCanaryReading], None] | None = None,
    ) -> CanaryClient:
        """Run :meth:`check` now and every ``interval`` seconds in a daemon thread.

        A failed round is logged and kept in ``last_error``; the loop goes on.
        """
        if interval <= 0:
            raise ValueError("interval must be positive (seconds between canary rounds)")

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    reading = self.check(embed)
                    self.last_error = ""
                    if on_reading is not None:
                        on_reading(reading)
                except Exception as exc:  # keep checking: a later round may succeed
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("canary round failed: %s", self.last_error)
                self._stop.wait(interval)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="silentwatch-canaries", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (and close the channel this client opened)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._own:
            self.channel.close()
