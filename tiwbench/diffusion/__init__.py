"""Diffusion core in EDM's parameterisation (Karras et al. 2022): preconditioning, DSM, the Heun sampler
and the raw networks (MLP, U-Net). May import only the top-level shared modules."""
