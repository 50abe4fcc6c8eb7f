"""Importance resampling of finished samples: a model of p_obs, its samples resampled by p_data/p_obs."""

from __future__ import annotations

import torch

from baselines.dg_obs import data_over_obs_log_ratio
from baselines.dsm_obs import DSMObs
from tiwbench.training.loop import effective_sample_size


class IRObs(DSMObs):
    """Plain DSM on D_obs; its N finished samples are resampled (with replacement, seeded) with
    probabilities ∝ p_data/p_obs = w/(π w + 1 − π), w the clean ratio. Exact when the model is p_obs
    and N → ∞; duplicates lower diversity where the weights are uneven (``resample_ess`` says how much)."""

    name = "ir_obs"
    sampling_ratio = "clean"
    trains_as = "dsm_obs"
    description = "DSM on D_obs, finished samples resampled ∝ p_data/p_obs (clean ratio)"

    def finish_samples(self, samples, ratio=None, ref_share: float = 0.0, generator=None):
        log_w = ratio.log_ratio(samples, torch.zeros(len(samples), dtype=samples.dtype, device=samples.device))
        log_r = data_over_obs_log_ratio(log_w.double(), ref_share)
        p = torch.softmax(log_r, 0).cpu()
        self.sampling_info = {"resample_ess": float(effective_sample_size(p))}
        idx = torch.multinomial(p, len(samples), replacement=True, generator=generator)
        return samples[idx.to(samples.device)]
