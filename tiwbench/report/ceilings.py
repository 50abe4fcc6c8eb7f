"""Which leaderboard rows are ceilings: methods no practitioner can run (a method trained on a large
unbiased set, or a ratio estimator that uses the true densities or D_ref's true labels). They are
reference rows, shown and labelled but never ranked, so that a winner is always a method one can run.

Decided from what the registry entries declare (``Method.ceiling``, ``RatioEstimator.ceiling``), so a new
ceiling registered with the flag is covered without a list of names here.
"""

from __future__ import annotations

from typing import Any

from tiwbench.registry import METHODS, RATIOS, RegistryError

CEILING_LABEL = "ceiling"


def _declared(registry, name: str) -> bool | None:
    """The entry's ``ceiling`` flag; None where the name is not registered here (a plugin not installed)."""
    try:
        return bool(getattr(registry.get(name), "ceiling", False))
    except RegistryError:
        return None


def _uses_ratio(method: str) -> bool:
    try:
        entry = METHODS.get(method)
    except RegistryError:
        return False
    return bool(getattr(entry, "ratio", None) or getattr(entry, "sampling_ratio", None))


def is_ceiling(name: str, provider: str | None = None) -> bool:
    """Whether the leaderboard row ``name`` (``method``, ``method@ratio``, ``method@A+B``, each with an
    optional ``~kernel``) is a ceiling. ``provider``: the suite's ratio estimator, used where the name
    does not carry one and the method uses a ratio."""
    method, _, ratios = name.partition("~")[0].partition("@")
    if _declared(METHODS, method):
        return True
    names = ratios.split("+") if ratios else ([provider] if provider and _uses_ratio(method) else [])
    return any(_declared(RATIOS, r) for r in names if r)


def record_is_ceiling(record: dict[str, Any]) -> bool:
    """:func:`is_ceiling` of a record's method, with the ratio estimator its config names."""
    provider = ((record.get("config") or {}).get("ratio") or {}).get("provider")
    return is_ceiling(record["method"], provider)
