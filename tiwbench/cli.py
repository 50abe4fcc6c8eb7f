"""The ``tiwbench`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark training methods for unbiased diffusion models from biased data.")


class UserError(Exception):
    """Bad input; printed as one line, exit code 2."""


def _fail(msg: str, code: int = 2):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _user_errors():
    from tiwbench.config import ConfigError
    from tiwbench.data.base import DataError
    from tiwbench.metrics.base import MetricError
    from tiwbench.registry import RegistryError

    return (UserError, ConfigError, DataError, MetricError, RegistryError, FileNotFoundError)


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


@app.command()
def run(
    suite: Annotated[str, typer.Option(help="suite name (see `tiwbench ls suites`) or a .yaml path")] = "ref_size",
    dataset: Annotated[Optional[str], typer.Option(help="only these datasets, comma-separated")] = None,
    methods: Annotated[Optional[str], typer.Option(help="only these methods, comma-separated")] = None,
    ref_fracs: Annotated[Optional[str], typer.Option(help="reference fractions, e.g. 0.05,0.25")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="seeds, e.g. 0,1,2")] = None,
    profile: Annotated[str, typer.Option(help="budget profile: smoke, default or paper")] = "default",
    out: Annotated[Path, typer.Option(help="where records go")] = Path("results/runs"),
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N")] = "cpu",
    cache_dir: Annotated[Path, typer.Option(help="cache of evaluators and reference statistics")] = Path("results/cache"),
    report_after: Annotated[bool, typer.Option("--report/--no-report", help="print the leaderboard at the end")] = True,
):
    """Run a suite: every (dataset, method, ref_frac, seed) cell, skipping cells already recorded.

    Examples:\n
      tiwbench run --suite ref_size\n
      tiwbench run --suite smoke --methods tiw_dsm,dsm_obs --seeds 0\n
      tiwbench run --dataset toy2d --ref-fracs 0.05 --profile smoke
    """
    try:
        from rich.console import Console

        from tiwbench.config import load_suite
        from tiwbench.runner import PlainReporter, RichReporter, expand, run_cells

        _check_device(device)
        _check_writable(out)
        s = load_suite(suite)
        cells = expand(s, profile, _csv(dataset, str), _csv(methods, str), _csv(ref_fracs, float), _csv(seeds, int))
        console = Console(stderr=True)
        reporter = RichReporter(len(cells), console) if console.is_terminal else PlainReporter(
            len(cells), echo=lambda m: print(m, file=sys.stderr, flush=True))
        summary = run_cells(cells, out, device=device, cache_dir=cache_dir, reporter=reporter)
    except _user_errors() as e:
        _fail(str(e))
    if report_after:
        from tiwbench.report import report as make_report

        typer.echo(make_report(out, "markdown"))
    n_ok, n_skip, n_fail = (len(summary[k]) for k in ("ok", "skipped", "failed"))
    typer.echo(f"{n_ok} cells run, {n_skip} skipped (already recorded), {n_fail} failed; records under {out}",
               err=True)
    if n_fail:
        for p in summary["failed"]:
            typer.echo(f"failed: {p}", err=True)
        raise typer.Exit(1)


@app.command()
def report(
    runs: Annotated[Path, typer.Option(help="directory of records")] = Path("results/runs"),
    format: Annotated[str, typer.Option("--format", help="markdown, csv or json")] = "markdown",
):
    """Print the leaderboard from the records under --runs."""
    try:
        from tiwbench.report import report as make_report

        if format not in ("markdown", "csv", "json"):
            raise UserError(f"unknown format {format!r}; use markdown, csv or json")
        typer.echo(make_report(runs, format))
    except _user_errors() as e:
        _fail(str(e))


@app.command("ls")
def ls(what: Annotated[str, typer.Argument(help="methods, datasets, metrics or suites")]):
    """List what is registered (built in, or from installed plugins)."""
    from tiwbench.config import available_suites
    from tiwbench.registry import DATASETS, METHODS, METRICS

    registries = {"methods": METHODS, "datasets": DATASETS, "metrics": METRICS}
    if what == "suites":
        for name in available_suites():
            typer.echo(name)
        return
    if what not in registries:
        _fail(f"cannot list {what!r}; use one of methods, datasets, metrics, suites")
    reg = registries[what]
    for name in reg.names():
        obj = reg.get(name)
        extra = ""
        if what == "metrics":
            extra = " ↑" if obj.higher_is_better else " ↓"
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
