from tiwbench.diffusion.losses import dsm_loss
from tiwbench.training.methods import Method, ratio_on_batch


class IWDSM(Method):
    """Time-independent importance weighting (Choi et al. 2020): D_bias samples weighted by
    w(y)^α from a classifier on clean data; no score correction."""

    name = "iw_dsm"
    ratio = "clean"
    description = "IW-DSM: clean-data weight w(y)^α, no correction"
    defaults = {"alpha": 1.0}  # flattening exponent of the weights

    def loss(self, net, batch, ratio=None):
        log_w = ratio_on_batch(ratio, batch, inputs="y")  # 0 on D_ref rows: weight 1
        return dsm_loss(net, batch, weight=(self.options["alpha"] * log_w).exp())
