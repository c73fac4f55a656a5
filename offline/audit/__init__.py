"""Paper B's representation-level audit: latent monitor probe, dissociation, refusal judging,
latent vulnerability score. Needs the offline extra (torch, transformers, peft)."""
