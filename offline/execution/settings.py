"""``execution:``: where the offline suite's heavy work runs, in this process or on Ray.

pydantic only: reading a config never imports ray (the ``ray`` extra is optional, and the
local engine, the default, must work without it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["LOCAL_ADDRESSES", "ExecutionSettings"]

#: Addresses that mean "start a Ray cluster inside this process" (``None`` too).
LOCAL_ADDRESSES: tuple[str, ...] = ("local",)


class ExecutionSettings(BaseModel):
    """The engine that embeds texts and runs stress / PGD cells.

    Attributes
    ----------
    engine
        ``local`` (default: everything in this process, as before) or ``ray``.
    address
        The Ray cluster: ``None`` or ``"local"`` starts a local one for the run (all this
        machine's cores unless ``local_cpus``); ``"auto"`` joins the cluster this machine
        or Ray job belongs to; ``"host:6379"`` (a head's GCS) or ``"ray://host:10001"``
        (Ray Client) joins a remote one.
    replicas
        Embedding model replicas: the size of the Ray Data actor pool (one model each).
    cpus_per_replica, gpus_per_replica
        Ray resources of each replica and of each stress / PGD task; ``gpus_per_replica``
        ``None`` is 1 when the embedder's device is CUDA, else 0.
    batch_size
        Texts per Ray Data batch (one actor call); each actor then batches them by its
        own token budget, as the local path does.
    local_cpus
        CPUs of a local cluster (``None``: all of this machine's).
    connect_timeout_s
        How long to wait for a remote address to answer before giving up.
    """

    model_config = ConfigDict(extra="forbid")

    engine: Literal["local", "ray"] = "local"
    address: str | None = Field(
        None, description="null / local: a local Ray cluster; auto; host:port; ray://host:port"
    )
    replicas: int = Field(2, ge=1, description="embedding actors (one model replica each)")
    cpus_per_replica: float = Field(1.0, gt=0)
    gpus_per_replica: float | None = Field(None, ge=0, description="null: 1 on CUDA, else 0")
    batch_size: int = Field(256, ge=1, description="texts per Ray Data batch")
    local_cpus: int | None = Field(None, ge=1, description="a local cluster's CPUs")
    connect_timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ExecutionSettings:
        if self.engine == "local" and self.address is not None:
            raise ValueError(
                f"address {self.address!r} is set but engine is local: set engine: ray "
                "(or pass --ray-address)"
            )
        return self

    @property
    def is_ray(self) -> bool:
        return self.engine == "ray"

    @property
    def starts_local_cluster(self) -> bool:
        """The address asks for a cluster started (and stopped) by this run."""
        return self.address is None or self.address in LOCAL_ADDRESSES

    def with_ray_address(
        self, address: str | None, replicas: int | None = None
    ) -> ExecutionSettings:
        """These settings with ``--ray-address`` / ``--ray-replicas`` applied (the flag
        implies ``engine: ray``); unchanged when neither flag was given."""
        update: dict[str, Any] = {}
        if address is not None:
            update.update(engine="ray", address=address)
        if replicas is not None:
            update["replicas"] = replicas
        return self.model_validate({**self.model_dump(), **update}) if update else self

    def gpus(self, device: str = "cpu") -> float:
        """GPUs per replica or task for work on ``device``."""
        if self.gpus_per_replica is not None:
            return self.gpus_per_replica
        return 1.0 if str(device).startswith("cuda") else 0.0

    def describe(self) -> dict[str, Any]:
        """What ran, for reports: the engine and, on Ray, where and how wide."""
        if not self.is_ray:
            return {"engine": "local"}
        return {
            "engine": "ray",
            "address": self.address or "local",
            "replicas": self.replicas,
            "cpus_per_replica": self.cpus_per_replica,
            "gpus_per_replica": self.gpus_per_replica,
            "batch_size": self.batch_size,
        }
