"""One generic registry: aliases, lazy ``module:object`` entries, entry points, base-class check."""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or conflicting name; the message names the fix."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def _load(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Name -> object, where the object may be a lazy ``"module:object"`` string until first use."""

    def __init__(self, kind: str, base_cls: type | str | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self.base_cls = base_cls
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._entry_points_loaded = False

    # -- registration ---------------------------------------------------------------------
    def register(self, name: str, obj: Any = None, *, aliases: tuple[str, ...] = (), origin: str = "builtin"):
        """Register ``obj`` (or use as a decorator when ``obj`` is None)."""
        if obj is None:
            def deco(o):
                self.register(name, o, aliases=aliases, origin=origin)
                return o
            return deco
        for n in (name, *aliases):
            taken = n in self._entries or n in self._aliases
            if taken and self._resolve_name(n) != name:
                raise RegistryError(f"{self.kind} name {n!r} is already registered; choose another name")
        if name in self._entries and not isinstance(self._entries[name], str) and self._entries[name] is not obj:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered ({self._origin[name]}); choose another name")
        self._entries[name] = obj
        self._origin[name] = origin
        for a in aliases:
            self._aliases[a] = name
        return obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._entries:
                self._entries[ep.name] = ep.value
                self._origin[ep.name] = f"entry point {ep.value}"

    # -- lookup ---------------------------------------------------------------------------
    def _resolve_name(self, name: str) -> str:
        return self._aliases.get(name, name)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return self._resolve_name(name) in self._entries

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origin[self._resolve_name(name)]

    def get(self, name: str) -> T:
        self._load_entry_points()
        key = self._resolve_name(name)
        if key not in self._entries:
            raise RegistryError(self.unknown_message(name))
        obj = self._entries[key]
        if isinstance(obj, str):
            obj = _load(obj)
            self._entries[key] = obj
        if isinstance(self.base_cls, str):  # lazy, so that registries import nothing heavy
            self.base_cls = _load(self.base_cls)
        if self.base_cls is not None:
            ok = isinstance(obj, self.base_cls) or (isinstance(obj, type) and issubclass(obj, self.base_cls))
            if not ok:
                raise RegistryError(
                    f"{self.kind} {key!r} ({self._origin[key]}) is not a {self.base_cls.__name__}; "
                    f"make it subclass {self.base_cls.__module__}.{self.base_cls.__name__}"
                )
        return obj

    def unknown_message(self, name: str) -> str:
        known = self.names() + sorted(self._aliases)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return (f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names())} "
                f"(see `tiwbench ls {self.kind}s`)")


# The project's registries. Built-ins are lazy strings, so `tiwbench ls` imports nothing heavy;
# methods also come from the entry-point group `tiwbench.methods` (that is how the baselines arrive).
METHODS: Registry = Registry("method", "tiwbench.training.methods:Method", entry_point_group="tiwbench.methods")
DATASETS: Registry = Registry("dataset", "tiwbench.data.base:BiasedDataset", entry_point_group="tiwbench.datasets")
METRICS: Registry = Registry("metric", "tiwbench.metrics.base:Metric", entry_point_group="tiwbench.metrics")
# Density-ratio estimators (tiwbench/ratios/estimators.py); `learned` is the discriminator's older name.
RATIOS: Registry = Registry("ratio", "tiwbench.ratios.estimators:RatioEstimator", entry_point_group="tiwbench.ratios")
# Perturbation kernels (tiwbench/diffusion/kernels.py): s(t), σ(t), training noise, preconditioning, steps.
KERNELS: Registry = Registry("kernel", "tiwbench.diffusion.kernels:Kernel", entry_point_group="tiwbench.kernels")
# Generator families (tiwbench/training/families.py): how a method's model trains and samples; a method
# names its family (Method.family), the runner asks this registry.
FAMILIES: Registry = Registry("family", "tiwbench.training.families:Family", entry_point_group="tiwbench.families")

METHODS.register("tiw_dsm", "tiwbench.training.methods:TIWDSM")
# the gan and vae families (METHOD.md §9); built in, since they need the families' code, not only a loss
METHODS.register("gan_ref", "tiwbench.training.gan:GANRef")
METHODS.register("gan_obs", "tiwbench.training.gan:GANObs")
METHODS.register("gan_noise_obs", "tiwbench.training.gan:GANNoiseObs")
METHODS.register("iw_gan", "tiwbench.training.gan:IWGAN", aliases=("gan_iw",))
METHODS.register("iw_gan_noise", "tiwbench.training.gan:IWGANNoise")
METHODS.register("tiw_gan", "tiwbench.training.gan:TIWGAN", aliases=("gan_tiw",))
METHODS.register("vae_ref", "tiwbench.training.vae:VAERef")
METHODS.register("vae_obs", "tiwbench.training.vae:VAEObs")
METHODS.register("iw_vae", "tiwbench.training.vae:IWVAE", aliases=("vae_iw",))
DATASETS.register("toy2d", "tiwbench.data.mixtures:Toy2D")
DATASETS.register("gmm", "tiwbench.data.gmm:GMM")
DATASETS.register("gmm_tilt", "tiwbench.data.gmm:GMMTilt")
DATASETS.register("digits_lt", "tiwbench.data.digits:DigitsLT")
DATASETS.register("cifar10_lt", "tiwbench.data.cifar10:CIFAR10LT")
DATASETS.register("ffhq_gender", "tiwbench.data.ffhq:FFHQGender")
RATIOS.register("exact", "tiwbench.ratios.estimators:Exact")
RATIOS.register("exact_empirical", "tiwbench.ratios.estimators:ExactEmpirical")
RATIOS.register("fitted_family", "tiwbench.ratios.fitted:FittedFamily")
RATIOS.register("label_shift", "tiwbench.ratios.label_shift:LabelShift")
RATIOS.register("class_posterior", "tiwbench.ratios.label_shift:ClassPosterior")
RATIOS.register("label_shift_disc", "tiwbench.ratios.label_shift:LabelShiftDiscriminator")
RATIOS.register("discriminator", "tiwbench.ratios.estimators:Discriminator", aliases=("learned",))
RATIOS.register("discriminator_precond", "tiwbench.ratios.estimators:PrecondDiscriminator")
RATIOS.register("discriminator_smooth", "tiwbench.ratios.estimators:SmoothDiscriminator")
RATIOS.register("denoiser_diff", "tiwbench.ratios.estimators:DenoiserDifference")
RATIOS.register("dlsm", "tiwbench.ratios.estimators:DLSM")
RATIOS.register("trunk", "tiwbench.ratios.remedies:Trunk")
RATIOS.register("dlsm_trunk", "tiwbench.ratios.remedies:TrunkDLSM")
RATIOS.register("discriminator_ensemble", "tiwbench.ratios.remedies:DiscriminatorEnsemble")
RATIOS.register("discriminator_gated", "tiwbench.ratios.remedies:GatedDiscriminator")
RATIOS.register("dlsm_gated", "tiwbench.ratios.remedies:GatedDLSM")
RATIOS.register("trunk_gated", "tiwbench.ratios.remedies:GatedTrunk")
RATIOS.register("dlsm_trunk_gated", "tiwbench.ratios.remedies:GatedDLSMTrunk")
KERNELS.register("edm", "tiwbench.diffusion.kernels:EDM")
KERNELS.register("vp", "tiwbench.diffusion.kernels:VP")
KERNELS.register("subvp", "tiwbench.diffusion.kernels:SubVP")
KERNELS.register("ve", "tiwbench.diffusion.kernels:VE")
KERNELS.register("rf", "tiwbench.diffusion.kernels:RF")
FAMILIES.register("score", "tiwbench.training.families:ScoreNetwork")
FAMILIES.register("gan", "tiwbench.training.gan:GAN")
FAMILIES.register("vae", "tiwbench.training.vae:VAE")
METRICS.register("fd", "tiwbench.metrics.fd:FD")
METRICS.register("bias", "tiwbench.metrics.base:Bias")
METRICS.register("memorized", "tiwbench.metrics.memorization:Memorized")
METRICS.register("tilt_shift", "tiwbench.metrics.tilt:TiltShift")
METRICS.register("bias_ref_level", "tiwbench.metrics.ref_levels:BiasRefLevel")
METRICS.register("bias_ref", "tiwbench.metrics.ref_levels:BiasRef")
METRICS.register("fd_ref_level", "tiwbench.metrics.ref_levels:FDRefLevel")
METRICS.register("fid", "tiwbench.metrics.fidelity:FID")  # ↓, direction from the class
METRICS.register("kid", "tiwbench.metrics.fidelity:KID")  # ↓
METRICS.register("precision", "tiwbench.metrics.fidelity:Precision")  # ↑
METRICS.register("recall", "tiwbench.metrics.fidelity:Recall")  # ↑
