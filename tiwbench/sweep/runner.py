"""Expand a suite into cells, run them group by group (sharing the split and the ratio models of a
(dataset, ref_frac, seed) group), and write one record per cell."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tiwbench import integrity, progress
from tiwbench.config import (
    Budget,
    ConfigError,
    Suite,
    config_hash,
    profile_grid,
    profile_metrics,
    resolve_budget,
    resolve_selection,
    selection_rule,
)
from tiwbench.data.base import DataError
from tiwbench.diffusion.kernels import is_edm, make_kernel
from tiwbench.diffusion.sampler import per_sample_latents
from tiwbench.metrics.base import EvalContext, frechet_distance, mean_cov
from tiwbench.progress import PlainReporter, RichReporter  # noqa: F401  (where callers found them)
from tiwbench.ratios.diagnostics import ratio_diagnostics
from tiwbench.ratios.discriminator import ClipCountsOf
from tiwbench.records import (
    RECORD_NAME,
    SCHEMA_VERSION,
    atomic_write_bytes,
    atomic_write_json,
    cell_dir,
    contradictions,
    environment,
)
from tiwbench.registry import DATASETS, KERNELS, METHODS, METRICS, RATIOS
from tiwbench.report.cell_picture import GRID_NAME, sample_picture
from tiwbench.sweep.locks import LOCK_NAME, claim, is_stale
from tiwbench.sweep.locks import owner as lock_owner
from tiwbench.sweep.stopping import signals_deferred
from tiwbench.sweep.threads import apply_threads
from tiwbench.training import distributed
from tiwbench.training.families import family_of
from tiwbench.training.loop import CellTimeout, NonFiniteLoss, load_network, save_network
from tiwbench.training.network_cache import cached, network_key
from tiwbench.training.selection import held_out_loss, select_checkpoint, selection_sigmas

# recorded beside the suite's metrics wherever they apply (tiwbench.metrics.ref_levels)
REF_LEVEL_METRICS = ("bias_ref_level", "bias_ref", "fd_ref_level")


@dataclass
class Cell:
    suite: str
    dataset: str
    method: str
    ref_frac: float
    seed: int
    profile: str
    budget: Budget
    metrics: list[str]
    dataset_params: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    sweep: dict[str, Any] = field(default_factory=dict)  # the swept dataset parameter and its value here
    threads: int = 1  # torch intra-op threads: they change the numbers, so they are part of the config

    def config(self) -> dict[str, Any]:
        """The resolved config: everything the result depends on, saved with it and hashed."""
        budget = dataclasses.asdict(self.budget)
        if not budget["kernel"]:  # no schedule parameters set: configs (and hashes) as before kernels
            del budget["kernel"]
        rule = selection_rule(self.budget.train)
        budget["train"].update(select_source=rule.select_source, select_by=rule.select_by,
                               ref_holdout=rule.ref_holdout)
        if not rule.select_every:  # the last step reported: configs as before selection
            for key in ("select_every", "select_by", "select_n", "select_source"):
                del budget["train"][key]
            if not rule.ref_holdout:  # and all of D_ref trained on
                del budget["train"]["ref_holdout"]
        if not budget["ratio"]["select_every"]:
            for key in ("select_every", "select_holdout", "select_patience"):
                del budget["ratio"][key]
        elif not budget["ratio"]["select_patience"]:  # configs as before patience
            del budget["ratio"]["select_patience"]
        for key in ("trunk", "trunk_knows_labels"):  # no trunk file: configs as before trunk files
            if not budget["ratio"][key]:
                del budget["ratio"][key]
        return {
            "suite": self.suite, "dataset": self.dataset, "dataset_params": self.dataset_params,
            "method": self.method, "method_options": self.method_options, "ref_frac": self.ref_frac,
            "seed": self.seed, "profile": self.profile, "metrics": self.metrics,
            **budget, **({"sweep": self.sweep} if self.sweep else {}),
            "threads": self.threads,
        }

    @property
    def hash(self) -> str:
        return config_hash(self.config())

    @property
    def group(self) -> tuple:
        return (self.dataset, json.dumps(self.dataset_params, sort_keys=True), self.ref_frac, self.seed,
                selection_rule(self.budget.train).ref_holdout,  # the split's training part differs with it
                json.dumps(dataclasses.asdict(self.budget.ratio), sort_keys=True),
                json.dumps(self.budget.evaluator.overrides(), sort_keys=True),
                json.dumps(self.budget.kernel, sort_keys=True), self.threads)

    def label(self) -> str:
        swept = "".join(f" {k}={v}" for k, v in self.sweep.items())
        return f"{self.dataset} {self.method} ref={self.ref_frac:g}{swept} seed={self.seed}"


def _pick(names: list[str], allowed: list[str] | None, registry, what: str) -> list[str]:
    check = check_method_name if registry is METHODS else registry.get  # unknown name: "did you mean"
    for n in allowed or []:
        check(n)
    for n in names:
        check(n)
    return list(allowed) if allowed else names


def expand(suite: Suite, profile: str = "default", datasets: list[str] | None = None,
           methods: list[str] | None = None, ref_fracs: list[float] | None = None,
           seeds: list[int] | None = None, sweep: dict[str, list] | None = None) -> list[Cell]:
    """The suite's cells under ``profile``; the other arguments choose among them (``sweep``: points of
    the suite's swept parameter, ``{name: [values]}``)."""
    ds_names = _pick(suite.datasets, datasets, DATASETS, "dataset")
    m_names = _pick(suite.methods, methods, METHODS, "method")
    for ds in ds_names:
        for m in profile_metrics(suite, profile, ds):
            METRICS.get(m)
    for f in ref_fracs or []:
        if not 0 < f <= 1:
            raise ConfigError(f"--ref-fracs: {f} is not in (0, 1]")
    cells = []
    for ds in ds_names:
        budget, profile_seeds = resolve_budget(suite, profile, ds)
        grid = profile_grid(suite, profile, ds)  # a smoke profile may run a smaller grid
        where = ("--ref-fracs" if ref_fracs else f"{suite.source}: ref_fracs",
                 "--seeds" if seeds is not None else f"{suite.source}: seeds")
        fracs = distinct(ref_fracs or grid.get("ref_fracs") or suite.ref_fracs, where[0])
        cell_seeds = distinct(seeds if seeds is not None else (profile_seeds or suite.seeds), where[1])
        for seed in cell_seeds:
            if seed < 0:  # one convention for every seed consumer (numpy refuses negative seeds)
                raise ConfigError(f"{where[1]}: {seed} is negative; seeds are integers ≥ 0, e.g. 0,1,2")
        for swept in sweep_points(suite, ds, grid.get("sweep"), sweep):
            for rf in fracs:
                for seed in cell_seeds:
                    for m in m_names:
                        cells.append(Cell(suite.name, ds, m, float(rf), int(seed), profile,
                                          dataclasses.replace(budget), profile_metrics(suite, profile, ds),
                                          {**suite.dataset_params.get(ds, {}), **swept},
                                          dict(suite.method_options.get(m, suite.method_options.get(
                                              method_and_ratio(m)[0], {}))), dict(swept)))
    return cells


def scale_budget(cells: list[Cell], factor: float) -> list[Cell]:
    """The budget-doubling check: ``factor`` × the training and ratio steps of every cell, recorded under the
    suite ``<suite>_x<factor>`` so that both runs sit side by side (``tiwbench report --budget-check``)."""
    if not factor > 0:
        raise ConfigError(f"--budget-scale {factor}: give a positive factor, e.g. 2")
    if factor == 1:
        return cells
    for c in cells:
        c.budget = copy.deepcopy(c.budget)  # cells of one dataset share their sub-configs
        c.budget.train.steps = max(1, round(c.budget.train.steps * factor))
        c.budget.ratio.steps = max(1, round(c.budget.ratio.steps * factor))
        c.suite = f"{c.suite}_x{factor:g}"
    return cells


def override_selection(cells: list[Cell], source: str | None = None, by: str | None = None,
                       holdout: float | None = None) -> list[Cell]:
    """Another checkpoint rule for every cell (``--select``, ``--select-by``, ``--ref-holdout``), recorded under
    the suite ``<suite>_sel-<what changed>`` beside the suite's own rule, so that both sit side by side
    (``tiwbench report --compare-suites``). An option left None keeps the profile's value; a source without
    snapshots in the profile gets them every tenth of the training steps."""
    if source is None and by is None and holdout is None:
        return cells
    for c in cells:
        c.budget = copy.deepcopy(c.budget)
        tc = c.budget.train
        if source is not None:  # the new source's defaults (score, share held out) unless given too
            tc.select_every = 0 if source == "none" else (tc.select_every or max(1, tc.steps // 10))
            tc.select_source, tc.select_by, tc.ref_holdout = source, "", -1.0
        if by is not None:
            tc.select_by = by
        if holdout is not None:
            tc.ref_holdout = holdout
        resolve_selection(tc, "--select/--select-by/--ref-holdout")
        label = "-".join([*([source] if source is not None else []), *([by] if by is not None else []),
                          *([f"h{holdout:g}"] if holdout is not None else [])])
        c.suite = f"{c.suite}_sel-{label}"
    return cells


def distinct(values: list, option: str) -> list:
    """``values`` unless two of them would name the same cell directory (``0,0``; ``0.1,0.10``)."""
    seen: dict[str, Any] = {}
    for v in values:
        name = f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
        if name in seen:
            twice = f"{v!r} is given twice" if seen[name] == v else f"{seen[name]!r} and {v!r} name the same cells"
            raise ConfigError(f"{option}: {twice} ({name}); give each value once")
        seen[name] = v
    return list(values)


def _same_value(a: Any, b: Any) -> bool:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    return float(a) == float(b) if numbers else a == b or str(a) == str(b)


def select_points(suite: Suite, values: list, chosen: dict[str, list]) -> list:
    """The points of ``--sweep KEY=V1,V2`` among ``values`` (the suite's and its profiles'), as the suite
    writes them (16, not 16.0: the same configs and hashes). A value outside the grid is refused: the suite
    file is the experiment's design, and a new point belongs in a suite of its own."""
    (key,) = suite.sweep
    grid = ",".join(str(v) for v in values)
    if set(chosen) - {key}:
        other = sorted(set(chosen) - {key})[0]
        raise ConfigError(f"--sweep {other}=…: suite {suite.name!r} sweeps {key!r}, not {other!r}; "
                          f"choose among {key}={grid}")
    picked = []
    for v in distinct(chosen.get(key, []), f"--sweep {key}"):
        match = next((g for g in values if _same_value(g, v)), None)
        if match is None:
            raise ConfigError(f"--sweep {key}={v}: not a point of suite {suite.name!r} ({key}={grid}); "
                              f"choose among them, or copy the suite to a .yaml with the values you need")
        picked.append(match)
    return picked


def sweep_points(suite: Suite, dataset: str, values_of: dict[str, list] | None = None,
                 chosen: dict[str, list] | None = None) -> list[dict[str, Any]]:
    """The suite's swept dataset parameter as one {name: value} per point ([{}] without a sweep),
    checked against the dataset's parameters; ``values_of`` replaces the suite's values (a profile's),
    ``chosen`` (``--sweep``) selects among both."""
    if not suite.sweep:
        if chosen:
            key = sorted(chosen)[0]
            raise ConfigError(f"--sweep {key}=…: suite {suite.name!r} sweeps no dataset parameter; to set one "
                              f"for every cell use --data-param {key}=VALUE")
        return [{}]
    (key, values), = (values_of or suite.sweep).items()
    if chosen:
        grid = [*suite.sweep[key], *(v for v in values if not any(_same_value(v, g) for g in suite.sweep[key]))]
        values = select_points(suite, grid, chosen)
    allowed = DATASETS.get(dataset).defaults
    if key not in allowed:
        raise ConfigError(f"{suite.source}: sweep: dataset {dataset!r} has no parameter {key!r}; "
                          f"sweep one of {sorted(allowed)} or ref_fracs")
    if key in suite.dataset_params.get(dataset, {}):
        raise ConfigError(f"{suite.source}: {key!r} is both swept and set in dataset_params.{dataset}; keep one")
    return [{key: v} for v in values]


def derived_seed(*parts: Any) -> int:
    """A stable seed per (cell seed, phase, ...), so a cell's result never depends on run order."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & (2**63 - 1)


def existing_record(cell: Cell, out: Path) -> dict | None:
    p = cell_dir(out, cell.suite, cell.dataset, cell.method, cell.ref_frac, cell.seed, cell.sweep) / RECORD_NAME
    if not p.exists():
        return None
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    return rec if rec.get("config_hash") == cell.hash and rec.get("status") == "ok" else None


class Group:
    """The split, evaluator and ratio models shared by the cells of one (dataset, ref_frac, seed)."""

    def __init__(self, cell: Cell, device: str, cache_dir: Path | None, reporter):
        self.cell, self.device, self.reporter = cell, device, reporter
        self.cache_dir = cache_dir  # image metrics keep their reference statistics here
        t0 = time.monotonic()
        self.dataset = DATASETS.get(cell.dataset)(**cell.dataset_params)
        apply_threads(cell)  # the thread count recorded in the cell's config
        self.split = self.dataset.split(cell.ref_frac, cell.seed)
        holdout = selection_rule(cell.budget.train).ref_holdout
        if holdout:  # no network, ratio model or reference level of the group sees the held-out points
            self.split = self.split.hold_out(holdout, cell.seed)
        t1 = time.monotonic()
        if cell.budget.evaluator.overrides() and hasattr(self.dataset, "evaluator_config"):
            # the profile's evaluator budget: on this instance, so it enters the evaluator's cache key
            self.dataset.evaluator_config = {**self.dataset.evaluator_config, **cell.budget.evaluator.overrides()}
        self.evaluator = self.dataset.evaluator(cache_dir=cache_dir, device=device)
        self.timing = {"split": t1 - t0, "evaluator": time.monotonic() - t1}
        self.ratios: dict[str, Any] = {}
        self.ratio_info: dict[str, Any] = {}
        self.shared_fits: dict = {}  # fits several ratio estimators use (the observed-data denoiser)
        self.selections: dict[str, Any] = {}  # per ratio key: the fit's held-out selection (None without one)
        self.keys: dict[tuple, str] = {}  # (kind, estimator, kernel) -> ratio key
        self.shared_training: set[str] = set()  # methods whose trained network later cells reuse (trains_as)
        self.trained: dict[tuple, tuple] = {}

    def ratio(self, kind: str | None, provider: str | None = None, kernel: str = "edm"):
        """The ratio model of ``kind`` ("time" or "clean") from estimator ``provider`` (default: the
        suite's ``ratio``), fitted once per group, estimator and kernel and shared by its cells.
        ``provider`` "A+B": the weight w_σ from A and the correction ∇log w_σ from B."""
        if kind is None:
            return None
        if provider is not None and "+" in provider:
            weight, correction = provider.split("+")
            return SplitRatio(self.ratio(kind, weight, kernel), self.ratio(kind, correction, kernel))
        cfg = self.cell.budget.ratio
        estimator = RATIOS.get(provider or cfg.provider)
        # a clean classifier sees no noise: one for every kernel
        under = kernel if kind == "time" and kernel != "edm" else ""
        suffix = f"~{under}" if under else ""
        # the default estimator keeps the plain key (records' ratio.time / ratio.clean); others are named
        key = (kind if estimator is RATIOS.get(cfg.provider) else f"{kind}@{estimator.name}") + suffix
        if key not in self.ratios:
            # an estimator's seeds do not depend on which one is the default (the discriminator keeps
            # its historical tags, so its records are unchanged)
            tag = (kind if estimator.name == "discriminator" else f"{kind}@{estimator.name}") + suffix
            time_dependent = kind == "time"
            t0 = time.monotonic()
            exact = attainable = None
            try:
                exact = self.dataset.exact_ratio(time_dependent)
                exact.logit_max = cfg.logit_max
                attainable = attainable_ratio(self.dataset, self.split, time_dependent)
            except DataError:
                pass
            # its own init seed: otherwise the init depended on the cells run before it (a resumed or
            # per-job sweep gave other numbers than a fresh one)
            torch.manual_seed(derived_seed(self.cell.seed, "ratio-init", tag))
            g = torch.Generator().manual_seed(derived_seed(self.cell.seed, "ratio", tag))
            task = self.reporter.phase(f"ratio ({key})", cfg.steps)
            k = make_kernel(under, self.cell.budget.kernel) if under else None
            provider_obj = estimator(self.dataset, cfg, time_dependent, kernel=k)
            provider_obj.split = self.split  # D_ref's labels, for estimators that use them (exact_empirical)
            # the observed-data denoiser that dlsm and trunk share: trained once per group, from its own seed
            provider_obj.shared = self.shared_fits
            provider_obj.shared_seed = derived_seed(self.cell.seed, "observed-denoiser", suffix)
            provider_obj.keep = {}  # the fit's held-out selection, for an estimator built on this one (a gate)
            provider_obj.base_fit = functools.partial(self.fitted, kind, kernel=kernel)
            model, fitted = provider_obj.fit(self.split.bias, self.split.ref, g, self.device, task)
            info = {"provider": estimator.name, "kind": kind, **({"kernel": under} if under else {}), **fitted}
            if estimator.learned:
                gd = torch.Generator().manual_seed(derived_seed(self.cell.seed, "ratio-diag", tag))
                info["per_sigma"] = ratio_diagnostics(model, self.split.bias.to(self.device),
                                                      self.split.ref.to(self.device), gd, exact=exact,
                                                      n=min(2000, self.cell.budget.sample.n),
                                                      device=self.device, attainable=attainable)
            if isinstance(model, torch.nn.Module):
                info["checkpoint_hash"] = hashlib.sha256(
                    b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())
                ).hexdigest()[:16]
            info["seconds"] = time.monotonic() - t0
            distributed.broadcast_module(model)  # every rank trained it alike; make it exactly rank 0's
            self.ratios[key], self.ratio_info[key] = model, info
            self.selections[key] = provider_obj.keep.get("selection")
            self.keys[(kind, estimator.name, kernel)] = key
        return self.ratios[key]

    def fitted(self, kind: str, provider: str, kernel: str = "edm") -> tuple[Any, dict, Any]:
        """The group's ratio model of ``provider`` (fitted now if not yet), its recorded info and its held-out
        selection (None without one): what an estimator built on another one (``*_gated``) starts from."""
        model = self.ratio(kind, provider, kernel)
        key = self.keys[(kind, RATIOS.get(provider).name, kernel)]
        return model, self.ratio_info[key], self.selections[key]


def attainable_ratio(dataset, split, time_dependent: bool):
    """The best ratio D_ref allows (``exact_empirical``'s): the truth re-weighted to D_ref's empirical
    proportions, over p_bias; None where the dataset has no re-weightable mixture."""
    if not hasattr(dataset, "empirical_ratio"):
        return None
    labels = split.ref_labels.long().flatten()
    props = torch.bincount(labels, minlength=dataset.num_classes).double() / len(labels)
    return dataset.empirical_ratio(props, time_dependent)


class SplitRatio(ClipCountsOf):
    """The weight w_σ of one ratio model with the correction ∇log w_σ of another (``tiw_dsm@A+B``), so
    that a study can say which of the two carries an estimator's loss."""

    def __init__(self, weight, correction):
        self.weight, self.correction = weight, correction
        self.time_dependent, self.logit_max = weight.time_dependent, weight.logit_max

    def logit(self, x, sigma):
        return self.weight.logit(x, sigma)

    def log_ratio(self, x, sigma, count=None):
        return self.weight.log_ratio(x, sigma, count=count)

    def log_ratio_and_grad(self, x, sigma, count=None):
        return self.weight.log_ratio(x, sigma, count=count), self.correction.log_ratio_and_grad(x, sigma)[1]


def method_and_ratio(name: str) -> tuple[str, str | None]:
    """``tiw_dsm@denoiser_diff``: a method trained with another ratio estimator than the suite's; a
    leaderboard row and cell of its own. ``@A+B``: weight from A, correction from B. A ``~kernel``
    suffix (see :func:`method_kernel`) is not part of either."""
    method, _, ratio = name.partition("~")[0].partition("@")
    return method, ratio or None


def shared_name(name: str) -> str | None:
    """The cell whose trained network a sampling-time method ``name`` reuses (None: it trains its own)."""
    base = METHODS.get(method_and_ratio(name)[0]).trains_as
    kernel = method_kernel(name)
    return None if base is None else base + (f"~{kernel}" if kernel != "edm" else "")


def method_kernel(name: str) -> str:
    """``tiw_dsm~vp``: the method trained and sampled under the perturbation kernel ``vp``; edm by default."""
    return name.partition("~")[2] or "edm"


def check_method_name(name: str) -> None:
    method, ratio = method_and_ratio(name)
    cls = METHODS.get(method)  # unknown name: "did you mean"
    KERNELS.get(method_kernel(name))
    if method_kernel(name) != "edm" and not family_of(cls).uses_kernel:
        raise ConfigError(f"{name!r}: the {cls.family} family trains under no perturbation kernel; "
                          f"drop '~{method_kernel(name)}'")
    if ratio is not None:
        parts = ratio.split("+")
        if len(parts) > 2:
            raise ConfigError(f"{name!r}: give one estimator, or two as weight+correction")
        for part in parts:
            RATIOS.get(part)
        if cls.ratio is None and cls.sampling_ratio is None:
            raise ConfigError(f"method {method!r} uses no density ratio; drop '@{ratio}' from {name!r}")


def run_cell(cell: Cell, group: Group, device: str, reporter, checkpoint: Path | None = None) -> dict[str, Any]:
    timing: dict[str, float] = {}
    method_name, ratio_name = method_and_ratio(cell.method)
    kernel_name = method_kernel(cell.method)
    kernel = make_kernel(kernel_name, cell.budget.kernel)
    kernel = None if is_edm(kernel) else kernel  # EDM's own code paths, number for number
    method = METHODS.get(method_name)(**cell.method_options)
    family = family_of(method)  # builds, trains and samples the method's model (score network, GAN, ...)
    split = group.split
    if method.train_on == "ref":
        x, is_ref = split.ref, torch.ones(len(split.ref), dtype=torch.bool)
    elif method.train_on == "oracle":
        x, is_ref = split.oracle, torch.ones(len(split.oracle), dtype=torch.bool)
    else:
        x, is_ref = split.observed()
    trains_as = shared_name(cell.method) or cell.method  # a sampling-time method shares its base's training seeds
    shared = (trains_as, json.dumps(dataclasses.asdict(cell.budget.train), sort_keys=True))
    network = checkpoint.with_name(f"network-{cell.hash}.pt") if checkpoint is not None else None
    restored = None
    if network is not None and shared not in group.trained and network.is_file():
        torch.manual_seed(derived_seed(cell.seed, "init", trains_as))
        ema = family.make_model(group.dataset, cell.budget.train, kernel, method)
        ema = ema.to(device).eval().requires_grad_(False)
        restored = load_network(network, ema)  # trained before a preemption: only sampling and metrics remain
    timing["ratio"] = 0.0
    if restored is not None:
        train_info = {**restored["train"], "restored_network": True}
        for key, info in restored["ratio_info"].items():  # the record still says which ratio model trained it
            group.ratio_info.setdefault(key, info)
        ratio = None
    else:
        t0 = time.monotonic()
        ratio = group.ratio(method.ratio, ratio_name, kernel_name)
        timing["ratio"] = time.monotonic() - t0
    if ratio is not None and hasattr(ratio, "clipped"):
        ratio.clipped, ratio.seen = ratio.clipped * 0, ratio.seen * 0  # clip rate of this cell only
    t0 = time.monotonic()
    snapshots: dict[int, dict] = {}  # EMA states for checkpoint selection (train.select_every)
    if restored is not None:
        pass
    elif shared in group.trained:  # the same seeds and loss: the base cell's network, not a retrained copy
        base, info, snapshots = group.trained[shared]
        ema, train_info = copy.deepcopy(base), {**info, "shared_with": trains_as}
        train_info.pop("selection", None)  # this method chooses its own checkpoint below
    else:
        ema, train_info = train_network(cell, group, method, family, trains_as, kernel, x, is_ref, ratio, device,
                                        reporter, checkpoint, snapshots)
        if cell.method in group.shared_training:
            group.trained[shared] = (ema, dict(train_info), snapshots)
    timing["train"] = time.monotonic() - t0

    t0 = time.monotonic()
    sampling_ratio = group.ratio(method.sampling_ratio, ratio_name, kernel_name)  # `dg_obs@NAME` guides with NAME
    timing["ratio"] += time.monotonic() - t0
    ref_share = float(is_ref.float().mean())  # π: the share of D_ref in what the network saw
    denoiser = method.sampling_denoiser(ema, sampling_ratio, ref_share)
    draw = functools.partial(draw_samples, cell, group, method, family, denoiser, kernel, sampling_ratio, ref_share,
                             device)

    if restored is None:
        rule = selection_rule(cell.budget.train)
        if snapshots:  # the reported checkpoint: the best snapshot on its rule's score (the saved network is it)
            t0 = time.monotonic()
            task, done = reporter.phase("select", len(snapshots)), []
            value_of, by, higher, info = snapshot_score(cell, group, method, family, ema, kernel, draw, x, rule)

            def score() -> float:
                value = value_of()
                done.append(value)
                task(len(done), len(snapshots))
                return value

            chosen = select_checkpoint(ema, snapshots, score, higher)
            train_info["selection"] = {"source": rule.select_source, "by": by, "every": rule.select_every,
                                       **({"n": rule.select_n} if by != "loss" else {}), **info, **chosen}
            timing["select"] = time.monotonic() - t0
        elif "selection" not in train_info:  # the last step, named in the record as every other rule is
            train_info["selection"] = {"source": "none", "step": rule.steps,
                                       **({"holdout": holdout_info(group, method, rule)} if rule.ref_holdout else {})}
        if ratio is not None:
            train_info["clip_rate"] = ratio.clip_rate
        gw = torch.Generator().manual_seed(derived_seed(cell.seed, "ess", cell.method))
        train_info.update(family.weight_stats(method, ratio, x, is_ref, gw, kernel=kernel))
        if network is not None and distributed.is_main():
            used = {k: v for k, v in group.ratio_info.items() if k.partition("@")[0] == method.ratio}
            save_network(network, ema, {"train": train_info, "ratio_info": used})

    if sampling_ratio is not None and hasattr(sampling_ratio, "clipped"):  # the clip rate of the final draw only
        sampling_ratio.clipped, sampling_ratio.seen = sampling_ratio.clipped * 0, sampling_ratio.seen * 0
    s = cell.budget.sample
    t0 = time.monotonic()
    family.prepare_sampling(ema, s)  # in place: the denoiser above wraps it
    seeds = [cell.seed * 1_000_003 + i for i in range(s.n)]  # common to all methods of a seed
    samples = draw(seeds, "finish", reporter.phase("sample", s.n))
    if sampling_ratio is not None:
        train_info["sampling"] = {"ratio": method.sampling_ratio, "provider": ratio_name or cell.budget.ratio.provider,
                                  "ref_share": ref_share,
                                  "clip_rate": sampling_ratio.clip_rate, **getattr(method, "sampling_info", {})}
    timing["sample"] = time.monotonic() - t0

    t0 = time.monotonic()
    metrics = evaluate(cell, group, samples, x, cell.metrics, ref_levels=True)
    timing["metrics"] = time.monotonic() - t0
    picture = sample_picture(group.dataset, samples) if distributed.is_main() else None
    return {"metrics": metrics, "timing": timing, "train": train_info, "_picture": picture}


def train_network(cell: Cell, group: Group, method, family, trains_as: str, kernel, x, is_ref, ratio, device: str,
                  reporter, checkpoint: Path | None, snapshots: dict) -> tuple[torch.nn.Module, dict]:
    """Train the cell's network, or take it from the cache (tiwbench.training.network_cache) where the same
    training ran before: a method that trains on the oracle set, whose training is the same at every
    reference size; and, with checkpoint selection, any method, since how a snapshot is chosen
    (``select_source``, ``select_by``, ``select_n``) changes nothing in training: cells that differ only in
    their rule share one network and its snapshots, so rules compare on the same trained networks."""
    def train() -> tuple[torch.nn.Module, dict]:
        torch.manual_seed(derived_seed(cell.seed, "init", trains_as))
        net = family.make_model(group.dataset, cell.budget.train, kernel, method)
        g = torch.Generator().manual_seed(derived_seed(cell.seed, "train", trains_as))
        task = reporter.phase("train", cell.budget.train.steps)
        distributed.injected_fault("train")
        return family.train(method, net, x, is_ref, ratio, cell.budget.train, g, device, task,
                            checkpoint=checkpoint, snapshots=snapshots)

    oracle = method.train_on == "oracle"
    if (not oracle and not cell.budget.train.select_every) or group.cache_dir is None or distributed.active():
        return train()
    training = {k: v for k, v in dataclasses.asdict(cell.budget.train).items()
                if k not in ("select_source", "select_by", "select_n")}
    depends = {"data": group.split.hashes["oracle"], "dataset": cell.dataset, "dataset_params": cell.dataset_params,
               "method": trains_as, "method_options": cell.method_options, "train": training,
               "kernel": [method_kernel(cell.method), cell.budget.kernel], "seed": cell.seed, "threads": cell.threads,
               "device": device}
    if not oracle:  # what else its training read: D_bias, the training part of D_ref, and the ratio model it used
        depends.update(data=[group.split.hashes["bias"], group.split.hashes["ref"]], family=family.name,
                       ratio=ratio_identity(group, method.ratio, method_and_ratio(cell.method)[1],
                                            method_kernel(cell.method)))
    key = network_key(depends)
    with cached(group.cache_dir, key) as entry:
        torch.manual_seed(derived_seed(cell.seed, "init", trains_as))
        ema = family.make_model(group.dataset, cell.budget.train, kernel, method).to(device).eval()
        ema.requires_grad_(False)
        hit = entry.load(ema)
        if hit is not None:
            info, kept = hit
            snapshots.update(kept)
            return ema, {**info, "network_cache": {"key": key[:16], "hit": True, "waited_s": entry.waited_s}}
        ema, info = train()
        entry.store(ema, info, snapshots)
        return ema, {**info, "network_cache": {"key": key[:16], "hit": False, "waited_s": entry.waited_s}}


def ratio_identity(group: Group, kind: str | None, provider: str | None, kernel: str) -> list[Any]:
    """What identifies the ratio model(s) a cell's training read (``tiw_dsm@A+B``: both): each one's recorded
    info without its timings (a learned model's weights hash, a fitted one's parameters)."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("seconds", "timing", "waited_s", "hit")}
        return v

    if kind is None:
        return []
    names = (provider or group.cell.budget.ratio.provider).split("+")
    return [strip(group.ratio_info[group.keys[(kind, RATIOS.get(n).name, kernel)]]) for n in names]


# validation draws for checkpoint selection: seeds far from every evaluation seed (seed · 1,000,003 + i)
VALIDATION_SEED = 2**40


def holdout_info(group: Group, method, rule) -> dict[str, Any]:
    """What a cell held out of its training: the share and count, of D_ref or (the oracle) of its own set."""
    of = "oracle" if method.train_on == "oracle" else "d_ref"
    held = group.split.held_oracle if of == "oracle" else group.split.held_ref
    return {"of": of, "share": rule.ref_holdout, "n": len(held)}


def snapshot_score(cell: Cell, group: Group, method, family, net, kernel, draw, train_data,
                   rule) -> tuple[Any, str, bool, dict[str, Any]]:
    """(score of the snapshot loaded in ``net``, what it is, higher_is_better, what to record) under the
    cell's selection rule (train.select_source):
    - truth: ``select_by`` of 1,000 validation samples against the evaluator's unbiased target (a reference);
    - d_ref_holdout: against the points the group held out of every fit (D_ref's, or the oracle set's for the
      oracle): "loss", the unweighted denoising loss of the network there, on noise fixed per seed (a family
      without a denoising loss falls back to "fd"), or "fd" of validation samples against them in the
      evaluator's features."""
    validation = [VALIDATION_SEED + cell.seed * 1_000_003 + i for i in range(rule.select_n)]
    if rule.select_source == "truth":
        def truth() -> float:
            return evaluate(cell, group, draw(validation, "select-finish"), train_data, [rule.select_by])[0]["value"]

        return truth, rule.select_by, METRICS.get(rule.select_by).higher_is_better, {}
    info = {"holdout": holdout_info(group, method, rule)}
    held = group.split.held_oracle if info["holdout"]["of"] == "oracle" else group.split.held_ref
    if rule.select_by == "loss" and getattr(family, "denoising_loss", False):
        sigmas = selection_sigmas(cell.budget.sample, kernel)
        g = torch.Generator().manual_seed(derived_seed(cell.seed, "select-noise", info["holdout"]["of"]))
        noise = torch.randn((len(sigmas), *held.shape), generator=g)  # one draw per seed: snapshots and methods paired
        return (lambda: held_out_loss(net, held, sigmas, noise, cell.budget.sample.batch_size, group.device)), "loss", \
            False, info
    if rule.select_by == "loss":
        info["fallback"] = f"the {family.name} family has no denoising loss"
    target = mean_cov(group.evaluator.features(held).to(torch.float64).numpy())

    def held_fd() -> float:
        f = group.evaluator.features(draw(validation, "select-finish")).to(torch.float64)
        if not torch.isfinite(f).all():
            return math.inf  # a diverged snapshot is never chosen
        return frechet_distance(*mean_cov(f.numpy()), *target)

    return held_fd, "fd", False, info


def draw_samples(cell: Cell, group: Group, method, family, denoiser, kernel, sampling_ratio, ref_share: float,
                 device: str, seeds: list[int], finish_tag: str, task=None) -> torch.Tensor:
    """One sample per seed (on the CPU, in seed order, on every rank), through the family's sampler and the
    method's finishing step (e.g. importance resampling)."""
    s = cell.budget.sample
    n = len(seeds)
    mine = seeds[distributed.shard(n)]  # under torchrun each rank samples its part of the seeds
    out = []
    for i in range(0, len(mine), s.batch_size):
        lat = per_sample_latents(mine[i : i + s.batch_size], family.latent_shape(group.dataset, method), device)
        out.append(family.sample(denoiser, lat, kernel, s).cpu())
        if task is not None:
            task(min(i + s.batch_size, len(mine)), len(mine))
    samples = torch.cat(out) if out else torch.empty(0, *group.dataset.shape)
    samples = distributed.gather_cat(samples, n)
    gf = torch.Generator().manual_seed(derived_seed(cell.seed, finish_tag, cell.method))
    return method.finish_samples(samples.to(device), sampling_ratio, ref_share, gf).cpu()


def evaluate(cell: Cell, group: Group, samples: torch.Tensor, train_data: torch.Tensor, names: list[str],
             ref_levels: bool = False) -> list[dict[str, Any]]:
    """The metrics ``names`` of ``samples``; with ``ref_levels``, also every reference level that applies
    (labels known, exact moments), asked for or not."""
    ctx = EvalContext(samples=samples, evaluator=group.evaluator, dataset=group.dataset,
                      options=dataclasses.asdict(cell.budget.eval),
                      cache_dir=str(group.cache_dir) if group.cache_dir is not None else None,
                      split=group.split, train_data=train_data)
    extra = [n for n in REF_LEVEL_METRICS if n not in names and METRICS.get(n).applies(ctx)] if ref_levels else []
    metrics = []
    for name in [*names, *extra]:
        m = METRICS.get(name)
        res = m()(ctx)
        value = res.pop("value")
        metrics.append({"name": name, "value": value, "higher_is_better": m.higher_is_better, **res})
    return metrics


# how often a sweep looks at the cells another sweep holds
WAIT_POLL_S = 1.0


def run_cells(cells: list[Cell], out: Path, device: str = "cpu", cache_dir: Path | None = None,
              reporter=None, poll_s: float = WAIT_POLL_S) -> dict[str, list]:
    """Run every cell not already recorded with the same config hash, and wait for the cells another
    sweep holds (taking over a claim that goes stale); return the record paths by outcome: ok, skipped,
    others (recorded by another sweep meanwhile), lost (taken by another sweep mid-cell), failed."""
    out = Path(out)
    reporter = reporter or PlainReporter(len(cells))
    with progress.using(reporter):
        return _run_groups(cells, out, device, cache_dir, reporter, poll_s)



def _record_file(cell: Cell, out: Path) -> Path:
    return cell_dir(out, cell.suite, cell.dataset, cell.method, cell.ref_frac, cell.seed, cell.sweep) / RECORD_NAME


def _run_groups(cells: list[Cell], out: Path, device: str, cache_dir: Path | None, reporter,
                poll_s: float) -> dict[str, list]:
    summary: dict[str, list] = {"ok": [], "skipped": [], "others": [], "lost": [], "failed": []}
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    preflight(cells)
    held: list = []  # the claim of the cell running now (see claim_cell)
    queue = [(members, True) for members in groups.values()]  # (cells, may be put back once)
    waiting = Waiting(out, reporter)  # cells another sweep holds: awaited, taken over if their claim goes stale
    try:
        while queue or waiting:
            if not queue:
                queue = waiting.next(summary, poll_s)
                continue
            members, deferrable = queue.pop(0)
            group: list = []  # the group's shared state, made when its first cell runs
            for i, cell in enumerate(members):
                path = _record_file(cell, out)
                if existing_record(cell, out) is not None:
                    summary["skipped"].append(str(path))
                    reporter.finish(cell, {}, skipped=True)
                    continue
                if not claim_cell(cell, out, device, held):
                    if deferrable and not group:  # another sweep is on this group: come back at the end
                        queue.append((members[i:], False))
                        break
                    waiting.add(cell)
                    continue
                outcome, rec = _run_claimed(cell, members, group, path, out, device, cache_dir, reporter, held)
                if outcome == "lost":
                    summary["lost"].append(str(path))
                    waiting.add(cell)  # the sweep that took it over records it
                    continue
                summary[outcome].append(str(path))
                reporter.finish(cell, rec)
    finally:
        while held:  # an exit mid-cell (requeue, Ctrl-C, SIGTERM, bad input) frees the cell for the next sweep
            held.pop().release()
        reporter.close()
    return summary


def _run_claimed(cell: Cell, members: list[Cell], group: list, path: Path, out: Path, device: str,
                 cache_dir: Path | None, reporter, held: list) -> tuple[str, dict]:
    """Run one claimed cell and write its record (fenced by the claim); ``group`` holds the group's shared
    state once made. Returns ("ok" | "failed" | "lost", record)."""
    reporter.start(cell)
    t0, started = time.monotonic(), time.time()
    apply_threads(cell)  # before the record reads the environment: its threads are the config's
    rec = base_record(cell, device)
    try:
        if not group:
            group.append(Group(cell, device, cache_dir, reporter))
            group[0].shared_training = {shared_name(c.method) for c in members} - {None}
        result = run_cell(cell, group[0], device, reporter, checkpoint=checkpoint_path(path.parent, cell))
        picture = result.pop("_picture", None)
        if picture is not None and distributed.is_main() and (not held or held[-1].holds()):
            atomic_write_bytes(path.parent / GRID_NAME, picture)  # before the record that names it
            result["pictures"] = {"samples": GRID_NAME}
        rec.update(status="ok", **result)
    except (NonFiniteLoss, CellTimeout) as e:
        rec.update(status="failed", error={"type": type(e).__name__, "message": str(e), "step": e.step})
    except (DataError, ConfigError, integrity.Unreadable):
        raise  # bad input or another user's cache file: stop the sweep with the message, write nothing
    except Exception as e:  # one cell's failure must not end the sweep
        rec.update(status="failed", error={"type": type(e).__name__, "message": str(e),
                                           "traceback": traceback.format_exc(limit=8)})
        if distributed.active():  # the other ranks wait in a collective: this rank ends the job
            rec["error"]["rank"] = distributed.rank()
    rec.setdefault("timing", {})["total"] = time.monotonic() - t0
    if group:
        g = group[0]
        rec["timing"]["group"] = g.timing
        rec["data_hashes"] = g.split.hashes
        rec["ref_size"], rec["bias_size"] = len(g.split.ref), len(g.split.bias)  # ref_size: what trained
        if g.split.held_ref is not None:
            rec["ref_held_out"] = len(g.split.held_ref)  # D_ref's points kept for checkpoint selection only
        rec["ratio"] = {k: v for k, v in g.ratio_info.items()}
        rec["evaluator"] = dict(getattr(g.evaluator, "info", {}))
    failing_rank = "rank" in rec.get("error", {})
    # a rank that failed because another one left first (a closed connection) keeps that one's record
    first_failure = failing_rank and not (path.exists() and path.stat().st_mtime >= started)
    # fenced write: a sweep paused past its lease, whose cell another sweep has taken, writes nothing
    lease_lost = bool(held) and not held[-1].confirm()
    if lease_lost:
        reporter.echo(f"{cell.label()}: its claim was taken by another sweep while this one ran "
                      f"(lease lost); not writing {path}")
    elif (distributed.is_main() and not failing_rank) or first_failure:  # one rank writes
        atomic_write_json(path, rec)
        # the record supersedes them (and the temp file of a save cut short by a kill)
        for stale in [*path.parent.glob("checkpoint-*.pt"), *path.parent.glob(".checkpoint-*.tmp"),
                      *path.parent.glob("network-*.pt"), *path.parent.glob(".network-*.tmp")]:
            stale.unlink(missing_ok=True)
    while held:
        held.pop().release()
    if failing_rank:
        distributed.abort_job(f"{cell.label()} failed on rank {distributed.rank()}: "
                              f"{rec['error']['type']}: {rec['error']['message']}; record: {path}")
    return ("lost" if lease_lost else "ok" if rec["status"] == "ok" else "failed"), rec


class Waiting:
    """The cells another sweep holds. Each one ends in one of three ways: that sweep records it (counted
    under "others", or "failed" if its record says so), or its claim disappears or goes stale (the sweep
    was stopped, or died) and the cell is handed back to be claimed and run here. While it waits, the
    sweep says which cells, whose, and how many have been recorded, at the reporter's interval."""

    def __init__(self, out: Path, reporter):
        self.out, self.reporter = out, reporter
        self.cells: dict[str, tuple[Cell, float | None]] = {}  # record path -> (cell, mtime of its record then)
        self.since: float | None = None
        self.recorded = 0
        self.said = 0.0

    def __bool__(self) -> bool:
        return bool(self.cells)

    def add(self, cell: Cell) -> None:
        path = _record_file(cell, self.out)
        self.cells[str(path)] = (cell, path.stat().st_mtime_ns if path.exists() else None)
        whose = _owner_text(path.parent / LOCK_NAME)
        self.reporter.echo(f"{cell.label()}: claimed by another sweep ({whose}); waiting for it")

    def next(self, summary: dict[str, list], poll_s: float) -> list:
        """Wait until a cell is recorded by its owner or free to take; return the cells to run here, grouped
        as the run queue wants them."""
        if self.since is None:
            self.since = time.monotonic()
        while True:
            free: dict[tuple, list[Cell]] = {}
            for key, (cell, mtime_then) in list(self.cells.items()):
                path = Path(key)
                rec = _record_of(cell, path)
                written = rec is not None and (rec["status"] == "ok" or path.stat().st_mtime_ns != mtime_then)
                if written:  # recorded by the sweep that held it (a failed record only if it is new)
                    del self.cells[key]
                    self.recorded += 1
                    summary["others" if rec["status"] == "ok" else "failed"].append(key)
                    self.reporter.finish(cell, rec)
                elif _claim_free(path.parent / LOCK_NAME):
                    del self.cells[key]
                    free.setdefault(cell.group, []).append(cell)
                    self.reporter.echo(f"{cell.label()}: the other sweep's claim is gone or stale; taking it over")
            if free or not self.cells:
                return [(members, False) for members in free.values()]
            self._say()
            time.sleep(poll_s)

    def _say(self) -> None:
        now = time.monotonic()
        interval = getattr(self.reporter, "interval", progress.DEFAULT_INTERVAL)
        if self.said and now - self.said < interval:
            return
        self.said = now
        names = ", ".join(f"{c.label()} ({_owner_text(Path(k).parent / LOCK_NAME)})"
                          for k, (c, _) in list(self.cells.items())[:4])
        more = f" and {len(self.cells) - 4} more" if len(self.cells) > 4 else ""
        n = len(self.cells)
        self.reporter.echo(f"waiting for {n} cell{'s' if n != 1 else ''} run by another sweep "
                           f"({self.recorded} recorded by it so far, {progress.duration(now - self.since)}): "
                           f"{names}{more}")


def _record_of(cell: Cell, path: Path) -> dict | None:
    """The record at ``path`` if it is this cell's config (any status)."""
    try:
        rec = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return rec if rec.get("config_hash") == cell.hash else None


def _claim_free(lock: Path) -> bool:
    return not lock.exists() or is_stale(lock)


def _owner_text(lock: Path) -> str:
    try:
        info = lock_owner(lock) or {}
    except OSError:
        return "its claim is unreadable"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}" if info else "no owner recorded"


def claim_cell(cell: Cell, out: Path, device: str, held: list) -> bool:
    """Claim ``cell`` by its lock file (tiwbench.sweep.locks) unless another sweep holds it or has just
    recorded it. Under torchrun rank 0 decides and every rank follows; the claim goes to ``held``."""
    lock = None
    if distributed.is_main():
        path = cell_dir(out, cell.suite, cell.dataset, cell.method, cell.ref_frac, cell.seed, cell.sweep)
        # a stop between the lock file appearing and its claim reaching `held` would leave the lock behind
        with signals_deferred():
            lock = claim(path / LOCK_NAME)
            if lock is not None and existing_record(cell, out) is not None:  # finished while we looked
                lock.release()
                lock = None
            if lock is not None:
                held.append(lock)
    return distributed.any_rank(lock is not None, device)


def checkpoint_path(cell_directory: Path, cell: Cell) -> Path:
    """Named by the config hash, so an edited suite never resumes another config's weights."""
    return cell_directory / f"checkpoint-{cell.hash}.pt"


def preflight(cells: list[Cell]) -> None:
    """Check every dataset, path and ref_frac before any cell runs, so bad input writes nothing."""
    seen: set = set()
    for c in cells:
        found = contradictions({"config": c.config(), **({"sweep": c.sweep} if c.sweep else {})})
        if found:  # e.g. a dataset parameter set over the swept one: the record would contradict itself
            raise ConfigError(f"{c.label()}: {'; '.join(found)}; choose the swept parameter's points with --sweep")
        key = (c.dataset, json.dumps(c.dataset_params, sort_keys=True), c.ref_frac)
        if key in seen:
            continue
        seen.add(key)
        try:
            METHODS.get(method_and_ratio(c.method)[0])(**c.method_options)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"method_options.{c.method}: {e}") from None
        ds = DATASETS.get(c.dataset)(**c.dataset_params)
        missing_extra(c.metrics, ds)
        ds.split(c.ref_frac, c.seed)  # a missing file or an impossible ref_frac fails here
        for spec in {c.budget.ratio.provider} | {method_and_ratio(o.method)[1] or c.budget.ratio.provider
                                                  for o in cells}:
            for name in spec.split("+"):
                RATIOS.get(name).check(ds)  # e.g. `exact` on a dataset without a closed form
                RATIOS.get(name).check_config(ds, c.budget.ratio)  # e.g. a trunk file of another resolution


def missing_extra(metrics: list[str], dataset) -> None:
    """A metric whose libraries are not installed: stop before any cell runs, naming the extra."""
    import importlib.util

    for name in metrics:
        for module, extra in METRICS.get(name).needs(dataset).items():
            if importlib.util.find_spec(module) is None:
                raise ConfigError(f"metric {name!r} on {dataset.name} needs {module}, which is not installed; "
                                  f"pip install 'tiwbench[{extra}]' (or drop {name} from the suite's metrics)")


def base_record(cell: Cell, device: str) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION, "status": "running", "suite": cell.suite, "dataset": cell.dataset,
        "method": cell.method, "ref_frac": cell.ref_frac, "ref_size": None, "seed": cell.seed,
        "profile": cell.profile, "config_hash": cell.hash, "config": cell.config(), "env": environment(device),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"sweep": cell.sweep} if cell.sweep else {}),
    }
