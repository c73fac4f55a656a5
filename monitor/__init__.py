"""The silentwatch sidecar: serve a classifier bundle, watch what it sees, export metrics.

Never imports torch or transformers (docs/architecture.md; a test enforces it).
"""
