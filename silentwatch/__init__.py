"""silentwatch: keep embedding-based safety classifiers honest."""

__version__ = "0.1.0"
