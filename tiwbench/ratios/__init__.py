"""Density ratios w_σ = p_data/p_bias: the discriminators, the estimator registry, per-σ diagnostics.
May import the top-level shared modules, ``diffusion`` and ``data``."""
