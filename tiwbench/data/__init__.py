"""Biased/reference datasets: the embedded mixtures and digits, loaders for the paper's data, and the
image datasets' evaluator. May import only the top-level shared modules."""
