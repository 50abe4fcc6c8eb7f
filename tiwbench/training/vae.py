"""VAEs on vector data as a generator family (METHOD.md §9): the negative ELBO is an expectation over y,
so E_{p_bias}[w(y) ELBO(y)] = E_{p_data}[ELBO(y)]; there is no noise level, so only the clean weight applies.

``vae_ref`` (D_ref), ``vae_obs`` (D_obs unweighted), ``iw_vae`` (D_bias samples weighted by w(y), D_ref
samples by 1). The latent has the data's dimension, so the reparameterisation noise is the batch's own
standard-normal draw and the family trains with the score network's loop (Adam, EMA, checkpoints).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tiwbench.diffusion.mlp import MLP
from tiwbench.training.families import Family
from tiwbench.training.methods import Method, ratio_on_batch


class VAEModel(nn.Module):
    """Gaussian encoder q(z | y) = N(μ(y), diag s(y)²), Gaussian decoder p(y | z) = N(m(z), diag σ_x²)
    with a learned per-dimension σ_x; inputs and outputs in units of σ_data."""

    def __init__(self, dim: int, shape: tuple[int, ...], hidden: int, depth: int, sigma_data: float):
        super().__init__()
        self.dim, self.shape, self.sigma_data = dim, tuple(shape), sigma_data
        self.encoder = MLP(dim, out_dim=2 * dim, hidden=hidden, depth=depth, time=False)
        self.decoder = MLP(dim, out_dim=dim, hidden=hidden, depth=depth, time=False)
        self.log_obs_std = nn.Parameter(torch.full((dim,), math.log(0.1)))

    def elbo(self, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Per-sample ELBO of y (in σ_data units), one reparameterised draw z = μ + s ε."""
        u = y.flatten(1) / self.sigma_data
        mu, log_s = self.encoder(u).chunk(2, dim=1)
        log_s = log_s.clamp(-10, 5)
        z = mu + log_s.exp() * eps.flatten(1)
        r = (u - self.decoder(z)) / self.log_obs_std.exp()
        log_lik = -0.5 * r.pow(2).sum(1) - self.log_obs_std.sum() - 0.5 * self.dim * math.log(2 * math.pi)
        kl = 0.5 * (mu.pow(2) + (2 * log_s).exp() - 1 - 2 * log_s).sum(1)
        return log_lik - kl

    def generate(self, latents: torch.Tensor) -> torch.Tensor:
        """y = m(z) + σ_x e from one latent row (z, e) per sample."""
        z, e = latents.flatten(1).chunk(2, dim=1)
        u = self.decoder(z) + self.log_obs_std.exp() * e
        return (self.sigma_data * u).reshape(len(latents), *self.shape)

    def forward(self, latents, sigma=None):
        return self.generate(latents)


class VAEMethod(Method):
    family = "vae"

    def loss(self, net, batch, ratio=None) -> torch.Tensor:
        """−w · ELBO(y) per sample (w = 1 unweighted and on D_ref rows; w(y) on D_bias rows with a ratio)."""
        neg = -net.elbo(batch.y, batch.noise)
        if self.ratio is not None:
            neg = neg * ratio_on_batch(ratio, batch, inputs="y").exp()
        return neg[:, None]


class VAERef(VAEMethod):
    name = "vae_ref"
    train_on = "ref"
    description = "VAE on D_ref only"


class VAEObs(VAEMethod):
    name = "vae_obs"
    description = "VAE on D_bias ∪ D_ref, unweighted"


class IWVAE(VAEMethod):
    name = "iw_vae"
    ratio = "clean"
    description = "importance-weighted VAE: D_bias samples' ELBO weighted by the clean ratio w(y)"


class VAE(Family):
    """Trained by the score network's loop on the method's −w·ELBO; sampled by the (EMA) decoder."""

    name = "vae"
    description = "VAE: MLP encoder and decoder, ELBO (optionally weighted by w(y)), latent of the data's size"

    def make_model(self, dataset, cfg, kernel=None, method=None):
        if dataset.kind != "vector":
            raise ValueError(f"the vae family has vector-data networks only; {dataset.name} is {dataset.kind}")
        return VAEModel(math.prod(dataset.shape), dataset.shape, cfg.hidden, cfg.depth, float(dataset.sigma_data))

    def train(self, method, model, x, is_ref, ratio, cfg, generator, device="cpu", progress=None,
              checkpoint=None, snapshots=None):
        from tiwbench.training.loop import train_score

        return train_score(method, model, x, is_ref, ratio, cfg, generator, device, progress,
                           checkpoint=checkpoint, snapshots=snapshots)

    def latent_shape(self, dataset, method):
        return (2 * math.prod(dataset.shape),)

    def sample(self, sampler_model, latents, kernel, cfg):
        with torch.inference_mode():
            return sampler_model.generate(latents)
