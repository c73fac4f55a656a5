"""The classifier bundle's format: the artifact the sidecar serves and the gate emits.

Only the format lives here (manifest schema, reading and writing, signatures); building a
bundle from data is :mod:`silentwatch.monitor.training`.
"""

from silentwatch.monitor.bundle.io import (
    BundleError,
    Head,
    LoadedBundle,
    load_bundle,
    write_bundle,
)
from silentwatch.monitor.bundle.manifest import (
    MAX_HEADS,
    BundleManifest,
    EmbedderSpec,
    HeadManifest,
    Thresholds,
)

__all__ = [
    "MAX_HEADS",
    "BundleError",
    "BundleManifest",
    "EmbedderSpec",
    "Head",
    "HeadManifest",
    "LoadedBundle",
    "Thresholds",
    "load_bundle",
    "write_bundle",
]
