"""``tilt_shift``: the within-mode bias of `gmm` (METHOD.md §5a). Per component, the posterior-weighted
mean of uᵀx minus the truth's uᵀμ_k, in units of sqrt(uᵀΣ_k u); the value is its rms over components
weighted by their generated mass (0 for the truth, β·sqrt(uᵀΣ_k u) per mode for p_bias's tilt)."""

from __future__ import annotations

from typing import Any

from tiwbench.metrics.base import EvalContext, Metric, MetricError


class TiltShift(Metric):
    name = "tilt_shift"
    higher_is_better = False
    description = "rms within-mode shift along the tilt direction u, in units of each mode's std along u (gmm)"

    @classmethod
    def applies(cls, ctx: EvalContext) -> bool:
        return hasattr(ctx.evaluator, "tilt_shift")

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        if not self.applies(ctx):
            raise MetricError("tilt_shift needs a dataset with a tilt direction (gmm, gmm_tilt)")
        value, per_mode = ctx.evaluator.tilt_shift(ctx.samples)
        return {"value": value, "per_mode": per_mode}
