"""GANs on vector data as a generator family (METHOD.md §9), with the real term reweighted as the
diffusion methods reweight theirs.

The discriminator's real term is an expectation under p_data (or, with instance noise, p_data,σ). On
D_obs = D_bias ∪ D_ref, D_ref samples keep weight 1 and D_bias samples get

- ``iw_gan``: w(y), the clean ratio (Choi et al. 2020), no instance noise;
- ``iw_gan_noise``: w(y) with instance noise, the clean weight of a noised real sample;
- ``tiw_gan``: w_σ(x_σ), the time-dependent ratio at the noised sample (Diffusion-GAN's instance noise,
  Wang et al. 2023): E[w(y) | x_σ] = w_σ(x_σ), the Rao–Blackwellised clean weight, same mean, no more
  variance.

With exact ratios all three are unbiased and need no correction: the real term involves no y-dependent
target, only f(x_σ) (unlike DSM, whose target ∇log k_σ(x | y) depends on y). ``gan_ref``, ``gan_obs`` and
``gan_noise_obs`` are the unweighted rows. Loss: non-saturating, R1 on the real term (weighted like it).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from tiwbench.diffusion.losses import Batch, device_generator
from tiwbench.diffusion.mlp import MLP
from tiwbench.training.families import Family
from tiwbench.training.methods import Method, ratio_on_batch

GAN_DEFAULTS: dict[str, Any] = {
    "latent_dim": 16,  # generator input: standard normal of this size
    "lr": 2e-4,  # Adam, generator and discriminator
    "beta1": 0.5,  # Adam's β1 (β2 = 0.99)
    "r1": 1.0,  # γ of the R1 penalty γ/2 E_real ‖∇ₓ ℓ(x)‖² (Mescheder et al. 2018)
    "noise_min": 0.01,  # instance noise: σ log-uniform on [noise_min, noise_max] · σ_data
    "noise_max": 1.0,
}


class GANModel(nn.Module):
    """An MLP generator G(z) and an MLP discriminator logit ℓ(x, σ) (σ-conditioned under instance noise)."""

    def __init__(self, dim: int, shape: tuple[int, ...], latent_dim: int, hidden: int, depth: int,
                 noise: bool, sigma_data: float):
        super().__init__()
        self.shape, self.noise, self.sigma_data = tuple(shape), noise, sigma_data
        self.generator = MLP(latent_dim, out_dim=dim, hidden=hidden, depth=depth, time=False)
        self.discriminator = MLP(dim, out_dim=1, hidden=hidden, depth=depth, time=noise)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        # scaled by σ_data so that an untrained generator starts at the data's scale
        return (self.sigma_data * self.generator(z.flatten(1))).reshape(len(z), *self.shape)

    def logit(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        c_noise = (sigma / self.sigma_data).clamp_min(1e-12).log() / 4 if self.noise else None
        return self.discriminator(x.flatten(1) / self.sigma_data, c_noise).flatten()

    def forward(self, z: torch.Tensor, sigma=None) -> torch.Tensor:  # the sampler's view: z -> sample
        return self.generate(z)


class GANMethod(Method):
    """Base of the GAN methods: ``instance_noise`` and the weight (``ratio``: None, "clean", "time")."""

    family = "gan"
    instance_noise: ClassVar[bool] = False
    defaults = dict(GAN_DEFAULTS)

    def loss(self, net, batch, ratio=None):
        raise TypeError(f"{self.name} is a GAN: the gan family trains it; it has no per-element DSM loss")

    def noise_sigma(self, n: int, sigma_data: float, generator: torch.Generator, device="cpu") -> torch.Tensor:
        """σ per sample: log-uniform on [noise_min, noise_max]·σ_data under instance noise, else 0."""
        if not self.instance_noise:
            return torch.zeros(n, device=device)
        lo, hi = (math.log(self.options[k] * sigma_data) for k in ("noise_min", "noise_max"))
        return (torch.rand(n, generator=generator, device=device) * (hi - lo) + lo).exp()

    def real_weight(self, batch: Batch, ratio=None) -> torch.Tensor:
        """The weight of each real sample's term: 1 on D_ref rows and for unweighted methods; w(y)
        (``ratio`` "clean") or w_σ(x_σ) ("time") on D_bias rows."""
        if self.ratio is None:
            return torch.ones(len(batch.y), device=batch.y.device)
        return ratio_on_batch(ratio, batch, inputs="x" if self.ratio == "time" else "y").exp()

    def discriminator_loss(self, model: GANModel, batch: Batch, fake: torch.Tensor, fake_sigma: torch.Tensor,
                           ratio=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample real and fake terms: w · softplus(−ℓ(x_real)) + γ/2 · w · ‖∇ℓ‖², softplus(ℓ(x_fake))."""
        w = self.real_weight(batch, ratio).detach()
        x_real = batch.x.detach().requires_grad_(self.options["r1"] > 0)
        logit_real = model.logit(x_real, batch.sigma)
        real = w * F.softplus(-logit_real)
        if self.options["r1"] > 0:
            (grad,) = torch.autograd.grad(logit_real.sum(), x_real, create_graph=True)
            real = real + 0.5 * self.options["r1"] * w * grad.flatten(1).pow(2).sum(1)
        return real, F.softplus(model.logit(fake, fake_sigma))


class GANRef(GANMethod):
    name = "gan_ref"
    train_on = "ref"
    description = "GAN on D_ref only (non-saturating, R1)"


class GANObs(GANMethod):
    name = "gan_obs"
    description = "GAN on D_bias ∪ D_ref, unweighted"


class GANNoiseObs(GANMethod):
    name = "gan_noise_obs"
    instance_noise = True
    description = "instance-noise GAN on D_bias ∪ D_ref, unweighted (the noise without the weighting)"


class IWGAN(GANMethod):
    name = "iw_gan"
    ratio = "clean"
    description = "importance-weighted GAN (Choi et al. 2020): real D_bias term weighted by w(y)"


class IWGANNoise(GANMethod):
    name = "iw_gan_noise"
    ratio = "clean"
    instance_noise = True
    description = "instance-noise GAN, real D_bias term weighted by the clean w(y)"


class TIWGAN(GANMethod):
    name = "tiw_gan"
    ratio = "time"
    instance_noise = True
    description = "instance-noise GAN, real D_bias term weighted by w_σ(x_σ) (time-dependent ratio)"


class _Optimisers:
    """The generator's and the discriminator's Adam as one object, for the shared checkpoint code."""

    def __init__(self, g: torch.optim.Optimizer, d: torch.optim.Optimizer):
        self.g, self.d = g, d

    def state_dict(self) -> dict:
        return {"g": self.g.state_dict(), "d": self.d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])


class GAN(Family):
    """Alternating discriminator and generator steps on the method's objective; the EMA generator is
    sampled (one latent per sample seed)."""

    name = "gan"
    description = "GAN: MLP generator and discriminator, non-saturating loss with R1, optional instance noise"

    def make_model(self, dataset, cfg, kernel=None, method=None):
        if dataset.kind != "vector":
            raise ValueError(f"the gan family has vector-data networks only; {dataset.name} is {dataset.kind}")
        return GANModel(math.prod(dataset.shape), dataset.shape, int(method.options["latent_dim"]), cfg.hidden,
                        cfg.depth, method.instance_noise, float(dataset.sigma_data))

    def latent_shape(self, dataset, method):
        return (int(method.options["latent_dim"]),)

    def sample(self, sampler_model, latents, kernel, cfg):
        with torch.inference_mode():
            return sampler_model.generate(latents)

    @torch.no_grad()
    def weight_stats(self, method, ratio, x, is_ref, generator, kernel=None, n_batches: int = 8,
                     batch_size: int = 256):
        """ESS of the real term's weights on batches drawn as training draws them (its own noise levels)."""
        from tiwbench.training.loop import effective_sample_size

        if ratio is None or method.ratio is None:
            return {"ess": 1.0}
        dev = next(ratio.parameters()).device if isinstance(ratio, torch.nn.Module) else "cpu"
        # σ_data of the model trained just before (the noise schedule's unit); the data's rms std otherwise
        sd, ess = getattr(self, "sigma_data", None) or float(x.flatten(1).std(0).pow(2).mean().sqrt()), []
        for _ in range(n_batches):
            idx = torch.randint(len(x), (batch_size,), generator=generator)
            y = x[idx].to(dev)
            b = Batch(y=y, is_ref=is_ref[idx].to(dev), sigma=method.noise_sigma(batch_size, sd, generator).to(dev),
                      noise=torch.randn(y.shape, generator=generator).to(dev))
            ess.append(float(effective_sample_size(method.real_weight(b, ratio).double())))
        return {"ess": sum(ess) / len(ess)}

    def train(self, method, model, x, is_ref, ratio, cfg, generator, device="cpu", progress=None,
              checkpoint=None, snapshots=None):
        from tiwbench.training.loop import (
            CellTimeout,
            NonFiniteLoss,
            ema_beta,
            load_checkpoint,
            save_checkpoint,
        )

        model.to(device).train()
        self.sigma_data = model.sigma_data  # for weight_stats, which the runner calls after training
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        x, is_ref = x.to(device), is_ref.to(device)
        generator = device_generator(generator, device)
        o = method.options
        betas = (o["beta1"], 0.99)
        opt = _Optimisers(torch.optim.Adam(model.generator.parameters(), lr=o["lr"], betas=betas),
                          torch.optim.Adam(model.discriminator.parameters(), lr=o["lr"], betas=betas))
        losses = torch.zeros(cfg.steps, 2, device=device)  # (discriminator, generator) per step
        start, first = time.monotonic(), 0
        if checkpoint is not None and checkpoint.exists():
            first = load_checkpoint(checkpoint, model, ema, opt, generator, losses, snapshots)
        for step in range(first, cfg.steps):
            losses[step] = gan_step(method, model, opt, x, is_ref, ratio, cfg.batch_size, generator)
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()),
                                     1 - ema_beta(step, cfg.ema_halflife, cfg.ema_rampup))
            if snapshots is not None and cfg.select_every and ((step + 1) % cfg.select_every == 0
                                                               or step + 1 == cfg.steps):
                snapshots[step + 1] = {k: v.detach().cpu().clone() for k, v in ema.state_dict().items()}
            if (step + 1) % cfg.check_every == 0 or step + 1 == cfg.steps:
                bad = ~torch.isfinite(losses[: step + 1].sum(1))
                if bad.any():
                    raise NonFiniteLoss(int(bad.nonzero()[0]))
                if cfg.time_limit and time.monotonic() - start > cfg.time_limit:
                    raise CellTimeout(step + 1, cfg.time_limit)
            if checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < cfg.steps:
                save_checkpoint(checkpoint, step + 1, model, ema, opt, generator, losses, snapshots)
            if progress is not None:
                progress(step + 1, cfg.steps)
        tail = losses[-max(1, cfg.steps // 10):].mean(0)
        info = {"final_loss": float(tail.sum()), "d_loss": float(tail[0]), "g_loss": float(tail[1]),
                "steps": cfg.steps, "seconds": time.monotonic() - start, "resumed_from_step": first}
        return ema, {**info, **collapse_check(ema, x, method)}


def gan_step(method: GANMethod, model: GANModel, opt: _Optimisers, x: torch.Tensor, is_ref: torch.Tensor, ratio,
             batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """One discriminator step then one generator step (the same latents); returns both losses."""
    dev, sd = x.device, model.sigma_data
    idx = torch.randint(len(x), (batch_size,), generator=generator, device=dev)
    y = x[idx]
    real = Batch(y=y, is_ref=is_ref[idx], sigma=method.noise_sigma(batch_size, sd, generator, dev),
                 noise=torch.randn(y.shape, generator=generator, device=dev))
    z = torch.randn(batch_size, model.generator.layers[0].in_features, generator=generator, device=dev)
    fake_sigma = method.noise_sigma(batch_size, sd, generator, dev)
    fake_noise = torch.randn(y.shape, generator=generator, device=dev)

    def noised(sample):
        return sample + fake_sigma.reshape(-1, *[1] * (y.ndim - 1)) * fake_noise

    real_term, fake_term = method.discriminator_loss(model, real, noised(model.generate(z).detach()), fake_sigma,
                                                     ratio)
    d_loss = (real_term + fake_term).mean()  # mean over the batch: Σ w f / B, unbiased for E_data f
    opt.d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt.d.step()
    g_loss = F.softplus(-model.logit(noised(model.generate(z)), fake_sigma)).mean()  # non-saturating
    opt.g.zero_grad(set_to_none=True)
    g_loss.backward()  # the discriminator's gradients from here are cleared before its next step
    opt.g.step()
    return torch.stack([d_loss.detach(), g_loss.detach()])


@torch.no_grad()
def collapse_check(ema: GANModel, x: torch.Tensor, method: GANMethod, n: int = 2048) -> dict:
    """The generator's spread (rms distance to its mean) over the training data's: a collapsed run
    (spread under 0.1 of the data's) is counted in the record, not hidden."""
    z = torch.randn(n, method.options["latent_dim"], generator=torch.Generator().manual_seed(0)).to(x.device)
    out = ema.generate(z).flatten(1).double()
    data = x.flatten(1).double()
    spread = float((out - out.mean(0)).pow(2).sum(1).mean().sqrt() / (data - data.mean(0)).pow(2).sum(1).mean().sqrt())
    return {"spread": spread, "collapsed": bool(spread < 0.1)}
