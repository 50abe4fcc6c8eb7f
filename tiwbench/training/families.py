"""Generator families: how a method's model is built, trained and sampled (METHOD.md §9).

A method names its family (``Method.family``); the runner asks ``tiwbench.registry.FAMILIES`` for it
and calls the same five functions whatever it is, so records, metrics, reference levels, intervals and
resumability are the family's business nowhere. Third parties subclass :class:`Family` and register it
in the entry-point group ``tiwbench.families``.

The model a family builds is one ``nn.Module``: its ``state_dict`` is what checkpoints, the finished
network file and checkpoint selection save and load, so a family gets preemption and snapshot
selection without code of its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import torch

from tiwbench.config import SampleConfig, TrainConfig


class Family(ABC):
    """Base class of registered generator families."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    uses_kernel: ClassVar[bool] = False  # trains and samples under a perturbation kernel (`method~vp`)
    # its model is a denoiser D(x; σ) that a held-out denoising loss can score (checkpoint selection's "loss")
    denoising_loss: ClassVar[bool] = False

    @abstractmethod
    def make_model(self, dataset, cfg: TrainConfig, kernel=None, method=None) -> torch.nn.Module:
        """A fresh model for ``dataset`` (the runner seeds torch first, so its init is the cell's)."""

    @abstractmethod
    def train(self, method, model: torch.nn.Module, x: torch.Tensor, is_ref: torch.Tensor, ratio,
              cfg: TrainConfig, generator: torch.Generator, device="cpu",
              progress: Callable[[int, int], None] | None = None, checkpoint: Path | None = None,
              snapshots: dict | None = None) -> tuple[torch.nn.Module, dict]:
        """Train on (x, is_ref) with the method's objective; return the model sampled (e.g. the EMA
        copy) and what to record. ``checkpoint`` and ``snapshots`` as in ``train_score``."""

    def latent_shape(self, dataset, method) -> tuple[int, ...]:
        """The shape of one sample's standard-normal latent (drawn from its own seed)."""
        return tuple(dataset.shape)

    def weight_stats(self, method, ratio, x: torch.Tensor, is_ref: torch.Tensor, generator: torch.Generator,
                     kernel=None) -> dict:
        """The effective sample size of the method's per-sample weights on fresh batches drawn as its
        training draws them (recorded as ``train.ess``). Default: the score network's (σ from ``kernel``)."""
        from tiwbench.training.loop import weight_stats

        return weight_stats(method, ratio, x, is_ref, generator, kernel=kernel)

    def prepare_sampling(self, model: torch.nn.Module, cfg: SampleConfig) -> torch.nn.Module:
        """The trained model as sampling runs it (e.g. compiled). Default: as it is."""
        return model

    @abstractmethod
    def sample(self, sampler_model, latents: torch.Tensor, kernel, cfg: SampleConfig) -> torch.Tensor:
        """Samples (the data's shape) from ``latents``, one per row and depending on its row only.
        ``sampler_model`` is what ``method.sampling_denoiser`` returned."""


class ScoreNetwork(Family):
    """A denoiser trained by a (weighted, corrected) DSM loss and sampled by the probability-flow ODE:
    every diffusion method, under any perturbation kernel."""

    name = "score"
    uses_kernel = True
    denoising_loss = True
    description = "score network: DSM-type losses (METHOD.md §4), probability-flow ODE sampler (Heun)"

    def make_model(self, dataset, cfg, kernel=None, method=None):
        from tiwbench.training.denoiser import make_denoiser

        return make_denoiser(dataset, cfg, kernel)

    def train(self, method, model, x, is_ref, ratio, cfg, generator, device="cpu", progress=None,
              checkpoint=None, snapshots=None):
        from tiwbench.training.loop import train_score

        return train_score(method, model, x, is_ref, ratio, cfg, generator, device, progress,
                           checkpoint=checkpoint, snapshots=snapshots)

    def prepare_sampling(self, model, cfg):
        from tiwbench.training.loop import sampling_network

        return sampling_network(model, cfg)

    def sample(self, sampler_model, latents, kernel, cfg):
        from tiwbench.diffusion.sampler import edm_sampler, kernel_sampler

        if kernel is None:  # EDM's own code path, number for number
            return edm_sampler(sampler_model, latents, cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho,
                               dtype=cfg.dtype)
        # the kernel's own discretisation (sample.sigma_min, sigma_max and rho are EDM's)
        return kernel_sampler(sampler_model, latents, kernel, cfg.steps, dtype=cfg.dtype)


def family_of(method) -> Family:
    """The registered family of a method (class or instance)."""
    from tiwbench.registry import FAMILIES

    return FAMILIES.get(method.family)()
