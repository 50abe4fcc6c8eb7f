"""Metrics, registered with their direction (higher or lower is better). May import the top-level shared
modules and ``data``."""
