"""The pre-release gate suite (torch, transformers). Imports monitor, never the reverse."""
