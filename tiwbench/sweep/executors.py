"""Where a sweep runs: in this process (default), or as submitit jobs on this machine or on Slurm.

A job is one (dataset, ref_frac, seed) group, not one cell: the group's methods share its split,
evaluator and ratio models (runner.Group), so per-cell jobs would train the same ratio models up to
three times. A job calls the same ``run_cells`` as an in-process run, so it writes the same records;
cells already recorded with the same config hash are dropped before anything is submitted, so a sweep
resumes across executors.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tiwbench.config import ConfigError, SlurmConfig
from tiwbench.records import RECORD_NAME, cell_dir
from tiwbench.registry import DATASETS
from tiwbench.sweep import locks
from tiwbench.sweep.runner import PlainReporter, existing_record, run_cells
from tiwbench.sweep.stopping import clear_claims, signals_deferred, stop_jobs
from tiwbench.sweep.threads import cells_threads
from tiwbench.training import distributed, preemption

EXECUTORS = ("inline", "local", "slurm")


try:  # submitit is an optional dependency (the "cluster" extra); only the job classes need it
    from submitit.helpers import Checkpointable, DelayedSubmission
except ImportError:  # pragma: no cover - inline runs work without it
    Checkpointable, DelayedSubmission = object, None


class GroupJob(Checkpointable):
    """The body of one job: the group's cells, exactly as an in-process run does them.

    Checkpointable through submitit: on the preemption / time-limit signal submitit calls
    :meth:`checkpoint` and requeues the job with the same arguments. The signal is held
    (tiwbench.training.preemption) until the training loop has saved its checkpoint after the current step;
    the requeued job skips the cells already recorded and resumes the interrupted one from it.
    """

    def __init__(self, grace_s: float = 30.0):
        self.grace_s = grace_s  # how long a signal outside training waits for a step end
        self.requeues = 0

    def __call__(self, cells: list, out: str, device: str, cache_dir: str | None) -> dict[str, list]:
        import submitit

        os.environ[locks.JOB_ENV] = str(submitit.JobEnvironment().job_id)  # in its claims: see stopping.clear_claims
        preemption.hold(submitit.JobEnvironment._usr_sig(), self.grace_s)
        if submitit.JobEnvironment().num_tasks > 1:  # one task per GPU: DDP, as under torchrun
            # rank, world size and the master's address from the Slurm (or local executor's) environment
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            device = distributed.init(device)
        main = distributed.is_main()
        echo = (lambda m: print(m, flush=True)) if main else (lambda m: None)
        if self.requeues:
            echo(f"requeued job, start {self.requeues + 1}: recorded cells are skipped, a checkpoint is resumed")
        try:
            return run_cells(cells, Path(out), device=device, cache_dir=Path(cache_dir) if cache_dir else None,
                             reporter=PlainReporter(len(cells), echo=echo, heartbeat=main))
        finally:
            distributed.shutdown()

    def checkpoint(self, *args: Any, **kwargs: Any):
        print("preemption or time-limit signal: requeueing this job", flush=True)
        self.requeues += 1
        return DelayedSubmission(self, *args, **kwargs)


def make_executor(kind: str, folder: Path, slurm: SlurmConfig, device: str):
    import submitit

    if kind not in ("local", "slurm"):
        raise ConfigError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=kind)
    ntasks = tasks_per_job(slurm)
    params: dict[str, Any] = {"timeout_min": slurm.time_min, "cpus_per_task": max(1, slurm.cpus_per_job // ntasks),
                              "mem_gb": slurm.mem_gb, "name": "tiwbench", "tasks_per_node": ntasks}
    if kind == "slurm":
        params.update(gpus_per_node=slurm.gpus_per_job, slurm_array_parallelism=slurm.max_parallel)
        extra = dict(slurm.extra)
        for key in ("account", "qos", "constraint"):
            if getattr(slurm, key):
                extra[key] = getattr(slurm, key)
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        if extra:
            params["slurm_additional_parameters"] = extra
    elif device.startswith("cuda"):
        params["gpus_per_node"] = max(slurm.gpus_per_job, 1)
    ex.update_parameters(**params)
    return ex


def tasks_per_job(slurm: SlurmConfig) -> int:
    """Processes per job: ``tasks_per_job``, else one per GPU, else one."""
    return slurm.tasks_per_job or max(slurm.gpus_per_job, 1)


def _cost(cell) -> float:
    image = getattr(DATASETS.get(cell.dataset), "kind", "vector") == "image"
    return cell.budget.train.steps * cell.budget.train.batch_size * (20 if image else 1)


def submit_sweep(cells: list, out: Path, device: str = "cpu", cache_dir: Path | None = None, kind: str = "local",
                 slurm: SlurmConfig | None = None, folder: Path | None = None, max_running: int = 0,
                 echo=print, poll_s: float = 0.2, reporter=None,
                 grace_s: float = 30.0) -> dict[str, list]:
    """Submit one job per pending group and wait for all; return ok/skipped/failed record paths.

    ``max_running`` caps the local executor's concurrent jobs (it starts them all at once otherwise,
    and more processes than cores only slow each other down); Slurm uses ``max_parallel`` instead.
    """
    out = Path(out)
    slurm = slurm or SlurmConfig()
    folder = Path(folder) if folder else out / ".submitit"
    summary: dict[str, list] = {"ok": [], "skipped": [], "others": [], "lost": [], "failed": []}
    groups: dict[tuple, list] = {}
    for c in cells:
        path = cell_dir(out, c.suite, c.dataset, c.method, c.ref_frac, c.seed, c.sweep) / RECORD_NAME
        if existing_record(c, out) is not None:
            summary["skipped"].append(str(path))
            if reporter is not None:
                reporter.finish(c, {}, skipped=True)
        else:
            groups.setdefault(c.group, []).append(c)
    if summary["skipped"]:
        echo(f"{len(summary['skipped'])} cells already recorded with the same config: not submitted")
    if not groups:
        return summary
    ex = make_executor(kind, folder, slurm, device)
    # longest groups first (image data, many steps), so the short ones fill the gaps at the end
    order = sorted(groups.values(), key=lambda m: -sum(_cost(c) for c in m))
    args = [(members, str(out), device, str(cache_dir) if cache_dir else None) for members in order]
    if kind == "local" and max_running <= 0:
        max_running = max(1, (os.cpu_count() or 1) // (cells_threads(cells) * tasks_per_job(slurm)))
    jobs: list = []
    if kind == "slurm" or max_running >= len(args):
        with signals_deferred(), ex.batch():  # one Slurm job array
            jobs = [ex.submit(GroupJob(grace_s), *a) for a in args]
        jobs = list(zip(jobs, args, strict=True))
        echo(f"submitted {len(jobs)} {kind} jobs (one per group), logs under {folder}")
        pending: list = []
    else:
        pending = list(args)
    running = list(jobs)
    try:
        while running or pending:
            while pending and len(running) < max_running:
                with signals_deferred():  # a stop lands after the job is in `running`, never between
                    a = pending.pop(0)
                    running.append((ex.submit(GroupJob(grace_s), *a), a))
                echo(f"submitted job {running[-1][0].job_id}: {len(a[0])} cells of {a[0][0].label()}")
            done = [(j, a) for j, a in running if j.done()]
            for j, a in done:
                running.remove((j, a))
                _collect(j, a[0], out, summary, echo, reporter)
            if not done:
                time.sleep(poll_s)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM under stopping.stop_on_signals
        _stop(running, pending, kind, out, echo, getattr(e, "name", "SIGINT"))
        raise
    return summary


def _stop(running: list, pending: list, kind: str, out: Path, echo, why: str) -> None:
    """Cancel this sweep's running jobs, wait for them to exit, clear the claims a killed one left, and say
    what was stopped."""
    jobs = [j for j, _ in running]
    echo(f"{why}: cancelling {len(jobs)} running jobs ({', '.join(str(j.job_id) for j in jobs) or 'none'})"
         f"{f' and dropping {len(pending)} not yet started' if pending else ''}; waiting for them to exit")
    left = stop_jobs(jobs, kind)
    ended = {str(j.job_id) for j in jobs if j not in left}
    cells = [c for _, a in running for c in a[0]] + [c for a in pending for c in a[0]]
    dirs = [cell_dir(out, c.suite, c.dataset, c.method, c.ref_frac, c.seed, c.sweep) for c in cells]
    cleared = clear_claims(dirs, ended)
    recorded = sum(existing_record(c, out) is not None for c in cells)
    echo(f"stopped: {len(ended)} jobs ended"
         + (f", {len(left)} still running ({', '.join(str(j.job_id) for j in left)})" if left else "")
         + (f", {len(cleared)} claims they left removed" if cleared else "")
         + f"; of their {len(cells)} cells {recorded} recorded, {len(cells) - recorded} not:"
         " run the same command again to resume")


def _collect(job, members: list, out: Path, summary: dict[str, list], echo, reporter=None) -> None:
    try:
        res = job.results()[0]  # rank 0's summary (every rank of a DDP job returns the same cells)
    except Exception as e:  # the job itself died (node failure, time limit, killed): its cells failed
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        echo(f"job {job.job_id} failed: {msg}")
        for c in members:
            path = cell_dir(out, c.suite, c.dataset, c.method, c.ref_frac, c.seed, c.sweep) / RECORD_NAME
            summary["failed"].append(str(path))
        return
    for key in summary:
        summary[key].extend(res.get(key, []))
    echo(f"job {job.job_id} done: {len(res.get('ok', []))} ok, {len(res.get('failed', []))} failed")
    if reporter is not None:  # the cells' own lines (metrics, time), as an inline run prints them
        for c in members:
            path = cell_dir(out, c.suite, c.dataset, c.method, c.ref_frac, c.seed, c.sweep) / RECORD_NAME
            if path.exists():
                reporter.finish(c, json.loads(path.read_text()))
