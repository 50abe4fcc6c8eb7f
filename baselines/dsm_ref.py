from tiwbench.training.methods import Method


class DSMRef(Method):
    """Plain DSM on the small unbiased reference set alone: unbiased, but data-starved."""

    name = "dsm_ref"
    train_on = "ref"
    description = "DSM on D_ref only"
