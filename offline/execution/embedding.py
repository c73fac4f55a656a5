"""Embedding on Ray: Ray Data ``map_batches`` over an actor pool, one model replica per actor.

:class:`RayEmbedder` has the embedder protocol (``embed``, ``info``, ``spec``), so the gate
and ``silentwatch stress`` hand it to :func:`~silentwatch.offline.embedders.embed_cached`
in place of a local embedder: the cache key comes from the same ``EmbeddingInfo``, so a
local run and a Ray run share cache files, and a cache hit runs no actor pool.

Each actor opens the embedder once, through the same settings object and the same
``open_embedder`` route as the local path (so max_length, pooling, dtype, normalisation
and device are the same), and embeds each Ray batch with the embedder's own
token-budget batching.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from silentwatch.offline.embedders.base import Embedder, EmbeddingInfo
from silentwatch.offline.execution.settings import ExecutionSettings

if TYPE_CHECKING:
    from silentwatch.monitor.bundle import EmbedderSpec

__all__ = ["OpensEmbedders", "RayEmbedder", "open_embedder_for"]


class OpensEmbedders(Protocol):
    """What opens an embedder with its settings (``gate.config.EmbeddingSettings``)."""

    device: str

    def open(self, spec: str, opener: Callable[..., Any] | None = None) -> Any: ...


def _describe(
    spec: str, settings: OpensEmbedders, opener: Callable[..., Any] | None
) -> tuple[EmbeddingInfo, EmbedderSpec]:
    """Runs on a worker: what the replicas will produce (the cache key's ingredients)."""
    emb = settings.open(spec, opener)
    return emb.info(), emb.spec()


class _EmbedBatch:
    """A Ray Data actor: the model is opened once, in ``__init__``, and kept for every
    batch the actor is given."""

    def __init__(
        self, spec: str, settings: OpensEmbedders, opener: Callable[..., Any] | None = None
    ) -> None:
        self.embedder = settings.open(spec, opener)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {"row": batch["row"], "embedding": self.embedder.embed(texts)}


class RayEmbedder:
    """An embedder whose ``embed`` runs on a Ray actor pool.

    Parameters
    ----------
    spec
        The embedder spec (``minilm``, a model directory...), as for ``open_embedder``.
    settings
        The effective embedding settings (an ``EmbeddingSettings``); each actor calls
        ``settings.open(spec, opener)``, exactly as the local path does.
    execution
        ``replicas`` (the pool's size), ``cpus_per_replica`` / ``gpus_per_replica`` and
        ``batch_size`` (texts per actor call).
    opener
        Replaces ``open_embedder`` on the workers (it must be picklable).

    Notes
    -----
    ``info()`` and ``spec()`` are asked of the cluster, by one task that opens the model
    once on a worker, so the driver needs neither the weights nor the memory for them.
    """

    #: ``embed_cached`` hands over every text at once, with its progress callback: chunking
    #: on the driver would start an actor pool, and load every replica, per chunk.
    streams_progress = True

    def __init__(
        self,
        spec: str,
        settings: OpensEmbedders,
        execution: ExecutionSettings,
        opener: Callable[..., Any] | None = None,
    ) -> None:
        self._spec = spec
        self._settings = settings
        self._execution = execution
        self._opener = opener
        self._described: tuple[EmbeddingInfo, EmbedderSpec] | None = None

    def _resources(self) -> dict[str, float]:
        return {
            "num_cpus": self._execution.cpus_per_replica,
            "num_gpus": self._execution.gpus(self._settings.device),
        }

    def _describe(self) -> tuple[EmbeddingInfo, EmbedderSpec]:
        if self._described is None:
            from silentwatch.offline.execution.cluster import ensure, remote_cause

            ray = ensure(self._execution)
            task = ray.remote(_describe).options(**self._resources())
            try:
                self._described = ray.get(task.remote(self._spec, self._settings, self._opener))
            except ray.exceptions.RayTaskError as err:
                # A bad spec or a missing file raises its own ValueError / OSError, which the
                # gate and the CLI already turn into one line.
                raise remote_cause(err) from None
        return self._described

    def info(self) -> EmbeddingInfo:
        """The replicas' ``EmbeddingInfo`` (identical to the local embedder's)."""
        return self._describe()[0]

    def spec(self, version: str | None = None) -> EmbedderSpec:
        """The bundle's record of this embedder, as the local embedder would give it."""
        s = self._describe()[1]
        return s if version is None else s.model_copy(update={"version": version})

    def embed(self, texts: list[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(n, d) float32 rows in the order of ``texts``.

        Parameters
        ----------
        texts
            The texts.
        progress
            Called with the number of rows in each batch as it comes back.
        """
        info = self.info()
        texts = list(texts)
        n = len(texts)
        out = np.empty((n, info.dim), dtype=np.float32)
        if n == 0:
            return out
        from silentwatch.offline.execution.cluster import ensure, remote_cause

        ray = ensure(self._execution)
        import pyarrow as pa

        # Longest first, by characters: each Ray batch holds texts of similar length, so
        # the actor's token-budget batching pads little, and the widest batch (the one
        # that would run out of memory) runs first. The row column puts them back.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bs = self._execution.batch_size
        blocks = [
            pa.table({"row": order[i : i + bs], "text": [texts[j] for j in order[i : i + bs]]})
            for i in range(0, n, bs)
        ]
        ds = ray.data.from_arrow(blocks).map_batches(
            _EmbedBatch,
            fn_constructor_kwargs={
                "spec": self._spec,
                "settings": self._settings,
                "opener": self._opener,
            },
            batch_size=bs,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(self._execution.replicas, len(blocks))),
            **self._resources(),
        )
        seen = np.zeros(n, dtype=bool)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                rows = np.asarray(batch["row"], dtype=np.int64)
                out[rows] = batch["embedding"]
                seen[rows] = True
                if progress is not None:
                    progress(rows.size)
        except ray.exceptions.RayTaskError as err:
            raise remote_cause(err) from None
        if not seen.all():  # a lost or duplicated block must not pass as embeddings
            raise RuntimeError(f"the Ray actor pool returned {int(seen.sum())} of {n} rows")
        return out


def open_embedder_for(
    execution: ExecutionSettings | None,
    settings: OpensEmbedders,
    spec: str,
    opener: Callable[..., Any] | None = None,
) -> Embedder | RayEmbedder:
    """The embedder ``spec`` with ``settings``, on the engine ``execution`` names.

    Local: ``settings.open(spec, opener)``, the model in this process (Ray never imported).
    Ray: a :class:`RayEmbedder`; it asks the cluster for ``info()`` at once, so a bad
    spec fails here as it would locally.
    """
    if execution is None or not execution.is_ray:
        return settings.open(spec, opener)
    emb = RayEmbedder(spec, settings, execution, opener)
    emb.info()
    return emb
