from tiwbench.diffusion.losses import dsm_loss
from tiwbench.methods import Method, scatter_bias


class TIWDSMNoCorr(Method):
    """The TIW-DSM ablation with reweighting only: w_σ(x) without the σ²∇log w_σ correction.
    Theorem 1 does not hold for it: its minimiser is not the unbiased denoiser."""

    name = "tiw_dsm_nocorr"
    ratio = "time"
    description = "TIW-DSM without the score correction (weight w_σ(x) only)"

    def loss(self, net, batch, ratio=None):
        idx = batch.bias_idx
        log_w = ratio.log_ratio(batch.x[idx], batch.sigma[idx])
        return dsm_loss(net, batch, weight=scatter_bias(batch, 1.0, log_w.exp(), batch.sigma))
