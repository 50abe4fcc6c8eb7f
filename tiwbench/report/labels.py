"""Cells whose ratio trunk is the evaluator's classifier (the opt-in ``ratio.trunk_knows_labels``): that trunk
was trained on the labels the bias metric counts, so such a cell measures what label knowledge is worth, not a
practitioner's method. Every report shows their method with :data:`LABEL_MARK` and says why in its legend;
leaderboards keep them as reference rows (with the ceilings), never ranked."""

from __future__ import annotations

from typing import Any

LABEL_MARK = "†"
LABEL_NOTE = (f"{LABEL_MARK}: the ratio estimator's trunk is the evaluator's classifier (ratio.trunk_knows_labels), "
              "so it knows the labels the bias metric counts: a measure of what that knowledge is worth, not a "
              "method a practitioner can run (a reference row, never ranked).")


def knows_labels(record: dict[str, Any]) -> bool:
    """Whether the record's method uses a `trunk` estimator whose trunk is the evaluator's classifier."""
    ratio = (record.get("config") or {}).get("ratio") or {}
    if not ratio.get("trunk_knows_labels"):
        return False
    name = record["method"].partition("~")[0]
    method, at, providers = name.partition("@")
    from tiwbench.report.ceilings import _uses_ratio

    names = providers.split("+") if at else ([ratio.get("provider", "")] if _uses_ratio(method) else [])
    return any("trunk" in p for p in names)


def mark_label_trunks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with the method of every label-knowing cell marked (copies; idempotent)."""
    out = []
    for r in records:
        if knows_labels(r) and not r["method"].endswith(LABEL_MARK):
            r = {**r, "method": r["method"] + LABEL_MARK}
        out.append(r)
    return out


def any_marked(records: list[dict[str, Any]]) -> bool:
    return any(r["method"].endswith(LABEL_MARK) for r in records)
