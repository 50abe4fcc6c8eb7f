from tiwbench.diffusion.losses import dsm_loss
from tiwbench.diffusion.precond import expand_like
from tiwbench.training.methods import Method, ratio_on_batch


class TIWDSMNoWeight(Method):
    """The TIW-DSM ablation with the score correction only: target y + σ²∇log w_σ(x), weight 1.
    Its pointwise minimiser is already the unbiased denoiser E_data[y|x] (the weight does not move
    it); Theorem 1's identity, equality with DSM on p_data up to a constant, does not hold for it."""

    name = "tiw_dsm_noweight"
    ratio = "time"
    description = "TIW-DSM without the weight (score correction σ²∇log w_σ(x) only)"
    per_sample_weights = False  # weight 1

    def loss(self, net, batch, ratio=None):
        _, grad = ratio_on_batch(ratio, batch, grad=True)  # D_ref rows: shift 0
        return dsm_loss(net, batch, target_shift=expand_like(batch.sigma, grad) ** 2 * grad)
