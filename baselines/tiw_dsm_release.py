import torch

from tiwbench.diffusion.losses import dsm_loss
from tiwbench.diffusion.precond import expand_like
from tiwbench.training.methods import Method


class TIWDSMRelease(Method):
    """A replica of the loss in the authors' released code (METHOD.md §6, PAPER_FACTS.md §2), so that
    what the published numbers measure can be measured here. It is not TIW-DSM's mathematics and is
    not recommended. With d = sigmoid(ℓ) the balanced discriminator's output, on every sample of the
    batch (the release does not tell D_ref from D_bias):

    - weight ``2d`` indexed twice, so the product broadcasts to [B,1,1,B,C,H,W] and its sum is
      (Σ_i 2 d_i) · Σ_j λ_j ‖D_j − y'_j‖²: one scalar for the whole batch, per-sample weights lost;
    - target y' = y − σ²∇ₓd: the opposite sign to theory, ∇d instead of ∇log w.

    The per-element loss returned is the broadcast summed over its first axis, (Σ_i 2 d_i) λ_j (D_j − y'_j)²,
    so the loss of one sample depends on the whole batch (exempt from that part of the method contract).
    """

    name = "tiw_dsm_release"
    ratio = "time"
    description = ("replica of the released code's loss, not TIW-DSM: batch weight Σ2d (broadcast), "
                   "target y − σ²∇d; not recommended")
    per_sample_weights = False  # one batch scalar: every sample weighs the same

    def loss(self, net, batch, ratio=None):
        logit, grad_logit = ratio.log_ratio_and_grad(batch.x, batch.sigma)
        d = torch.sigmoid(logit)  # the clip of ℓ at ±log 1e5 is the release's clip of d to [1e-5, 1 − 1e-5]
        grad_d = expand_like(d * (1 - d), grad_logit) * grad_logit
        shift = -expand_like(batch.sigma, grad_d) ** 2 * grad_d
        weight = (2 * d).sum().expand(len(d))
        return dsm_loss(net, batch, weight=weight, target_shift=shift)
