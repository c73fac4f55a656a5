"""Where the offline suite runs: in this process (``engine: local``, the default) or on Ray.

* :mod:`~silentwatch.offline.execution.settings`: ``ExecutionSettings``, the ``execution:``
  block of ``gate.yaml`` / ``audit.yaml`` (pydantic only);
* :mod:`~silentwatch.offline.execution.cluster`: connecting to (or starting) a Ray cluster,
  fast one-line errors (``ClusterError``), the run's ``session``;
* :mod:`~silentwatch.offline.execution.embedding`: ``RayEmbedder``, embedding as Ray Data
  ``map_batches`` over an actor pool, behind the embedder protocol;
* :mod:`~silentwatch.offline.execution.tasks`: ``map_cells``, independent cells (stress
  curves, PGD cells) as Ray tasks or a plain loop.

Nothing here imports ray at module level: the local engine and the sidecar never need the
``ray`` extra.
"""

from __future__ import annotations

from silentwatch.offline.execution.cluster import ClusterError, Connection, connect, session
from silentwatch.offline.execution.embedding import RayEmbedder, open_embedder_for
from silentwatch.offline.execution.settings import ExecutionSettings
from silentwatch.offline.execution.tasks import map_cells

__all__ = [
    "ClusterError",
    "Connection",
    "ExecutionSettings",
    "RayEmbedder",
    "connect",
    "map_cells",
    "open_embedder_for",
    "session",
]
