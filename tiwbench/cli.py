"""The ``tiwbench`` command line."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark training methods for unbiased diffusion models from biased data.")


class UserError(Exception):
    """Bad input; printed as one line, exit code 2."""


def _fail(msg: str, code: int = 2):
    msg = " ".join(line.strip() for line in str(msg).splitlines() if line.strip())  # always one line
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _user_errors():
    from tiwbench.config import ConfigError
    from tiwbench.data.base import DataError
    from tiwbench.integrity import Unreadable
    from tiwbench.metrics.base import MetricError
    from tiwbench.registry import RegistryError

    return (UserError, ConfigError, DataError, MetricError, RegistryError, FileNotFoundError, Unreadable)


def _csv(value: str | None, cast):
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"could not read {value!r} as a comma-separated list of {cast.__name__}") from None


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} but no CUDA GPU is visible here; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


def _check_writable(out: Path) -> None:
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UserError(f"--out {out} is not writable (checked {probe}); pass a writable directory")


def _sweep_option(items: list[str]) -> dict[str, list] | None:
    """``--sweep KEY=V1,V2`` (repeatable) as {KEY: [V1, V2]}; checked against the suite by ``expand``."""
    import yaml

    chosen: dict[str, list] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--sweep {item!r}: write KEY=V1,V2, e.g. --sweep dim=16")
        chosen.setdefault(key.strip(), []).extend(yaml.safe_load(v.strip()) for v in values.split(",") if v.strip())
    return chosen or None


def with_options(options_cls):
    """A command whose options are the fields of the dataclass ``options_cls`` (each an ``Annotated`` typer
    option with its default): the function receives one instance, so a command with many options stays a
    short function that builds its request and hands it to its layer."""
    import dataclasses
    import functools
    import inspect
    import typing

    hints = typing.get_type_hints(options_cls, include_extras=True)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(options_cls)]

    def wrap(fn):
        @functools.wraps(fn)
        def command(**kw):
            return fn(options_cls(**kw))

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer reads the signature above, not the wrapped function's
        return command

    return wrap


@dataclass
class RunOptions:
    """`tiwbench run`'s options."""

    suite: Annotated[str, typer.Option(help="suite name (see `tiwbench ls suites`) or a .yaml path")] = "ref_size"
    dataset: Annotated[Optional[str], typer.Option(help="only these datasets, comma-separated")] = None
    methods: Annotated[Optional[str], typer.Option(help="only these methods, comma-separated")] = None
    ref_fracs: Annotated[Optional[str], typer.Option(help="reference fractions, e.g. 0.05,0.25")] = None
    seeds: Annotated[Optional[str], typer.Option(help="seeds, e.g. 0,1,2")] = None
    sweep: Annotated[Optional[list[str]], typer.Option(
        help="points of the suite's swept dataset parameter, KEY=V1,V2 (repeatable), e.g. dim=16")] = None
    profile: Annotated[str, typer.Option(help="budget profile: smoke, default or paper")] = "default"
    out: Annotated[Path, typer.Option(help="where records go")] = Path("results/runs")
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu"
    cache_dir: Annotated[Path, typer.Option(help="cache of evaluators, reference statistics and trained networks")
                         ] = Path("results/cache")
    report_after: Annotated[bool, typer.Option("--report/--no-report", help="print the leaderboard at the end")
                            ] = True
    fid_backend: Annotated[Optional[str], typer.Option(
        help="image metrics through torch-fidelity or clean-fid (default: the suite's eval.fid_backend)")] = None
    launcher: Annotated[str, typer.Option(help="none, or torchrun: data-parallel training over --nproc-per-node "
                                               "processes (NCCL on GPUs, gloo on the CPU)")] = "none"
    nproc_per_node: Annotated[int, typer.Option(help="torchrun processes (0 = one per visible GPU, else 2)")] = 0
    executor: Annotated[str, typer.Option(help="inline (this process), local or slurm (submitit, one job per "
                                               "(dataset, ref_frac, seed) group)")] = "inline"
    jobs_dir: Annotated[Optional[Path], typer.Option(help="submitit logs (default: <out>/.submitit)")] = None
    max_jobs: Annotated[int, typer.Option(help="local executor: concurrent jobs (0 = cores / threads)")] = 0
    slurm_partition: Annotated[Optional[str], typer.Option(help="Slurm partition (default: suite's slurm)")] = None
    slurm_gpus: Annotated[Optional[int], typer.Option(help="GPUs per Slurm job (one DDP process per GPU)")] = None
    slurm_tasks: Annotated[Optional[int], typer.Option(
        help="processes per job, data-parallel among them (default: one per GPU)")] = None
    slurm_time: Annotated[Optional[int], typer.Option(help="minutes per Slurm job")] = None
    slurm_cpus: Annotated[Optional[int], typer.Option(help="CPUs per Slurm job")] = None
    slurm_mem: Annotated[Optional[int], typer.Option(help="GB of memory per Slurm job")] = None
    threads: Annotated[int, typer.Option(help="torch threads per process, recorded in each cell's config "
                                              "(0 = the cores free now, shared among local processes)")] = 1
    data_root: Annotated[Optional[Path], typer.Option(
        help="where the dataset files are (cifar10_lt, ffhq_gender)")] = None
    data_param: Annotated[Optional[list[str]], typer.Option(help="dataset parameter KEY=VALUE (repeatable), "
                                                                  "e.g. labels=ffhq_gender.csv or rho=0.02")] = None
    ratio: Annotated[Optional[str], typer.Option(
        help="density-ratio estimator (see `tiwbench ls ratios`), e.g. discriminator or exact")] = None
    progress_every: Annotated[Optional[float], typer.Option(
        help="seconds between progress lines of a phase when output is not a terminal (default 30)")] = None
    budget_scale: Annotated[float, typer.Option(
        help="multiply training and ratio steps (2: the budget-doubling check; records under <suite>_x2)")] = 1.0
    select: Annotated[Optional[str], typer.Option(
        help="checkpoint rule instead of the profile's: d_ref_holdout, truth (a reference) or none (records "
             "under <suite>_sel-...)")] = None
    select_by: Annotated[Optional[str], typer.Option(help="the rule's score: loss or fd (d_ref_holdout), a "
                                                          "ranked metric (truth)")] = None
    ref_holdout: Annotated[Optional[float], typer.Option(
        help="share of D_ref held out of every fit (0: none; e.g. truth on the same reduced D_ref)")] = None

    def request(self):
        """The sweep these options ask for (tiwbench.sweep.request), its options checked."""
        from tiwbench.progress import INTERVAL_ENV
        from tiwbench.sweep.request import SweepRequest

        if self.progress_every is not None:
            if self.progress_every <= 0:
                raise UserError(f"--progress-every {self.progress_every}: give a positive number of seconds")
            os.environ[INTERVAL_ENV] = str(self.progress_every)  # jobs of the local/slurm executors inherit it
        _check_device(self.device)
        _check_writable(self.out)
        if self.launcher not in ("none", "torchrun"):
            raise UserError(f"--launcher {self.launcher!r}: use none or torchrun")
        if self.launcher == "torchrun" and self.executor != "inline":
            raise UserError("--launcher torchrun runs in this process group; combine it with --executor inline")
        slurm = {"partition": self.slurm_partition, "gpus_per_job": self.slurm_gpus, "tasks_per_job": self.slurm_tasks,
                 "time_min": self.slurm_time, "cpus_per_job": self.slurm_cpus, "mem_gb": self.slurm_mem}
        return SweepRequest(
            suite=self.suite, datasets=_csv(self.dataset, str), methods=_csv(self.methods, str),
            ref_fracs=_csv(self.ref_fracs, float), seeds=_csv(self.seeds, int), profile=self.profile, out=self.out,
            device=self.device, cache_dir=self.cache_dir, fid_backend=self.fid_backend, executor=self.executor,
            jobs_dir=self.jobs_dir, max_jobs=self.max_jobs, slurm=slurm if self.executor != "inline" else {},
            threads=self.threads, data_root=self.data_root, data_params=self.data_param or [], ratio=self.ratio,
            budget_scale=self.budget_scale, sweep=_sweep_option(self.sweep or []), select=self.select,
            select_by=self.select_by, ref_holdout=self.ref_holdout)


@app.command()
@with_options(RunOptions)
def run(o: RunOptions):
    """Run a suite: every (dataset, method, ref_frac, seed) cell, skipping cells already recorded.

    Cells another sweep on the same --out holds are waited for (a claim whose owner died is taken over),
    so the command returns when every cell is recorded or has failed. SIGINT or SIGTERM stops the sweep:
    its running cells and jobs are cancelled and waited for, and the same command resumes it.

    Exit codes: 0 every cell recorded (by this sweep or another); 1 a cell failed or is missing;
    2 bad input (usage, suite, data); 130 / 143 stopped by SIGINT / SIGTERM.

    Examples:\n
      tiwbench run --suite ref_size\n
      tiwbench run --suite smoke --methods tiw_dsm,dsm_obs --seeds 0\n
      tiwbench run --suite regime --profile smoke --sweep dim=16\n
      tiwbench run --suite regime --sweep dim=16 --select truth --ref-holdout 0.2\n
      tiwbench run --dataset toy2d --ref-fracs 0.05 --profile smoke
    """
    from tiwbench.sweep.stopping import Stopped

    try:
        from tiwbench.sweep.request import run_sweep
        from tiwbench.training import distributed

        request = o.request()
        if o.launcher == "torchrun" and not distributed.launched():
            import subprocess

            import torch

            n = o.nproc_per_node or (torch.cuda.device_count() if o.device.startswith("cuda") else 2)
            raise typer.Exit(subprocess.call(distributed.torchrun_command(sys.argv[1:], max(n, 1))))
        request.device = distributed.init(o.device)
        result = run_sweep(request, main=distributed.is_main())
        main_rank = distributed.is_main()
        distributed.shutdown()
        if not main_rank:
            return  # rank 0 reports
    except _user_errors() as e:
        _fail(str(e))
    except Stopped as e:  # claims released, jobs cancelled and ended, records whole (tiwbench.sweep.stopping)
        typer.echo(f"stopped by {e.name}: run the same command again to resume (recorded cells are skipped)",
                   err=True)
        raise typer.Exit(e.exit_code) from None
    if o.report_after:
        from tiwbench.report.render import report as make_report

        typer.echo(make_report(o.out, "markdown"))
    _say_counts(result, o.out)
    if not result.complete:  # a cell failed or is missing, whoever ran it
        raise typer.Exit(1)


def _say_counts(result, out: Path) -> None:
    n = {k: len(v) for k, v in result.summary.items()}
    others = (f"{n['others']} recorded by another sweep, " if n.get("others") else "") + (
        f"{n['lost']} lost to another sweep mid-cell, " if n.get("lost") else "")
    typer.echo(f"{n.get('ok', 0)} cells run, {n.get('skipped', 0)} already recorded, {others}{n.get('failed', 0)} "
               f"failed; {len(result.missing)} of {len(result.cells)} cells missing; records under {out}", err=True)
    for p in result.summary.get("failed", []):
        typer.echo(f"failed: {p}", err=True)


@dataclass
class ReportOptions:
    """`tiwbench report`'s options."""

    runs: Annotated[Path, typer.Option(help="directory of records")] = Path("results/runs")
    format: Annotated[str, typer.Option("--format", help="markdown, csv, latex, html or json")] = "markdown"
    output: Annotated[Optional[Path], typer.Option(help="write the report to this file instead of stdout")] = None
    plot: Annotated[Optional[Path], typer.Option(help="also draw metric vs ref_frac with 95% CIs to this .png")] = None
    vs: Annotated[Optional[str], typer.Option(help="also each method's per-seed difference to this method, with a "
                                                   "paired 95% t-interval (markdown, html)")] = None
    win_map: Annotated[Optional[Path], typer.Option(help="also draw which method wins where (swept parameter × "
                                                         "ref_frac, ties as ties) to this .png")] = None
    budget_check: Annotated[Optional[str], typer.Option(help="also compare SUITE with SUITE_x2 (run with "
                                                               "--budget-scale 2): moved means, changed winners "
                                                               "(markdown)")] = None
    gap: Annotated[bool, typer.Option("--gap", help="also the gap report: each method against dsm_ref and the fair "
                                                    "ceiling, the share of its gain recovered, per-σ ratio errors "
                                                    "(markdown)")] = False
    gap_ceiling: Annotated[Optional[str], typer.Option(help="the ceiling method of --gap (default: "
                                                            "tiw_dsm@exact_empirical; "
                                                            "tiw_dsm@fitted_family on gmm_tilt)")] = None
    compare_suites: Annotated[Optional[str], typer.Option(
        help="also A,B: the same cells under two suites (e.g. a rule run with --select), paired by seed, "
             "and the winners each gives (markdown, html)")] = None
    pairs: Annotated[Optional[str], typer.Option(
        help="also A:B[,C:D]: each A's per-seed difference to its B, paired (markdown, html)")] = None
    borrow: Annotated[Optional[list[str]], typer.Option(
        help="for --pairs: TO=FROM:M1[,M2] takes methods M1, M2's rows of dataset FROM as TO's where TO lacks "
             "them (cells that are one computation on both, e.g. reference-only methods); repeatable")] = None


@app.command()
@with_options(ReportOptions)
def report(o: ReportOptions):
    """Leaderboard from the records under --runs: mean ± std, 95% CI and seed count per cell.

    Examples:\n
      tiwbench report --runs results/runs\n
      tiwbench report --format html --output report.html\n
      tiwbench report --format latex --output tables.tex --plot ref_size.png\n
      tiwbench report --vs dsm_obs\n
      tiwbench report --gap\n
      tiwbench report --compare-suites regime,regime_sel-truth\n
      tiwbench report --pairs tiw_gan:iw_gan_noise,gan_ref:dsm_ref --borrow gmm_tilt=gmm:dsm_ref,gan_ref
    """
    try:
        from tiwbench.report.intervals import ReportError
        from tiwbench.report.leaderboard import FORMATS
        from tiwbench.report.render import report as make_report

        if o.format not in FORMATS:
            raise UserError(f"unknown format {o.format!r}; use one of {', '.join(FORMATS)}")
        try:
            if o.gap and o.format != "markdown":
                raise UserError("--gap works with --format markdown")
            text = make_report(o.runs, o.format, output=o.output, plot=o.plot, vs=o.vs, win_map=o.win_map,
                               budget_check=o.budget_check, gap=o.gap, gap_ceiling=o.gap_ceiling,
                               compare_suites=o.compare_suites, pairs=o.pairs, borrow=o.borrow)
        except ReportError as e:
            raise UserError(str(e)) from None
    except _user_errors() as e:
        _fail(str(e))
    if o.output is None:
        typer.echo(text, nl=not text.endswith("\n"))
    else:
        typer.echo(f"report written to {o.output}", err=True)
    for what, path in (("plot", o.plot), ("win map", o.win_map)):
        if path is not None:
            typer.echo(f"{what} written to {path}", err=True)


@app.command()
def stats(
    dataset: Annotated[str, typer.Option(help="an image dataset, e.g. cifar10_lt")],
    data_root: Annotated[Optional[Path], typer.Option(help="where the dataset files are")] = None,
    data_param: Annotated[Optional[list[str]], typer.Option(help="dataset parameter KEY=VALUE (repeatable)")] = None,
    suite: Annotated[str, typer.Option(help="the suite whose metrics and eval options to follow")] = "ref_size",
    profile: Annotated[str, typer.Option(help="budget profile whose eval options to follow")] = "paper",
    cache_dir: Annotated[Path, typer.Option(help="cache of evaluators and reference statistics")] = Path(
        "results/cache"),
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    fid_backend: Annotated[Optional[str], typer.Option(help="torch-fidelity or clean-fid")] = None,
):
    """Precompute and cache the reference statistics of a dataset's target (and its evaluator), exactly as
    `tiwbench run` with the same suite and profile would use them; print each one's FID variant.

    Example:\n
      tiwbench stats --dataset cifar10_lt --data-root data/cifar10
    """
    import json

    try:
        from tiwbench.metrics.fidelity import precompute_references
        from tiwbench.progress import PlainReporter, using
        from tiwbench.sweep.request import apply_data_options
        from tiwbench.sweep.runner import Group, expand

        _check_device(device)
        from tiwbench.config import load_suite

        s = load_suite(suite)
        cells = expand(s, profile, [dataset])[:1]
        apply_data_options(cells, data_root, data_param or [])
        cell = cells[0]
        if fid_backend is not None:
            cell.budget.eval.fid_backend = fid_backend
        reporter = PlainReporter(1, echo=lambda m: print(m, file=sys.stderr, flush=True))
        with using(reporter):
            group = Group(cell, device, cache_dir, reporter)
            if getattr(group.evaluator, "network", None) is None:
                raise UserError(f"dataset {dataset!r} has no image evaluator: its statistics are exact, "
                                "nothing to precompute")
            import dataclasses

            rows = precompute_references(group.evaluator, dataclasses.asdict(cell.budget.eval), cell.metrics,
                                         cache_dir)
    except _user_errors() as e:
        _fail(str(e))
    for row in rows:
        typer.echo(json.dumps(row, sort_keys=True))


@app.command()
def baseline(
    from_: Annotated[Path, typer.Option("--from", help="directory of records to take the baseline from")],
    output: Annotated[Path, typer.Option(help="baseline JSON to write, e.g. results/baselines/smoke.json")],
    k: Annotated[Optional[float], typer.Option(help="tolerance: multiples of the std over seeds (default 3)")] = None,
    rel: Annotated[Optional[float], typer.Option(help="tolerance: fraction of |mean| (default 0.05)")] = None,
    abs_floor: Annotated[Optional[float], typer.Option(help="tolerance: absolute lower bound (default 1e-6)")] = None,
):
    """Write a regression baseline: per cell and metric, mean, std, n, direction and a tolerance
    max(abs_floor, k·std, rel·|mean|).

    Example:\n
      tiwbench baseline --from results/runs --output results/baselines/smoke.json
    """
    try:
        from tiwbench.report.baseline_check import ToleranceRule, make_baseline, write_baseline
        from tiwbench.report.intervals import ReportError
        from tiwbench.report.leaderboard import load_runs

        try:
            given = {"k": k, "rel": rel, "abs_floor": abs_floor}  # unset: ToleranceRule's defaults, the one table
            rule = ToleranceRule(**{name: v for name, v in given.items() if v is not None})
            doc = make_baseline(load_runs(from_), rule, source=str(from_))
            write_baseline(doc, output)
        except ReportError as e:
            raise UserError(str(e)) from None
    except _user_errors() as e:
        _fail(str(e))
    n_failed = sum(1 for e in doc["entries"] if e["failed"])
    typer.echo(f"baseline of {len(doc['entries'])} cell metrics written to {output}"
               + (f" ({n_failed} with failed seeds)" if n_failed else ""), err=True)


@app.command()
def check(
    baseline: Annotated[Optional[Path], typer.Option(help="baseline JSON written by `tiwbench baseline`")] = None,
    runs: Annotated[Path, typer.Option(help="directory of fresh records")] = Path("results/runs"),
    allow_missing: Annotated[bool, typer.Option(help="do not fail on baseline cells absent from --runs")] = False,
    show_ok: Annotated[bool, typer.Option("--all", help="list cells within tolerance too")] = False,
    strict: Annotated[bool, typer.Option(
        help="fail on the flags that make a ranking untrustworthy: unconverged, budget_moved")] = False,
    strict_on: Annotated[Optional[str], typer.Option(
        help="fail on these flags only (implies --strict): comma-separated among unconverged, peak_not_reached, "
             "n_lt_3, at_reference_level, budget_moved, or all")] = None,
):
    """Compare fresh records with a baseline, by each metric's direction; with --strict, also fail on the
    flags that make a table's ranking untrustworthy (its oracle beaten, a mean moved by twice the budget), with
    --strict-on on the flags named (all: every flag, cell flags such as peak_not_reached included). Exit 1 on a
    regression beyond tolerance, a cell that failed, a missing cell or a chosen flag; improvements are
    reported and pass.

    Examples:\n
      tiwbench check --baseline results/baselines/smoke.json --runs results/runs\n
      tiwbench check --strict-on unconverged --runs results/runs
    """
    try:
        from tiwbench.report.baseline_check import check as run_check
        from tiwbench.report.baseline_check import load_baseline
        from tiwbench.report.flags import add_flags, parse_flags, strict_check
        from tiwbench.report.intervals import ReportError
        from tiwbench.report.leaderboard import aggregate, load_runs, records_frame

        if baseline is None and not (strict or strict_on):
            raise UserError("nothing to check: pass --baseline FILE, --strict (or --strict-on FLAGS), or both")
        try:
            chosen = parse_flags(strict_on) if (strict or strict_on) else []
            records = load_runs(runs)
            passed, text = True, ""
            if baseline is not None:
                passed, text, _ = run_check(load_baseline(baseline), records, allow_missing, show_ok)
            if chosen:
                clean, flags_text = strict_check(add_flags(aggregate(records_frame(records)), records), chosen)
                passed, text = passed and clean, text + flags_text
        except ReportError as e:
            raise UserError(str(e)) from None
    except _user_errors() as e:
        _fail(str(e))
    typer.echo(text, nl=False)
    if not passed:
        raise typer.Exit(1)


@app.command()
def bench(
    dataset: Annotated[str, typer.Option(help="a registered dataset: its suite networks are timed")] = "toy2d",
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    profile: Annotated[str, typer.Option(help="the suite profile whose networks and batch are timed")] = "smoke",
    suite: Annotated[str, typer.Option(help="suite name or .yaml path")] = "ref_size",
    peak_tflops: Annotated[Optional[float], typer.Option(help="bf16 peak for the share column "
                                                         "(default: the table of known GPUs)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="timed steps per method")] = None,
    repeats: Annotated[Optional[int], typer.Option(help="timings per method, round-robin; the fastest is kept "
                                                   "(default: 3 on the CPU, 1 on CUDA)")] = None,
    compile: Annotated[Optional[bool], typer.Option("--compile/--no-compile",
                                                    help="torch.compile (default: the suite's)")] = None,
    methods: Annotated[Optional[str], typer.Option(help="comma-separated methods (default: all six)")] = None,
    sample_batch: Annotated[Optional[int], typer.Option(help="sampler batch (default: the profile's "
                                                        "sample.batch_size)")] = None,
    threads: Annotated[int, typer.Option(help="CPU intra-op threads (1: a neighbour's load does not stall "
                                         "small kernels)")] = 1,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the rows here")] = None,
    ratio_precision: Annotated[bool, typer.Option(help="instead: the error of bf16 in w and σ²∇log w against "
                                                  "float32, per σ band (trains the profile's ratio model)")] = False,
):
    """Time a training step of every method and the sampler: ms/step, ratio to dsm_obs, FLOPs per step
    (torch.utils.flop_counter), TFLOP/s, share of peak, hours of the profile's cell.

    Example:\n
      tiwbench bench --dataset cifar10_lt --device cuda --profile paper --json results/bench_gpu.json
    """
    try:
        from tiwbench.records import atomic_write_json as write_json
        from tiwbench.sweep.step_bench import METHOD_NAMES, BenchRequest, format_table, run_request

        _check_device(device)
        request = BenchRequest(dataset=dataset, device=device, profile=profile, suite=suite, peak_tflops=peak_tflops,
                               steps=steps, repeats=repeats, compile=compile,
                               methods=tuple(_csv(methods, str) or METHOD_NAMES), sample_batch=sample_batch,
                               threads=threads, ratio_precision=ratio_precision)

        def partial(res):  # each row on disk as soon as it is measured: a timeout keeps what was done
            if json_out is not None:
                write_json(json_out, res)

        result = run_request(request, on_row=partial)
    except _user_errors() as e:
        _fail(str(e))
    if ratio_precision:
        for r in result["ratio_precision"]:
            typer.echo("  ".join(f"{k} {v:.4g}" for k, v in r.items()))
    else:
        typer.echo(format_table(result), nl=False)
    if json_out is not None:
        write_json(json_out, result)


@app.command("ls")
def ls(what: Annotated[str, typer.Argument(
        help="methods, datasets, metrics, ratios, kernels, families or suites")]):
    """List what is registered (built in, or from installed plugins)."""
    from tiwbench.config import available_suites
    from tiwbench.registry import DATASETS, FAMILIES, KERNELS, METHODS, METRICS, RATIOS

    registries = {"methods": METHODS, "datasets": DATASETS, "metrics": METRICS, "ratios": RATIOS, "kernels": KERNELS,
                  "families": FAMILIES}
    if what == "suites":
        for name in available_suites():
            typer.echo(name)
        return
    if what not in registries:
        _fail(f"cannot list {what!r}; use one of methods, datasets, metrics, ratios, kernels, families, suites")
    reg = registries[what]
    for name in reg.names():
        obj = reg.get(name)
        extra = ""
        if what == "metrics":
            extra = " ↑" if obj.higher_is_better else " ↓"
        if what == "kernels" and obj.defaults:  # the schedule a cell gets unless its profile says otherwise
            extra = " (" + ", ".join(f"{k} {v:g}" for k, v in obj.defaults.items()) + ")"
        if what == "methods":
            extra = f" ({obj.family})"
        desc = getattr(obj, "description", "") or (obj.__doc__ or "").strip().split("\n")[0]
        typer.echo(f"{name}{extra}  [{reg.origin(name)}]  {desc}")


@app.command()
def show(path: Annotated[Path, typer.Argument(help="a record.json, or its cell directory")]):
    """Print one record readably."""
    import json

    p = path / "record.json" if path.is_dir() else path
    if not p.exists():
        _fail(f"{p} does not exist; pass a record.json written by `tiwbench run`")
    rec = json.loads(p.read_text())
    typer.echo(f"{rec['dataset']} · {rec['method']} · ref_frac={rec['ref_frac']:g} (|D_ref|={rec.get('ref_size')}) "
               f"· seed={rec['seed']} · {rec.get('status')}")
    for m in rec.get("metrics", []):
        typer.echo(f"  {m['name']:>8} {'↑' if m['higher_is_better'] else '↓'} {m['value']:.6g}")
    if rec.get("error"):
        typer.echo(f"  error: {rec['error']}")
    typer.echo(f"  config hash {rec.get('config_hash')}, git {rec['env'].get('git_sha')}"
               f"{' (dirty)' if rec['env'].get('git_dirty') else ''}, device {rec['env'].get('device')}")
    typer.echo("  timing: " + ", ".join(f"{k} {v:.2f}s" for k, v in rec.get("timing", {}).items()
                                        if isinstance(v, (int, float))))


def main():
    app()


if __name__ == "__main__":
    main()
