"""The silentwatch sidecar: serve a classifier bundle, watch what it sees, export metrics.

Never imports torch or transformers (DESIGN.md, rules of the house).
"""
