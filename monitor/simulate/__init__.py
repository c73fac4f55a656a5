"""Synthetic data: paper A's drift operators and the demo's embedding world."""
