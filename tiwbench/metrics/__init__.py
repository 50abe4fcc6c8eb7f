"""Metrics, registered with their direction (higher or lower is better)."""
