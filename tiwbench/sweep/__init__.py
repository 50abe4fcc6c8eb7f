"""Running a suite: cells and groups, the runner, executors (local, submitit), cell locks, threads and the
cost estimate. May import every layer below it: shared modules, ``diffusion``, ``data``, ``metrics``,
``ratios``, ``training`` and ``report``."""
