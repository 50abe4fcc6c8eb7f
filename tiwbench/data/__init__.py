"""Biased/reference datasets: the embedded mixtures and digits, and loaders for the paper's data."""
