"""The classifier bundle: the artifact the sidecar serves and the gate emits."""

from .io import BundleError, LoadedBundle, load_bundle, write_bundle
from .manifest import BundleManifest, EmbedderSpec, Thresholds
from .train import TrainResult, train_bundle

__all__ = [
    "BundleError",
    "BundleManifest",
    "EmbedderSpec",
    "LoadedBundle",
    "Thresholds",
    "TrainResult",
    "load_bundle",
    "train_bundle",
    "write_bundle",
]
