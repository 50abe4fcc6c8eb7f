"""Training: the methods (losses as deltas on DSM), the generator families that train and sample them
(score network, GAN, VAE), the loop with its checkpoints, data parallelism and
preemption hold, the score-network factory and the step benchmark.
May import the top-level shared modules, ``diffusion``, ``data`` and ``ratios``."""
