"""Attacks on a model's latent space (paper B): batched latent PGD and its random baseline."""
