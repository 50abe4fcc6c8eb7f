"""The registered ``fd``: the plain Fréchet distance of tiwbench.metrics.base on vector data, and on an image
evaluator (one with a feature network) the same distance through eval.fid_backend (tiwbench.metrics.fidelity).
Kept apart so that the base module never imports the image libraries."""

from __future__ import annotations

from typing import Any

from tiwbench.metrics import base
from tiwbench.metrics.base import FIDELITY_MODULES, EvalContext


class FD(base.FD):
    @classmethod
    def needs(cls, dataset) -> dict[str, str]:
        return dict(FIDELITY_MODULES) if getattr(dataset, "kind", "") == "image" else {}

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        if getattr(ctx.evaluator, "network", None) is not None:
            from tiwbench.metrics.fidelity import evaluator_fd  # only images need torch-fidelity

            return evaluator_fd(ctx)
        return super().__call__(ctx)
