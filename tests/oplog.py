"""An op log for the fast-path tests: every aten op dispatched, and the shape and dtypes of every copy or cast."""

import collections

from torch.utils._python_dispatch import TorchDispatchMode

COPIES = ("_to_copy", "copy_", "clone", "contiguous")


class OpLog(TorchDispatchMode):
    """Every aten op dispatched, and the shape and dtypes of every copy or cast."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        self.ops[name] += 1
        if name in COPIES:
            self.copies.append((name, tuple(args[0].shape), args[0].dtype))
        return func(*args, **(kwargs or {}))
