"""The ``silentwatch.v1.Admin`` servicer: bundle hot reload and on-demand snapshots.

Registered only when ``admin_enabled`` is set; every call is authenticated with the
bearer token (:class:`~.auth.AdminAuth`, constant-time comparison) before it does anything.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import grpc

from silentwatch.monitor.bundle import BundleError, LoadedBundle
from silentwatch.monitor.serving.auth import AdminAuth
from silentwatch.monitor.serving.errors import RequestError, precondition
from silentwatch.monitor.serving.rpc import rpc
from silentwatch.monitor.state.persistence import StatePersister
from silentwatch.monitor.telemetry.prometheus import RequestMetrics
from silentwatch.v1 import monitor_pb2 as pb
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
ADMIN_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Admin"].full_name


class AdminControls(Protocol):
    """What the Admin RPCs may do to a running sidecar, and nothing more."""

    def reload(self, path: str | Path | None = None) -> tuple[bool, LoadedBundle]: ...

    def snapshot_now(self) -> bool: ...

    @property
    def persister(self) -> StatePersister | None: ...


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, sidecar: AdminControls, metrics: RequestMetrics, auth: AdminAuth) -> None:
        self.sidecar = sidecar
        self.metrics = metrics  # the rpc decorator counts calls here
        self.auth = auth

    @rpc("ReloadBundle")
    def ReloadBundle(self, request: pb.ReloadBundleRequest, context: grpc.ServicerContext):
        self.auth.check(context)
        path = request.bundle_path or None
        try:
            reloaded, bundle = self.sidecar.reload(path)
        except (BundleError, ValueError) as exc:
            raise precondition(f"bundle refused, the previous one keeps serving: {exc}") from None
        m = bundle.manifest
        return (
            pb.ReloadBundleResponse(
                reloaded=reloaded,
                bundle_sha256=bundle.sha256,
                classifier_version=m.classifier_version,
                message=(
                    f"serving classifier {m.classifier_version}"
                    if reloaded
                    else "that bundle was already serving; nothing changed"
                ),
            ),
            0,
        )

    @rpc("Snapshot")
    def Snapshot(self, request: pb.SnapshotRequest, context: grpc.ServicerContext):
        self.auth.check(context)
        if self.sidecar.persister is None:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "nothing to snapshot: the store is not durable (store: memory, or the "
                "durable store failed to open) or detection is off",
            )
        written = self.sidecar.snapshot_now()
        return (
            pb.SnapshotResponse(
                written=written, snapshots_written=self.sidecar.persister.snapshots_written
            ),
            0,
        )
