"""Paper B's representation-level audit: latent monitor probe, dissociation, the latent PGD grid,
latent vulnerability score (refusal judges: ``silentwatch.offline.judge``). Needs the offline
extra (torch, transformers, peft)."""
