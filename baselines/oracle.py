from tiwbench.training.methods import Method


class Oracle(Method):
    """The ceiling: plain DSM on a large unbiased set (unavailable in practice)."""

    name = "oracle"
    train_on = "oracle"
    ceiling = True
    description = "DSM on a large unbiased set (ceiling)"
