from __future__ import annotations

import os
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from silentwatch.monitor.bundle import EmbedderSpec, load_bundle
from silentwatch.monitor.bundle.manifest import DetectorSettings
from silentwatch.monitor.config import load_settings
from silentwatch.monitor.serving.server import Sidecar
from silentwatch.monitor.simulate.world import SyntheticWorld
from silentwatch.monitor.training import train_bundle
from silentwatch.v1 import monitor_pb2_grpc as pb_grpc

DIM = 32
# The sidecar's durable store defaults to ./silentwatch-state: tests never write there.
# Module- and session-scoped sidecars get this directory; each test its own (below).
os.environ.setdefault("SILENTWATCH_STATE_DIR", tempfile.mkdtemp(prefix="silentwatch-test-state-"))
# The team's shared datasets sit beside the checkout (CI clones main with shared/ beside it);
# SILENTWATCH_SHARED_DATA points elsewhere.
SHARED_DATA = Path(
    os.environ.get(
        "SILENTWATCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's sidecars (in process or subprocess) get a fresh durable-store directory."""
    monkeypatch.setenv("SILENTWATCH_STATE_DIR", str(tmp_path / "sidecar-state"))


@pytest.fixture(scope="session")
def world() -> SyntheticWorld:
    return SyntheticWorld(dim=DIM, delta=0.02, seed=3)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, world: SyntheticWorld) -> Path:
    x, y = world.sample(800)
    out = tmp_path_factory.mktemp("bundle") / "b"
    train_bundle(
        x,
        y,
        out,
        embedder=EmbedderSpec(name="test/embedder", version="v1", accepted_versions=("v1-int8",)),
        classifier_version="clf-test",
        reference_size=200,
        detectors=DetectorSettings(window_size=32, calibration_windows=200),
    )
    return out


@pytest.fixture
def sidecar_factory(bundle_dir: Path):
    started: list[Sidecar] = []

    def make(**overrides) -> Sidecar:
        settings = load_settings(bundle=bundle_dir, port=0, metrics_port=0, **overrides)
        sc = Sidecar(settings, bundle=load_bundle(bundle_dir)).start()
        started.append(sc)
        return sc

    yield make
    for sc in started:
        sc.stop(grace=0.5)


@pytest.fixture
def sidecar(sidecar_factory) -> Sidecar:
    return sidecar_factory()


@pytest.fixture
def stub(sidecar: Sidecar):
    with grpc.insecure_channel(sidecar.grpc_target) as ch:
        yield pb_grpc.MonitorStub(ch)


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
