from tiwbench.diffusion.losses import dsm_loss
from tiwbench.methods import Method, scatter_bias


class IWDSM(Method):
    """Time-independent importance weighting (Choi et al. 2020): D_bias samples weighted by
    w(y)^α from a classifier on clean data; no score correction."""

    name = "iw_dsm"
    ratio = "clean"
    description = "IW-DSM: clean-data weight w(y)^α, no correction"
    defaults = {"alpha": 1.0}  # flattening exponent of the weights

    def loss(self, net, batch, ratio=None):
        idx = batch.bias_idx
        log_w = ratio.log_ratio(batch.y[idx], batch.sigma[idx])
        weight = scatter_bias(batch, 1.0, (self.options["alpha"] * log_w).exp(), batch.sigma)
        return dsm_loss(net, batch, weight=weight)
