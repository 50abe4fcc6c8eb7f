from tiwbench.training.methods import Method


class DSMObs(Method):
    """Plain DSM on D_obs = D_bias ∪ D_ref: all the data, and all of its bias."""

    name = "dsm_obs"
    description = "DSM on D_obs = D_bias ∪ D_ref, unweighted"
