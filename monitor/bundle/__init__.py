"""The classifier bundle: the artifact the sidecar serves and the gate emits."""

from .io import BundleError, LoadedBundle, load_bundle, write_bundle
from .manifest import BundleManifest, EmbedderSpec, Thresholds
from .train import TrainResult, fit_classifier, train_bundle

__all__ = [
    "BundleError",
    "BundleManifest",
    "EmbedderSpec",
    "LoadedBundle",
    "Thresholds",
    "TrainResult",
    "fit_classifier",
    "load_bundle",
    "train_bundle",
    "write_bundle",
]
