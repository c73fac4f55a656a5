"""Independent cells (stress curves, PGD cells) as Ray tasks, or as a plain loop locally."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from silentwatch.offline.execution.settings import ExecutionSettings

__all__ = ["map_cells"]

T = TypeVar("T")
R = TypeVar("R")


def _apply(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def map_cells(
    fn: Callable[[T], R],
    items: Sequence[T],
    settings: ExecutionSettings | None = None,
    progress: Callable[[int], None] | None = None,
    *,
    weight: int = 1,
    device: str = "cpu",
) -> list[R]:
    """``[fn(item) for item in items]``, on Ray when ``settings`` says so.

    Parameters
    ----------
    fn
        A picklable function of one item (bind large shared inputs with
        :func:`functools.partial`: on Ray ``fn`` is put in the object store once, so a
        matrix it carries is shipped once, not once per cell).
    items
        The cells, small (names, magnitudes, sites).
    settings
        ``None`` or ``engine: local``: a plain loop in this process (Ray is not imported).
        ``engine: ray``: one Ray task per item, ``cpus_per_replica`` CPUs and
        ``gpus(device)`` GPUs each.
    progress
        Called with ``weight`` as each cell finishes (in completion order on Ray).
    weight
        What one cell counts for on the progress bar (e.g. the points of a curve).
    device
        Where ``fn`` runs its tensors: a CUDA device asks Ray for a GPU per task.

    Returns
    -------
    list
        The results in the order of ``items``.
    """
    if settings is None or not settings.is_ray:
        out = []
        for item in items:
            out.append(fn(item))
            if progress is not None:
                progress(weight)
        return out

    from silentwatch.offline.execution.cluster import ensure, remote_cause

    ray = ensure(settings)
    fn_ref = ray.put(fn)
    remote = ray.remote(_apply).options(
        num_cpus=settings.cpus_per_replica, num_gpus=settings.gpus(device)
    )
    refs = [remote.remote(fn_ref, item) for item in items]
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        if progress is not None:
            progress(weight * len(done))
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        raise remote_cause(err) from err
