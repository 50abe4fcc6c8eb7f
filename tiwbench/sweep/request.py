"""A sweep as one request: what `tiwbench run` parses from its options, so that a sweep can also be driven
from Python::

    from tiwbench.sweep.request import SweepRequest, run_sweep
    result = run_sweep(SweepRequest(suite="smoke", profile="smoke", out=Path("runs"), executor="local"))
    assert result.complete

:func:`make_cells` expands and checks the request (bad input raises ConfigError with the fix);
:func:`run_sweep` runs it through the chosen executor and counts the cells against the folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tiwbench.config import ConfigError, Suite, load_suite
from tiwbench.sweep.runner import Cell, existing_record, expand, override_selection, run_cells, scale_budget

SLURM_OPTIONS = ("partition", "gpus_per_job", "tasks_per_job", "time_min", "cpus_per_job", "mem_gb")


@dataclass
class SweepRequest:
    suite: str = "ref_size"
    datasets: list[str] | None = None
    methods: list[str] | None = None
    ref_fracs: list[float] | None = None
    seeds: list[int] | None = None
    profile: str = "default"
    out: Path = Path("results/runs")
    device: str = "cpu"
    cache_dir: Path | None = Path("results/cache")
    fid_backend: str | None = None
    executor: str = "inline"  # inline, local or slurm
    jobs_dir: Path | None = None
    max_jobs: int = 0
    slurm: dict[str, Any] = field(default_factory=dict)  # SLURM_OPTIONS over the suite's slurm section
    threads: int = 1
    data_root: Path | None = None
    data_params: list[str] = field(default_factory=list)  # KEY=VALUE
    ratio: str | None = None
    budget_scale: float = 1.0
    sweep: dict[str, list] | None = None  # points of the suite's sweep to run, {KEY: [V1, V2]}
    # another checkpoint rule than the profile's (records under <suite>_sel-...): train.select_source,
    # train.select_by, train.ref_holdout
    select: str | None = None
    select_by: str | None = None
    ref_holdout: float | None = None


@dataclass
class SweepResult:
    cells: list[Cell]
    summary: dict[str, list]  # record paths: ok, skipped, others, lost, failed
    missing: list[Cell]  # cells without an ok record at the end, whoever ran them

    @property
    def complete(self) -> bool:
        return not self.missing


def apply_data_options(cells: list[Cell], data_root: Path | None, data_param: list[str]) -> None:
    """--data-root / --data-param become dataset parameters, so they are part of each cell's config."""
    import yaml

    from tiwbench.registry import DATASETS

    extra = {}
    for item in data_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--data-param {item!r}: write KEY=VALUE, e.g. rho=0.02")
        extra[key] = yaml.safe_load(value)  # numbers stay numbers
    if data_root is not None:
        extra["data_root"] = str(data_root.resolve())
    for cell in cells:
        allowed = DATASETS.get(cell.dataset).defaults
        for key, value in extra.items():
            if key in cell.sweep:  # it would relabel every point of the sweep with one value
                text = next(i.partition("=")[2] for i in reversed(data_param) if i.partition("=")[0] == key)
                points = ",".join(str(v) for v in dict.fromkeys(c.sweep[key] for c in cells))
                raise ConfigError(f"--data-param {key}={text}: suite {cell.suite!r} sweeps {key!r} (here {points}); "
                                  f"choose its points with --sweep {key}={text}")
            if key not in allowed:
                if key == "data_root":
                    continue  # embedded datasets of the same sweep need no files
                raise ConfigError(f"dataset {cell.dataset!r} has no parameter {key!r}; allowed: {sorted(allowed)}")
            cell.dataset_params[key] = value


def make_cells(req: SweepRequest) -> tuple[Suite, list[Cell]]:
    """The request's suite and its cells, every option applied to each cell's config (so to its hash)."""
    from tiwbench.sweep.executors import EXECUTORS
    from tiwbench.sweep.threads import resolve_threads

    if req.executor not in EXECUTORS:
        raise ConfigError(f"--executor {req.executor!r}: use one of {', '.join(EXECUTORS)}")
    if req.executor != "inline":
        import importlib.util

        if importlib.util.find_spec("submitit") is None:
            raise ConfigError(f"--executor {req.executor} needs submitit, which is not installed; "
                              "pip install 'tiwbench[cluster]' (or use --executor inline)")
    s = load_suite(req.suite)
    cells = expand(s, req.profile, req.datasets, req.methods, req.ref_fracs, req.seeds, req.sweep)
    cells = scale_budget(cells, req.budget_scale)
    cells = override_selection(cells, req.select, req.select_by, req.ref_holdout)
    apply_data_options(cells, req.data_root, req.data_params)
    if req.ratio is not None:
        from tiwbench.registry import RATIOS

        if req.ratio not in RATIOS:
            raise ConfigError(f"--ratio: {RATIOS.unknown_message(req.ratio)}")
        for cell in cells:
            cell.budget.ratio.provider = req.ratio
    if req.fid_backend is not None:
        if req.fid_backend not in ("torch-fidelity", "clean-fid"):
            raise ConfigError(f"--fid-backend {req.fid_backend!r}: use torch-fidelity or clean-fid")
        for cell in cells:  # part of each cell's config, so its hash and records follow the choice
            cell.budget.eval.fid_backend = req.fid_backend
    if req.threads < 0:
        raise ConfigError(f"--threads {req.threads}: give 1 or more, or 0 for the cores free now")
    n_threads = resolve_threads(req.threads)
    for cell in cells:  # part of each cell's config: a resumed sweep never mixes thread counts
        cell.threads = n_threads
    for key, value in req.slurm.items():
        if key not in SLURM_OPTIONS:
            raise ConfigError(f"slurm option {key!r}: use one of {', '.join(SLURM_OPTIONS)}")
        if value is not None:
            setattr(s.slurm, key, value)
    return s, cells


def run_sweep(req: SweepRequest, console=None, main: bool = True) -> SweepResult:
    """Run the request's cells (skipping those recorded, waiting for those another sweep holds) through its
    executor; progress to ``console`` (rich, stderr by default) on the main process only."""
    from rich.console import Console

    from tiwbench.progress import PlainReporter, RichReporter
    from tiwbench.sweep.executors import submit_sweep
    from tiwbench.sweep.stopping import stop_on_signals

    s, cells = make_cells(req)
    if main:
        from tiwbench.sweep.cost import cpu_warning

        note = cpu_warning(cells, req.device)
        if note:
            print(note, file=sys.stderr, flush=True)
    console = console or Console(stderr=True)
    echo = (lambda m: print(m, file=sys.stderr, flush=True)) if main else (lambda m: None)
    live = console.is_terminal and main
    reporter = RichReporter(len(cells), console) if live else PlainReporter(len(cells), echo=echo)
    with stop_on_signals():
        if req.executor == "inline":  # run_cells closes the reporter
            summary = run_cells(cells, req.out, device=req.device, cache_dir=req.cache_dir, reporter=reporter)
        else:
            try:
                summary = submit_sweep(cells, req.out, device=req.device, cache_dir=req.cache_dir,
                                       kind=req.executor, slurm=s.slurm, folder=req.jobs_dir,
                                       max_running=req.max_jobs, echo=reporter.echo, reporter=reporter)
            finally:
                reporter.close()
    # counted against the folder at the end, whoever ran the cells
    missing = [c for c in cells if existing_record(c, req.out) is None]
    return SweepResult(cells, summary, missing)
