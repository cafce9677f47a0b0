"""Model protection at rest: sealed (AEAD) files and the model store interface."""
