"""tiwbench: benchmark training methods for unbiased diffusion models from biased datasets."""

__version__ = "0.1.0"
