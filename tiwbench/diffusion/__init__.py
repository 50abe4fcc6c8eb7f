"""Diffusion core in EDM's parameterisation (Karras et al. 2022): preconditioning, DSM, Heun sampler."""
