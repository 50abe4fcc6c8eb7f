"""Import torchvision robustly; import this module before ``torch_fidelity`` or ``cleanfid``.

Both libraries import torchvision at import time. A CUDA build of torchvision installed beside a CPU
torch cannot load its C++ ops, and its fake-kernel registrations then fail with
``RuntimeError: operator torchvision::nms does not exist``. Declaring the two op schemas it
registers unguarded (``nms``, ``qnms``) lets the pure-Python parts (models, transforms) import; only
the C ops themselves stay unavailable, and the FID tools do not use them.
"""

from __future__ import annotations

import sys

import torch

SHIMMED = False  # True when the schemas had to be declared here

_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIB = None  # kept alive: dropping the Library object would unregister the schemas


def _forget_partial_import() -> None:
    # a failed import leaves half-initialised torchvision modules behind; the retry must start clean
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision():
    """Import and return torchvision, declaring the missing op schemas only when they are missing."""
    global SHIMMED, _LIB
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::nms" not in str(e) and "torchvision::qnms" not in str(e):
            raise
        _forget_partial_import()
        if _LIB is None:
            _LIB = torch.library.Library("torchvision", "FRAGMENT")
            for schema in _OPS:
                op = schema.split("(", 1)[0]
                if not _has_op(op):
                    _LIB.define(schema)
        SHIMMED = True
        import torchvision
    return torchvision


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


torchvision = import_torchvision()
