from tiwbench.diffusion.losses import dsm_loss
from tiwbench.training.methods import Method, ratio_on_batch


class TIWDSMNoCorr(Method):
    """The TIW-DSM ablation with reweighting only: w_σ(x) without the σ²∇log w_σ correction.
    Theorem 1 does not hold for it: its minimiser is not the unbiased denoiser."""

    name = "tiw_dsm_nocorr"
    ratio = "time"
    description = "TIW-DSM without the score correction (weight w_σ(x) only)"

    def loss(self, net, batch, ratio=None):
        log_w = ratio_on_batch(ratio, batch)  # 0 on D_ref rows: weight 1
        return dsm_loss(net, batch, weight=log_w.exp())
