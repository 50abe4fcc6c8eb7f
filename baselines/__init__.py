"""Baselines of TIW-DSM, registered through entry points only (as a third-party plugin would be)."""
