"""Speed of a training step per method, and of the sampler, on a dataset's suite networks.

Per row: ms per step, the ratio to ``dsm_obs`` in the same run, FLOPs per step counted by
``torch.utils.flop_counter`` (matmuls, convolutions, attention; not elementwise work), achieved
TFLOP/s, the share of a stated bf16 peak, and the hours the profile's whole cell would take at this
speed: score training, ratio training, sampling and metrics. Everything goes through the functions a
sweep runs (``make_denoiser``, the ratio estimator's ``fit``, ``train_score``, ``sampling_network``,
``edm_sampler``), on synthetic data of the dataset's shape (speed does not depend on the pixel
values; no download is needed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tiwbench.config import load_suite, profile_metrics, resolve_budget
from tiwbench.diffusion.sampler import edm_sampler
from tiwbench.ratios.discriminator import make_ratio
from tiwbench.registry import DATASETS, METHODS, RATIOS
from tiwbench.training.denoiser import make_denoiser
from tiwbench.training.loop import fast_layout, sampling_network, train_score

METHOD_NAMES = ("dsm_obs", "dsm_ref", "iw_dsm", "tiw_dsm_nocorr", "tiw_dsm", "oracle")

# Dense (no structured sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets, which
# print the sparse figure: half of it. First substring match of torch.cuda.get_device_name() wins.
# H200 and H100 SXM share the GH100 compute die at the same clocks: 1,979 sparse → 989. Sustained clocks
# under a long load sit lower; pass --peak-tflops to state another figure (e.g. a measured matmul peak).
PEAK_BF16_TFLOPS = (
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)


def known_peak(device_name: str) -> float | None:
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return peak
    return None


def dataset_shape(name: str):
    """kind, shape and σ_data of a registered dataset, without loading its data where the class
    declares them (image sets); small sets are built."""
    cls = DATASETS.get(name)
    if all(isinstance(getattr(cls, a, None), (str, tuple, float)) for a in ("kind", "shape", "sigma_data")):
        return SimpleNamespace(kind=cls.kind, shape=tuple(cls.shape), sigma_data=float(cls.sigma_data))
    ds = cls()
    return SimpleNamespace(kind=ds.kind, shape=tuple(ds.shape), sigma_data=float(ds.sigma_data))


def synthetic_data(shape, n: int, ref_frac: float = 0.1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).clamp(-1, 1)
    return x, torch.rand(n, generator=g) < ref_frac / (1 + ref_frac)


def _sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def _attention_forward(query, key, value, *args, **kwargs):
    return sdpa_flop_count(query, key, value)


def _attention_backward(grad_out, query, key, value, *args, **kwargs):
    return sdpa_backward_flop_count(grad_out, query, key, value)


# The counter knows the CUDA attention kernels but counts the CPU's flash attention as 0 FLOPs; the same
# formulas (softmax(QKᵀ)V: 4·B·heads·Lq·Lk·d forward; backward five such matmuls: QKᵀ recomputed, dV, dP,
# dQ, dK) fill in. On NCHW memory the CPU kernel declines the strided heads and torch's math (bmm) runs.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_forward,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _attention_backward,
}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def _marks(device, warmup: int, total: int) -> tuple[dict, object]:
    """A progress callback noting the wall clock after step ``warmup`` and after the last step."""
    marks: dict[int, float] = {}

    def progress(step, _total):
        if step in (warmup, total):
            _sync(device)
            marks[step] = time.perf_counter()

    return marks, progress


def fit_ratio(kind: str, ds, budget, x, is_ref, device, steps: int, warmup: int):
    """The suite's ratio estimator fitted by its own ``fit`` (``train_ratio``: data and draws on the
    device) for ``warmup + steps`` steps on the synthetic D_bias/D_ref; returns the model and the seconds
    a ratio-training step takes (0 where the estimator trains nothing, e.g. exact ratios)."""
    warmup = max(warmup, 1)
    cfg = dataclasses.replace(budget.ratio, steps=warmup + steps)
    estimator = RATIOS.get(cfg.provider)(ds, cfg, kind == "time")
    marks, progress = _marks(device, warmup, warmup + steps)
    torch.manual_seed(0)
    model, _ = estimator.fit(x[~is_ref], x[is_ref], torch.Generator().manual_seed(0), device, progress)
    seconds = (marks[warmup + steps] - marks[warmup]) / steps if len(marks) == 2 else 0.0
    return model, seconds


def _build(method_name: str, ds, budget, ratios: dict):
    """The method, a fresh score network from ``make_denoiser`` (as the runner's) and the ratio model
    the method trains with (fitted once per kind and shared, as a sweep's group shares it)."""
    method = METHODS.get(method_name)()
    torch.manual_seed(0)
    net = make_denoiser(ds, budget.train)
    return method, net, ratios.get(method.ratio)


def train_step_flops(method_name: str, ds, budget, x, is_ref, device, ratios: dict) -> int:
    """FLOPs of one training step (forward, backward, the ratio model's share), by the flop counter."""
    method, net, ratio = _build(method_name, ds, budget, ratios)
    cfg = dataclasses.replace(budget.train, steps=1, check_every=1, checkpoint_every=0, time_limit=0.0,
                              compile=False)
    with flop_counter() as counter:
        train_score(method, net, x, is_ref, ratio, cfg, torch.Generator().manual_seed(0), device)
    return int(counter.get_total_flops())


def time_train_step(method_name: str, ds, budget, x, is_ref, device, steps: int, warmup: int,
                    ratios: dict) -> float:
    """Seconds per step, from the wall clock between the end of warm-up and the end of training
    (the GPU synchronised at both ends only, so steps overlap as in a real run)."""
    method, net, ratio = _build(method_name, ds, budget, ratios)
    cfg = dataclasses.replace(budget.train, steps=warmup + steps, check_every=10**9, checkpoint_every=0,
                              time_limit=0.0)
    marks, progress = _marks(device, warmup, warmup + steps)
    train_score(method, net, x, is_ref, ratio, cfg, torch.Generator().manual_seed(0), device, progress)
    return (marks[warmup + steps] - marks[warmup]) / steps


def sampler_row(ds, budget, device, dtype: str, batch: int, peak: float | None) -> dict:
    """One batch through the profile's Heun sampler, with the network as training leaves it (layout) and
    the sampler runs it (``sampling_network``: compiled under sample.compile)."""
    s = budget.sample
    torch.manual_seed(0)
    net = make_denoiser(ds, budget.train).to(device).eval()
    fast_layout(net, budget.train, device)
    sampling_network(net, s)
    lat = torch.randn(batch, *ds.shape, device=device)
    evals = 2 * s.steps - 1
    with torch.inference_mode(), flop_counter() as counter:
        net(lat, torch.ones(batch, device=device))
    flops = int(counter.get_total_flops())
    edm_sampler(net, lat, 2, s.sigma_min, s.sigma_max, s.rho, dtype=dtype)  # warm-up (and compilation)
    _sync(device)
    t0 = time.perf_counter()
    edm_sampler(net, lat, s.steps, s.sigma_min, s.sigma_max, s.rho, dtype=dtype)
    _sync(device)
    seconds = time.perf_counter() - t0
    tflops = flops * evals / seconds / 1e12
    return {"method": f"sampler ({dtype})", "kind": "sample", "batch": batch, "evaluations": evals,
            "ms_per_step": 1e3 * seconds / evals, "ratio_to_dsm_obs": None, "flops_per_step": flops,
            "tflops": tflops, "share_of_peak": tflops / peak if peak else None,
            "images_per_s": batch / seconds, "seconds": seconds}


def metric_row(dataset: str, ds, budget, metrics: list[str], device, peak: float | None, batch: int = 1024) -> dict:
    """What a cell's metrics cost per generated sample: the evaluator's passes over the samples that
    fd (features) and bias (class predictions) make. Vector data: the dataset's own evaluator. Images:
    an untrained ``EvalCNN`` of the evaluator's width (training it needs the dataset's images; its speed
    does not), and for fid the FID Inception with untrained weights (the same cost: no download). Reference
    statistics are computed once per run and cached, so a cell does not pay them; metrics other than fd,
    bias and fid (memorized: a nearest-neighbour search) are not timed."""
    from tiwbench.data.evaluator import EvalCNN, batched

    x = synthetic_data(ds.shape, batch, seed=1)[0]
    if ds.kind == "vector":
        evaluator = DATASETS.get(dataset)().evaluator(device=str(device))
        calls = {"fd": evaluator.features, "bias": evaluator.predict}
        warm = None
    else:
        cls = DATASETS.get(dataset)
        width = budget.evaluator.width or getattr(cls, "evaluator_config", {}).get("width", 32)
        classes = len(getattr(cls, "class_names", range(10)))
        c, h, _ = ds.shape
        torch.manual_seed(0)
        net = EvalCNN(in_channels=c, resolution=h, num_classes=classes, width=width).to(device).eval()
        calls = {"fd": net.features, "bias": net}
        if "fid" in metrics:
            from tiwbench.metrics.inception import inception_input, untrained_inception

            inception = untrained_inception().to(device).eval()
            calls["fid"] = lambda v: inception(inception_input(v).to(v.device))[0]
        warm = net
    passes = [calls[m] for m in metrics if m in calls]
    flops = 0
    if warm is not None:
        with torch.inference_mode(), flop_counter() as counter:
            for f in passes:
                f(x[:2].to(device))
        flops = int(counter.get_total_flops()) * batch // 2
        for f in passes:  # warm-up
            batched(f, x[:64], str(device))
    _sync(device)
    t0 = time.perf_counter()
    for f in passes:
        batched(f, x, str(device)) if warm is not None else f(x)
    _sync(device)
    seconds = time.perf_counter() - t0
    tflops = flops / seconds / 1e12
    return {"method": f"metrics ({', '.join(metrics)})", "kind": "metric", "batch": batch,
            "ms_per_step": 1e3 * seconds, "ratio_to_dsm_obs": None, "flops_per_step": flops, "tflops": tflops,
            "share_of_peak": tflops / peak if peak and flops else None, "images_per_s": batch / seconds,
            "seconds": seconds}


def run_bench(dataset: str, device: str = "cpu", profile: str = "smoke", suite: str = "ref_size",
              methods: tuple[str, ...] = METHOD_NAMES, steps: int | None = None, warmup: int | None = None,
              peak_tflops: float | None = None, compile: bool | None = None,
              sample_dtypes: tuple[str, ...] | None = None, sample_batch: int | None = None,
              repeats: int | None = None, on_row=None) -> dict:
    """Time the sampler, the metrics, the ratio models' training and every method's training step;
    return {"machine": ..., "rows": [...]}. Each method row projects its whole cell: ``train_hours``
    (train.steps score steps), ``ratio_hours`` (ratio.steps steps of the ratio model it needs),
    ``sample_hours`` (sample.n samples in the profile's sample.dtype), ``metric_hours`` (the suite's
    metrics on them) and ``cell_hours``, their sum. ``on_row(result)`` is called with the result so far
    after each row (``result["complete"]`` is False until the end), so a run cut short keeps its rows."""
    cuda = str(device).startswith("cuda")
    suite_cfg = load_suite(suite)
    budget, _ = resolve_budget(suite_cfg, profile, dataset)
    if compile is not None:
        budget.train.compile = budget.sample.compile = compile
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak_tflops if peak_tflops else (known_peak(name) if cuda else None)
    ds = dataset_shape(dataset)
    steps = steps or (20 if cuda else 30 if ds.kind == "vector" else 4)
    warmup = warmup if warmup is not None else (10 if cuda else 2)
    repeats = repeats or (1 if cuda else 3)
    s = budget.sample
    x, is_ref = synthetic_data(ds.shape, max(8 * budget.train.batch_size, 2 * budget.ratio.batch_size, 1024))
    methods = ("dsm_obs", *(m for m in methods if m != "dsm_obs"))  # the others' ratios need it first
    nets = {"score": _count(make_denoiser(ds, budget.train)), "ratio": _count(make_ratio(ds, budget.ratio, True))}
    machine = {"device": name, "torch": torch.__version__, "peak_bf16_tflops": peak,
               "threads": torch.get_num_threads(), "cuda": torch.version.cuda}
    rows: list[dict] = []
    result = {"dataset": dataset, "profile": profile, "suite": suite, "steps_timed": steps, "warmup": warmup,
              "repeats": repeats, "compile": budget.train.compile, "amp": budget.train.amp and cuda,
              "channels_last": budget.train.channels_last and cuda, "parameters": nets,
              "cell_steps": budget.train.steps, "ratio_steps": budget.ratio.steps, "samples": s.n,
              "sample_dtype": s.dtype, "machine": machine, "rows": rows, "complete": False}

    def add(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(result)

    dtypes = tuple(sample_dtypes or (("float32", "bfloat16") if cuda else ("float32",)))
    if s.dtype not in dtypes:  # the profile's own precision is what its cells run
        dtypes = (s.dtype, *dtypes)
    for d in dtypes:
        add(sampler_row(ds, budget, device, d, sample_batch or s.batch_size, peak))
    profile_sampler = next(r for r in rows if r["method"] == f"sampler ({s.dtype})")
    sample_seconds = s.n / profile_sampler["images_per_s"]
    metrics = metric_row(dataset, ds, budget, profile_metrics(suite_cfg, profile, dataset), device, peak)
    add(metrics)
    metric_seconds = s.n / metrics["images_per_s"]
    ratios, ratio_seconds = {}, {}
    for kind in dict.fromkeys(METHODS.get(m).ratio for m in methods):
        if kind is not None:  # once per kind, shared by the methods (a sweep's group shares it)
            ratios[kind], ratio_seconds[kind] = fit_ratio(kind, ds, budget, x, is_ref, device, steps, warmup)
    best = dict.fromkeys(methods, math.inf)
    base = None
    for round_ in range(repeats):  # round-robin, fastest kept: a neighbour's burst only adds time
        for m in methods:
            best[m] = min(best[m], time_train_step(m, ds, budget, x, is_ref, device, steps, warmup, ratios))
            if round_ < repeats - 1:
                continue
            flops = train_step_flops(m, ds, budget, x, is_ref, device, ratios)
            sec = best[m]
            tflops = flops / sec / 1e12
            kind = METHODS.get(m).ratio
            parts = {"train_hours": budget.train.steps * sec / 3600,
                     "ratio_hours": budget.ratio.steps * ratio_seconds[kind] / 3600 if kind else 0.0,
                     "sample_hours": sample_seconds / 3600, "metric_hours": metric_seconds / 3600}
            base = base or {"ms_per_step": 1e3 * sec, "flops_per_step": flops}  # dsm_obs comes first
            add({"method": m, "kind": "train", "batch": budget.train.batch_size, "ms_per_step": 1e3 * sec,
                 "ratio_to_dsm_obs": 1e3 * sec / base["ms_per_step"], "flops_per_step": flops, "tflops": tflops,
                 "share_of_peak": tflops / peak if peak else None,
                 "ratio_flops_per_step": flops - base["flops_per_step"],  # the ratio model's share
                 "ratio_ms_per_step": 1e3 * ratio_seconds[kind] if kind else None,
                 **parts, "cell_hours": sum(parts.values())})
    result["complete"] = True
    return result


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def format_table(result: dict) -> str:
    head = f"{'method':<20} {'ms/step':>10} {'× dsm_obs':>9} {'GFLOP/step':>11} {'ratio GFLOP':>11} " \
           f"{'TFLOP/s':>8} {'of peak':>8} {'cell h':>8} {'img/s':>9}"
    lines = [f"{result['dataset']} ({result['profile']}) on {result['machine']['device']}, "
             f"peak {result['machine']['peak_bf16_tflops'] or 'unknown'} TFLOP/s, "
             f"parameters {result['parameters']}", head]

    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    for r in sorted(result["rows"], key=lambda r: r.get("kind") != "train"):  # methods first, as measured
        lines.append(f"{r['method']:<20} {f(r['ms_per_step'], '10.2f')} {f(r['ratio_to_dsm_obs'], '9.2f')} "
                     f"{f(r['flops_per_step'] / 1e9, '11.3f')} {f(r.get('ratio_flops_per_step', 0) / 1e9, '11.3f')} "
                     f"{f(r['tflops'], '8.3f')} {f(r['share_of_peak'], '8.1%')} {f(r.get('cell_hours'), '8.3g')} "
                     f"{f(r.get('images_per_s'), '9.1f')}")
    return "\n".join(lines) + "\n"


def ratio_precision(dataset: str, profile: str = "smoke", suite: str = "ref_size", ref_frac: float = 0.1,
                    n: int = 2000, seed: int = 0) -> list[dict]:
    """The error bf16 autocast of the discriminator's forward and input gradient causes, against
    float32, in w = exp(ℓ) and in the score correction σ²∇log w, per σ band, on D_bias samples of
    the dataset with the profile's trained time-dependent ratio model (CPU bf16 arithmetic)."""
    from tiwbench.diffusion.precond import expand_like
    from tiwbench.ratios.diagnostics import SIGMA_BANDS
    from tiwbench.ratios.discriminator import RatioTrainConfig, make_ratio, train_ratio

    budget, _ = resolve_budget(load_suite(suite), profile, dataset)
    ds = DATASETS.get(dataset)()
    split = ds.split(ref_frac, seed)
    torch.manual_seed(seed)
    model = make_ratio(ds, budget.ratio, True)
    tcfg = RatioTrainConfig(**{k: getattr(budget.ratio, k) for k in dataclasses.asdict(RatioTrainConfig())})
    train_ratio(model, split.bias, split.ref, tcfg, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1)
    rows = []
    for lo, hi in SIGMA_BANDS:
        y = split.bias[torch.randint(len(split.bias), (n,), generator=g)]
        sigma = (torch.rand(n, generator=g) * math.log(hi / lo) + math.log(lo)).exp()
        x = y + expand_like(sigma, y) * torch.randn(y.shape, generator=g)
        out = {}
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
            xr = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                logit = model._logit(xr, sigma)  # _logit: the forward without logit()'s float32 guard
            (grad,) = torch.autograd.grad(logit.float().sum(), xr)
            lw = logit.detach().float().clamp(-model.logit_max, model.logit_max)
            out[name] = (lw.exp(), expand_like(sigma, grad) ** 2 * grad.float())
        (w32, s32), (w16, s16) = out["float32"], out["bfloat16"]
        w_err = ((w16 - w32).abs() / w32).double()
        s_err = (s16 - s32).flatten(1).norm(dim=1).double()
        s_norm = s32.flatten(1).norm(dim=1).double()
        rows.append({"sigma_lo": lo, "sigma_hi": hi, "w_rel_err_median": float(w_err.median()),
                     "w_rel_err_p99": float(w_err.quantile(0.99)),
                     "shift_rel_err": float(s_err.pow(2).mean().sqrt() / s_norm.pow(2).mean().sqrt().clamp_min(1e-30)),
                     "shift_err_rms": float(s_err.pow(2).mean().sqrt()),
                     "shift_rms": float(s_norm.pow(2).mean().sqrt())})
    return rows


@dataclasses.dataclass
class BenchRequest:
    """What `tiwbench bench` parses from its options, so the benchmark can be driven from Python too
    (:func:`run_request`)."""

    dataset: str = "toy2d"
    device: str = "cpu"
    profile: str = "smoke"
    suite: str = "ref_size"
    peak_tflops: float | None = None
    steps: int | None = None
    repeats: int | None = None
    compile: bool | None = None
    methods: tuple[str, ...] = METHOD_NAMES
    sample_batch: int | None = None
    threads: int = 1  # CPU intra-op threads
    ratio_precision: bool = False  # instead: bf16's error in w and σ²∇log w (:func:`ratio_precision`)


def run_request(req: BenchRequest, on_row=None) -> dict:
    """Check ``req`` (bad input: ConfigError or RegistryError naming the fix) and run it: the step timings
    of :func:`run_bench` (``on_row`` after each row), or with ``ratio_precision`` that table instead."""
    from tiwbench.config import PROFILES, ConfigError

    DATASETS.get(req.dataset)
    if req.profile not in PROFILES:
        raise ConfigError(f"unknown profile {req.profile!r}; use one of {', '.join(PROFILES)}")
    for m in req.methods:
        METHODS.get(m)
    if req.peak_tflops is not None and req.peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops {req.peak_tflops} must be positive; pass the GPU's bf16 peak in TFLOP/s")
    if req.device == "cpu":
        torch.set_num_threads(max(1, req.threads))
    if req.ratio_precision:
        return {"dataset": req.dataset, "profile": req.profile,
                "ratio_precision": ratio_precision(req.dataset, req.profile, req.suite)}
    return run_bench(req.dataset, req.device, req.profile, req.suite, tuple(req.methods), steps=req.steps,
                     peak_tflops=req.peak_tflops, compile=req.compile, repeats=req.repeats,
                     sample_batch=req.sample_batch, on_row=on_row)
