"""Image metrics through torch-fidelity and clean-fid (METHOD.md §7).

Two feature spaces:
- ``evaluator``: the dataset evaluator's feature network (``evaluator.network.features``), wrapped
  as the torch-fidelity extractor ``tiwbench-evaluator``: what ``fd`` on images, and ``kid``,
  ``precision`` and ``recall`` by default, use;
- ``inception``: the FID Inception-v3 (``tiwbench.metrics.inception``): what ``fid`` uses.

The libraries do the arithmetic: with ``fid_backend: torch-fidelity`` one ``calculate_metrics`` call
gives FD, KID and precision/recall; with ``clean-fid`` its feature loop, ``frechet_distance`` and
``kernel_distance`` give FD and KID (clean-fid has no precision/recall, so those stay torch-fidelity).
The target's features are extracted once and cached (``reference_features``); they enter
``calculate_metrics`` as rank-2 batches that both extractors pass through unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiwbench.metrics import tv_shim  # noqa: F401  (must precede torch_fidelity / cleanfid)

# isort: split
import torch_fidelity
from cleanfid import fid as cleanfid
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from tiwbench import progress
from tiwbench.data.base import content_hash
from tiwbench.integrity import load_or_move_aside
from tiwbench.metrics.base import FIDELITY_MODULES, EvalContext, Metric, MetricError, check_enough_samples
from tiwbench.records import shared_temp

EVALUATOR_EXTRACTOR = "tiwbench-evaluator"
EVALUATOR_FEATURES = "features"
BACKENDS = ("torch-fidelity", "clean-fid")
SPACES = ("evaluator", "inception")
CACHE_ENV = "TIWBENCH_CACHE_DIR"


class EvaluatorFeatures(FeatureExtractorBase):
    """A tiwbench image evaluator's feature network as a torch-fidelity extractor.

    Takes images in [-1, 1] at the dataset's own size; rank-2 batches are cached reference
    features and pass through. The network arrives as the ``tiwbench_network`` keyword of
    ``calculate_metrics`` (torch-fidelity hands every keyword to the extractor's constructor).
    """

    def __init__(self, name, features_list, tiwbench_network=None, **kwargs):
        super().__init__(name, features_list)
        if tiwbench_network is None or not hasattr(tiwbench_network, "features"):
            raise MetricError(f"feature extractor {name!r} needs tiwbench_network=<module with .features(x)>")
        # kept outside the module tree: torch-fidelity's eval()/requires_grad_ must not touch the evaluator
        object.__setattr__(self, "_network", tiwbench_network)

    @staticmethod
    def get_provided_features_list():
        return (EVALUATOR_FEATURES,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return EVALUATOR_FEATURES

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8)

    def forward(self, x):
        if x.dim() == 2:
            return (x.to(torch.float64),)
        p = next(iter(self._network.parameters()), None) if hasattr(self._network, "parameters") else None
        if p is not None:  # the evaluator may live on a GPU while clean-fid hands over CPU batches
            x = x.to(device=p.device, dtype=p.dtype)
        with torch.no_grad():
            return (self._network.features(x).to(torch.float64),)


if EVALUATOR_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EVALUATOR_EXTRACTOR, EvaluatorFeatures)


def _on_cuda(net) -> bool:
    p = next(iter(net.parameters()), None) if hasattr(net, "parameters") else None
    return bool(p is not None and p.is_cuda)


class _Items(torch.utils.data.Dataset):
    """Rows of a tensor as a Dataset: images for extraction, or feature vectors to pass through.
    ``report(done, total)`` hears of each item read (the loader reads in this process: save_cpu_ram)."""

    def __init__(self, t: torch.Tensor, report=None):
        self.t, self.report, self.read = t, report, 0

    def __len__(self):
        return len(self.t)

    def __getitem__(self, i):
        if self.report is not None:
            self.read += 1
            self.report(self.read, len(self.t))
        return self.t[i]


# -- options --------------------------------------------------------------------------------------

@dataclasses.dataclass
class FidelityOptions:
    """The ``eval`` config keys these metrics read (defaults mirror tiwbench.config.EvalConfig)."""

    fid_backend: str = "torch-fidelity"
    inception_weights: str = ""
    fid_samples: int = 0
    fid_ref_samples: int = 10000
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    prc_neighborhood: int = 3
    feature_space: str = "evaluator"
    fid_batch_size: int = 64
    fid_ref_stats: str = ""
    seed: int = 2020

    @classmethod
    def from_ctx(cls, ctx: EvalContext) -> FidelityOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        opts = cls(**{k: v for k, v in (ctx.options or {}).items() if k in known})
        if opts.fid_backend not in BACKENDS:
            raise MetricError(f"eval.fid_backend {opts.fid_backend!r}: use one of {', '.join(BACKENDS)}")
        if opts.feature_space not in SPACES:
            raise MetricError(f"eval.feature_space {opts.feature_space!r}: use one of {', '.join(SPACES)}")
        return opts


def cache_dir_of(ctx: EvalContext) -> Path | None:
    """The run's cache dir: the context's, else the evaluator's, else ``$TIWBENCH_CACHE_DIR``; None = no cache."""
    d = getattr(ctx, "cache_dir", None) or getattr(ctx.evaluator, "cache_dir", None) or os.environ.get(CACHE_ENV)
    return Path(d) if d else None


# -- the feature space: an extractor plus how images are prepared for it --------------------------

@dataclasses.dataclass
class Space:
    name: str  # "evaluator" or "inception"
    extractor: str  # torch-fidelity registry name
    kwargs: dict[str, Any]  # extra calculate_metrics keywords that reach the extractor
    prepare: Callable[[torch.Tensor], torch.Tensor]  # images in [-1, 1] -> extractor input
    dim: int
    key: dict[str, Any]  # what the features depend on besides the images

    def module(self) -> FeatureExtractorBase:
        return create_feature_extractor(self.extractor, [self.layer], cuda=self.cuda, verbose=False, **self.kwargs)

    @property
    def layer(self) -> str:
        return FEATURE_EXTRACTORS_REGISTRY[self.extractor].get_default_feature_layer_for_metric("fid")

    @property
    def cuda(self) -> bool:
        return _on_cuda(self.kwargs.get("tiwbench_network"))


def network_hash(net) -> str:
    sd = net.state_dict() if hasattr(net, "state_dict") else {}
    h = hashlib.sha256(type(net).__qualname__.encode())
    for k, v in sd.items():
        h.update(k.encode())
        h.update(content_hash(v).encode())
    return h.hexdigest()[:16]


def evaluator_space(evaluator) -> Space:
    net = getattr(evaluator, "network", None)
    if net is None:
        raise MetricError("this metric needs an image evaluator with a feature network (evaluator.network)")
    dim = int(getattr(evaluator, "feature_dim", 0) or 0)
    if not dim:
        dim = int(evaluator.features(evaluator.target[:2]).shape[1])
    return Space("evaluator", EVALUATOR_EXTRACTOR, {"tiwbench_network": net}, lambda x: x, dim,
                 {"extractor": EVALUATOR_EXTRACTOR, "weights": network_hash(net), "preprocess": "identity[-1,1]"})


def inception_space(opts: FidelityOptions, cache_dir: Path | None) -> Space:
    from tiwbench.metrics.inception import INCEPTION_EXTRACTOR, inception_input, inception_state_dict_path

    path, weights_id = inception_state_dict_path(opts.inception_weights, cache_dir)
    return Space("inception", INCEPTION_EXTRACTOR, {"feature_extractor_weights_path": path}, inception_input, 2048,
                 {"extractor": INCEPTION_EXTRACTOR, "weights": weights_id,
                  "preprocess": "uint8 rgb, tf1-bilinear 299 inside"})


def space_for(ctx: EvalContext, opts: FidelityOptions, name: str) -> Space:
    memo = _memo(ctx)
    if ("space", name) not in memo:
        memo[("space", name)] = (evaluator_space(ctx.evaluator) if name == "evaluator"
                                 else inception_space(opts, cache_dir_of(ctx)))
    return memo[("space", name)]


def _memo(ctx: EvalContext) -> dict:
    memo = getattr(ctx, "memo", None)
    if memo is None:  # shared by the metrics of one cell, so features are extracted once
        memo = {}
        object.__setattr__(ctx, "memo", memo)
    return memo


# -- feature extraction through each library --------------------------------------------------------

def _tf_features(space: Space, images: torch.Tensor, batch_size: int, what: str = "features") -> np.ndarray:
    fe = space.module()
    items = _Items(space.prepare(images), progress.phase(f"{what} ({space.name})", len(images)))
    fd = get_featuresdict_from_dataset(items, fe, batch_size, space.cuda, True, False)
    return fd[space.layer].numpy()


def _cleanfid_callable(space: Space, channels: int):
    """clean-fid hands its extractor B×3×H×W floats in [0, 255]."""
    fe = space.module()
    if space.name == "inception":
        return lambda b: fe(b)[0]
    return lambda b: fe(b[:, :channels] / 127.5 - 1)[0]


def _cleanfid_features(space: Space, images: torch.Tensor, batch_size: int, what: str = "features") -> np.ndarray:
    x = space.prepare(images)
    if space.name == "inception":
        x = x.to(torch.float64)
    else:  # as clean-fid expects, [0, 255] RGB; in float64 so the way back is exact
        x = (x.to(torch.float64) + 1) * 127.5
        x = x.repeat(1, 3 // x.shape[1], 1, 1) if x.shape[1] == 1 else x
    n, bs = len(x), min(batch_size, len(x))
    starts = iter(range(0, n, bs))
    report = progress.phase(f"{what} ({space.name})", n)

    def serve(z):  # clean-fid's "generator": hands out the next batch, padded to its fixed batch size
        i = next(starts)
        report(i, n)
        b = x[i : i + bs]
        return torch.cat([b, b[-1:].expand(bs - len(b), *b.shape[1:])]) if len(b) < bs else b

    with torch.random.fork_rng(devices=[]):  # its latents come from the global RNG; leave that untouched
        feats = cleanfid.get_model_features(serve, _cleanfid_callable(space, images.shape[1]), mode="clean",
                                            z_dim=1, num_gen=n, batch_size=bs, device=torch.device("cpu"),
                                            verbose=False, custom_fn_resize=lambda a: a)
    report(n, n)
    return np.asarray(feats)


# -- the cached reference -------------------------------------------------------------------------

def reference_key(target: torch.Tensor, space: Space, backend: str, n_ref: int, seed: int) -> tuple[str, dict]:
    parts = {"target": content_hash(target), "target_shape": list(target.shape), **space.key,
             "backend": backend, "n_ref": n_ref, "subset_seed": seed, "version": 1}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20], parts


def _reference_subset(target: torch.Tensor, n_ref: int, seed: int) -> torch.Tensor:
    if not n_ref or n_ref >= len(target):
        return target
    g = torch.Generator().manual_seed(seed)
    return target[torch.randperm(len(target), generator=g)[:n_ref].sort().values]


def _atomic_savez(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = shared_temp(path.parent, path.stem)
    try:
        with os.fdopen(fd, "wb") as f:  # a file object, so numpy adds no ".npz" to the temp name
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def reference_features(target: torch.Tensor, space: Space, backend: str, cache_dir: Path | None,
                       n_ref: int = 0, seed: int = 2020, batch_size: int = 64) -> dict[str, Any]:
    """Features, mean and covariance of the target under ``space`` and ``backend``, cached as .npz.

    Returns ``features``, ``mu``, ``sigma``, ``key``, ``status`` ("hit", "miss" or "off") and ``path``.
    """
    key, parts = reference_key(target, space, backend, n_ref, seed)
    path = cache_dir / "reference" / f"{space.name}-{backend}-{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        hit = load_or_move_aside(path, lambda p: load_reference(p, parts), "reference statistics")
        if hit is not None:
            if hit["ref_hash"] is None:  # written before files kept it
                hit["ref_hash"] = content_hash(_reference_subset(target, n_ref, seed))
            return {**hit, "key": key, "status": "hit", "path": str(path)}
    x = _reference_subset(target, n_ref, seed)
    ref_hash = content_hash(x)
    if backend == "torch-fidelity":
        feats = _tf_features(space, x, batch_size, "reference features")
        st = fid_features_to_statistics(torch.from_numpy(feats))
        mu, sigma = st["mu"], st["sigma"]
    else:
        feats = _cleanfid_features(space, x, batch_size, "reference features")
        mu, sigma = np.mean(feats, axis=0), np.cov(feats, rowvar=False)  # as cleanfid.fid_from_feats does
    if path is not None:
        _atomic_savez(path, features=feats, mu=mu, sigma=sigma, meta=np.array(json.dumps(parts, sort_keys=True)),
                      ref_hash=np.array(ref_hash))
    return {"features": feats, "mu": mu, "sigma": sigma, "ref_hash": ref_hash, "key": key,
            "status": "miss" if path else "off", "path": str(path) if path else None}


def load_reference(path: Path, parts: dict[str, Any]) -> dict[str, Any] | None:
    """A cached reference file's arrays, or None when it was made for other inputs (its meta differs)."""
    with np.load(path) as z:
        if json.loads(str(z["meta"])) != parts:
            return None
        return {"features": z["features"], "mu": z["mu"], "sigma": z["sigma"],
                "ref_hash": str(z["ref_hash"]) if "ref_hash" in z.files else None}


def load_published_stats(path: str | Path) -> dict[str, Any]:
    """Published reference statistics: an .npz with ``mu`` [D] and ``sigma`` [D, D] (the format pytorch-fid
    and clean-fid publish), identified by the file's hash."""
    from tiwbench.metrics.inception import file_hash

    p = Path(path).expanduser()
    if not p.is_file():
        raise MetricError(f"eval.fid_ref_stats {p} does not exist; pass an .npz with arrays mu and sigma")
    try:
        with np.load(p) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
    except (KeyError, ValueError, OSError) as e:
        raise MetricError(f"eval.fid_ref_stats {p}: not an .npz with arrays mu and sigma ({e})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise MetricError(f"eval.fid_ref_stats {p}: mu {mu.shape} and sigma {sigma.shape} do not match")
    return {"features": None, "mu": mu, "sigma": sigma, "ref_hash": f"file:{file_hash(p)}", "key": file_hash(p),
            "status": "published", "path": str(p)}


def variant(space: Space, backend: str, ref: dict[str, Any], n_ref: int | None) -> dict[str, Any]:
    """What an FID number depends on besides the samples: what the field reports with a score."""
    return {"backend": backend, "feature_space": space.name, "weights": space.key["weights"],
            "resize": space.key["preprocess"], "reference_size": n_ref, "reference_hash": ref.get("ref_hash"),
            "reference": "published" if ref["status"] == "published" else "computed"}


# -- the metrics ----------------------------------------------------------------------------------

def _check_images(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise MetricError(f"{what}: image metrics need [N, C, H, W] tensors; got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise MetricError(f"{what} contain non-finite values; the model diverged")


class Comparison:
    """Generated samples against the cached reference in one space with one backend.

    The generated features are extracted once (by the backend's own loop); each metric is then
    computed only when asked for, by the library, on those features.
    """

    def __init__(self, samples: torch.Tensor, target: torch.Tensor, space: Space, opts: FidelityOptions,
                 cache_dir: Path | None):
        _check_images(samples, "generated samples")
        n_max = opts.fid_samples if space.name == "inception" else 0
        x = samples[:n_max] if n_max else samples
        check_enough_samples(len(x), space.dim, f"{space.name} features (generated samples)")
        self.space, self.opts, self.backend = space, opts, opts.fid_backend
        if opts.fid_ref_stats and space.name == "inception":  # a published file: FID only (no features)
            self.ref = load_published_stats(opts.fid_ref_stats)
            if len(self.ref["mu"]) != space.dim:
                raise MetricError(f"eval.fid_ref_stats {opts.fid_ref_stats}: {len(self.ref['mu'])}-dimensional, "
                                  f"the {space.name} features are {space.dim}-dimensional")
            n_ref = None
        else:
            self.ref = reference_features(target, space, self.backend, cache_dir, opts.fid_ref_samples, opts.seed,
                                          opts.fid_batch_size)
            n_ref = len(self.ref["features"])
            check_enough_samples(n_ref, space.dim, f"{space.name} features (reference set)")
        extract = _tf_features if self.backend == "torch-fidelity" else _cleanfid_features
        self.features = extract(space, x, opts.fid_batch_size, "sample features")
        if not np.isfinite(self.features).all():
            raise MetricError("generated samples have non-finite features; the model diverged")
        self.kid_size = max(2, min(opts.kid_subset_size, len(x), n_ref or len(x)))
        self.info = {"backend": self.backend, "feature_space": space.name, "extractor": space.extractor,
                     "weights": space.key["weights"], "n": len(x), "n_ref": n_ref, "reference": self.ref["status"],
                     "reference_key": self.ref["key"], "variant": variant(space, self.backend, self.ref, n_ref)}
        self._results: dict[str, Any] = {}

    def _calculate(self, **which) -> dict[str, Any]:
        """torch-fidelity on the two feature sets: both pass through the extractor unchanged."""
        o = self.opts
        return torch_fidelity.calculate_metrics(
            input1=_Items(torch.from_numpy(self.features)), input2=_Items(torch.from_numpy(self.ref["features"])),
            cuda=False, batch_size=max(len(self.features), len(self.ref["features"])), save_cpu_ram=True,
            cache=False, verbose=False, feature_extractor=self.space.extractor, kid_subset_size=self.kid_size,
            kid_subsets=o.kid_subsets, prc_neighborhood=o.prc_neighborhood, rng_seed=o.seed,
            **self.space.kwargs, **which)

    def _need_features(self, what: str) -> None:
        if self.ref["features"] is None:
            raise MetricError(f"{what} needs the reference features; published statistics (eval.fid_ref_stats) "
                              "give FID only")

    def fd(self) -> float:
        if "fd" not in self._results:
            if self.ref["features"] is None and self.backend == "torch-fidelity":
                mine = fid_features_to_statistics(torch.from_numpy(self.features))
                value = fid_statistics_to_metric(mine, {"mu": self.ref["mu"], "sigma": self.ref["sigma"]},
                                                 False)[KEY_METRIC_FID]
            elif self.backend == "torch-fidelity":
                value = self._calculate(fid=True)[KEY_METRIC_FID]
            else:
                f = self.features
                value = cleanfid.frechet_distance(np.mean(f, axis=0), np.cov(f, rowvar=False),
                                                  self.ref["mu"], self.ref["sigma"])
            self._results["fd"] = float(value)
        return self._results["fd"]

    def kid(self) -> tuple[float, float | None]:
        self._need_features("kid")
        if "kid" not in self._results:
            if self.backend == "torch-fidelity":
                m = self._calculate(kid=True)
                self._results["kid"] = (m[KEY_METRIC_KID_MEAN], m[KEY_METRIC_KID_STD])
            else:
                state = np.random.get_state()  # clean-fid's KID draws from numpy's global RNG
                try:
                    np.random.seed(self.opts.seed)
                    value = cleanfid.kernel_distance(self.features, self.ref["features"], self.opts.kid_subsets,
                                                     self.kid_size)
                finally:
                    np.random.set_state(state)
                self._results["kid"] = (float(value), None)
        return self._results["kid"]

    def precision_recall(self) -> tuple[float, float]:
        # clean-fid has no precision/recall: with either backend they come from torch-fidelity
        self._need_features("precision/recall")
        if "prc" not in self._results:
            m = self._calculate(prc=True)
            self._results["prc"] = (m[KEY_METRIC_PRECISION], m[KEY_METRIC_RECALL])
        return self._results["prc"]


def compare(samples: torch.Tensor, target: torch.Tensor, space: Space, opts: FidelityOptions,
            cache_dir: Path | None) -> dict[str, Any]:
    """FD, KID and precision/recall of ``samples`` against ``target`` in ``space`` with ``opts.fid_backend``."""
    c = Comparison(samples, target, space, opts, cache_dir)
    (kid, kid_std), (precision, recall) = c.kid(), c.precision_recall()
    return {"fd": c.fd(), "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall,
            "kid_subset_size": c.kid_size, **c.info}


def comparison(ctx: EvalContext, space_name: str | None = None) -> Comparison:
    """The cell's comparison in ``space_name`` (default eval.feature_space), built once and shared."""
    opts = FidelityOptions.from_ctx(ctx)
    name = space_name or opts.feature_space
    memo = _memo(ctx)
    key = ("comparison", name, opts.fid_backend)
    if key not in memo:
        target = getattr(ctx.evaluator, "target", None)
        if target is None:
            raise MetricError("image metrics need evaluator.target (the unbiased target images in [-1, 1])")
        memo[key] = Comparison(ctx.samples, target, space_for(ctx, opts, name), opts, cache_dir_of(ctx))
    return memo[key]


def image_metrics(ctx: EvalContext, space_name: str | None = None) -> dict[str, Any]:
    """All of FD/KID/PR for the cell (each metric class computes only its own)."""
    c = comparison(ctx, space_name)
    (kid, kid_std), (precision, recall) = c.kid(), c.precision_recall()
    return {"fd": c.fd(), "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall,
            "kid_subset_size": c.kid_size, **c.info}


def evaluator_fd(ctx: EvalContext) -> dict[str, Any]:
    """``fd`` on an image evaluator: the Fréchet distance in its feature space, by the chosen backend."""
    c = comparison(ctx, "evaluator")
    return {"value": c.fd(), **c.info}


class _Fidelity(Metric):
    """The metrics of this module: they import torch-fidelity and clean-fid on every dataset."""

    @classmethod
    def needs(cls, dataset) -> dict[str, str]:
        return dict(FIDELITY_MODULES)


class FID(_Fidelity):
    """Fréchet Inception distance (pool3 of the FID Inception-v3) to the unbiased target."""

    name = "fid"
    higher_is_better = False
    description = "Fréchet Inception distance to the unbiased target (torch-fidelity or clean-fid)"

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        c = comparison(ctx, "inception")
        return {"value": c.fd(), **c.info}


class KID(_Fidelity):
    """Kernel (Inception) distance, in eval.feature_space (the evaluator's features by default)."""

    name = "kid"
    higher_is_better = False
    description = "kernel distance (cubic polynomial MMD²) to the unbiased target"

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        c = comparison(ctx)
        value, std = c.kid()
        return {"value": value, "kid_std": std, "kid_subset_size": c.kid_size, "kid_subsets": c.opts.kid_subsets,
                **c.info}


class Precision(_Fidelity):
    """Fraction of generated samples inside the target's k-NN manifold (torch-fidelity)."""

    name = "precision"
    higher_is_better = True
    oracle_leads = False  # one side of fidelity: a method that drops modes can beat the oracle's
    description = "improved precision: generated samples on the target manifold"

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        c = comparison(ctx)
        return {"value": c.precision_recall()[0], "k": c.opts.prc_neighborhood, **c.info}


class Recall(_Fidelity):
    """Fraction of target samples inside the generated samples' k-NN manifold (torch-fidelity)."""

    name = "recall"
    higher_is_better = True
    oracle_leads = False  # one side of fidelity: over-dispersed samples can beat the oracle's
    description = "improved recall: target covered by the generated samples"

    def __call__(self, ctx: EvalContext) -> dict[str, Any]:
        c = comparison(ctx)
        return {"value": c.precision_recall()[1], "k": c.opts.prc_neighborhood, **c.info}


# -- precomputing the reference statistics (`tiwbench stats`) ----------------------------------------

METRIC_SPACES = {"fd": "evaluator", "fid": "inception"}  # kid, precision, recall: eval.feature_space


def precompute_references(evaluator, options: dict[str, Any], metrics: list[str],
                          cache_dir: Path | None) -> list[dict[str, Any]]:
    """Extract and cache the target's reference features for every feature space ``metrics`` use, as a
    run with these eval ``options`` would; one entry (space, status, path, variant) per space."""
    ctx = EvalContext(samples=torch.empty(0), evaluator=evaluator, options=options,
                      cache_dir=str(cache_dir) if cache_dir is not None else None)
    opts = FidelityOptions.from_ctx(ctx)
    spaces = []
    for m in metrics:
        name = METRIC_SPACES.get(m, opts.feature_space if m in ("kid", "precision", "recall") else None)
        if name is not None and name not in spaces:
            spaces.append(name)
    out = []
    for name in spaces:
        if name == "inception" and opts.fid_ref_stats:
            ref = load_published_stats(opts.fid_ref_stats)
            out.append({"space": name, "status": "published", "path": ref["path"],
                        "variant": variant(space_for(ctx, opts, name), opts.fid_backend, ref, None)})
            continue
        space = space_for(ctx, opts, name)
        ref = reference_features(evaluator.target, space, opts.fid_backend, cache_dir, opts.fid_ref_samples,
                                 opts.seed, opts.fid_batch_size)
        out.append({"space": name, "status": ref["status"], "path": ref["path"],
                    "variant": variant(space, opts.fid_backend, ref, len(ref["features"]))})
    return out
