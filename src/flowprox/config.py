"""Experiment configuration: frozen dataclasses loaded from TOML files with ``--set`` overrides.

A config file has one table per section (``[model]``, ``[data]``, ``[train]``) plus top-level
keys; ``--set train.lr=1e-4`` overrides a single value (parsed as a TOML value, so strings need no
quotes unless they look like numbers). Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

T = TypeVar("T")

_DEVICE = re.compile(r"(cpu|cuda(:[0-9]+)?)")
_MAX_INT = 2**62  # counts and sizes beyond this are mistakes (and overflow torch's int64)
_MAX_SEED = 2**63 - 1


def check_device(name: str) -> str:
    """``name`` if it is ``cpu``, ``cuda`` or ``cuda:N``; else a ValueError naming the forms.

    The one check of a device name: the command line's ``--device`` and ``train.device`` use it
    (whether CUDA is there is checked when the run starts, ``training.distributed``).
    """
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise ValueError(f"device {name!r} is not one of cpu, cuda or cuda:N (e.g. cuda:0).")
    return name


Rule = tuple[Callable[[Any], bool], str]


def _count(low: int = 1, high: int = _MAX_INT) -> Rule:
    def ok(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return (
        ok,
        f"a whole number >= {low}" if high == _MAX_INT else f"a whole number in {low}..{high}",
    )


def _number(
    low: float = 0.0, high: float = math.inf, positive: bool = False, below: bool = False
) -> Rule:
    def ok(value: Any) -> bool:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            return False
        above_low = value > low if positive else value >= low
        under_high = value < high if below else value <= high
        return above_low and under_high

    lower = f"> {low:g}" if positive else f">= {low:g}"
    if high == math.inf:
        return ok, f"a finite number {lower}"
    return ok, f"a finite number {lower} and {'<' if below else '<='} {high:g}"


def _finite() -> Rule:
    def ok(value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )

    return ok, "a finite number"


def _one_of(*choices: str) -> Rule:
    return (lambda value: value in choices), f"one of {', '.join(map(repr, choices))}"


def _device() -> Rule:
    return (lambda value: isinstance(value, str) and bool(_DEVICE.fullmatch(value))), (
        "'cpu', 'cuda' or 'cuda:N'"
    )


def _validate(config: Any, section: str, rules: dict[str, Rule]) -> None:
    """Raise a ValueError naming the first field of ``config`` that breaks its rule and how to
    change it."""
    for name, (ok, requirement) in rules.items():
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        if all(ok(v) for v in values):
            continue
        label = f"{section}.{name}" if section else name
        raise ValueError(
            f"{label} must be {requirement}, got {value!r}; change it (--set {label}=VALUE or "
            "the config file)."
        )


@dataclass(frozen=True)
class GlowConfig:
    """Architecture of the Glow prior (see ``flows.Glow``)."""

    in_channels: int = 3
    levels: int = 3
    steps_per_level: int = 8
    hidden: int = 128
    image_size: int = 32
    additive: bool = False
    seed: int = 0
    #: lower bound of the affine couplings' scales; bounds the inverse's amplification by 1/floor
    scale_floor: float = 0.0
    #: bound of the split and top priors' log standard deviations (0: none); their inverses then
    #: scale by at most exp(bound) on any input
    log_sd_bound: float = 0.0

    def __post_init__(self) -> None:
        _validate(self, "model", {
            "in_channels": _count(), "levels": _count(1, 16), "steps_per_level": _count(),
            "hidden": _count(), "image_size": _count(), "seed": _count(0, _MAX_SEED),
            "scale_floor": _number(0.0, 1.0, below=True), "log_sd_bound": _number(),
        })  # fmt: skip


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared.

    ``path`` is a ``.npz`` file (arrays ``train``/``val``/``test`` of uint8 ``(N, H, W, 3)``),
    several ``.npz`` files separated by commas (their ``train`` arrays are concatenated), a
    directory holding such files, or a folder of images (split by ``split_sizes``).
    """

    path: str = ""
    resolution: int = 32
    split_sizes: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    num_workers: int = 0
    strict: bool = False
    max_train_images: int = 0

    def __post_init__(self) -> None:
        _validate(self, "data", {
            "resolution": _count(), "split_sizes": _number(), "split_seed": _count(0, _MAX_SEED),
            "num_workers": _count(0, 1024), "max_train_images": _count(0),
        })  # fmt: skip


@dataclass(frozen=True)
class PretrainConfig:
    """Maximum-likelihood pre-training of the prior."""

    n_bits: int = 8
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    warmup_steps: int = 200
    lr_schedule: str = "constant"
    final_lr_fraction: float = 0.0
    max_steps: int = 2000
    time_limit_minutes: float = 0.0
    grad_clip: float = 50.0
    init_batch_size: int = 256
    eval_every: int = 500
    checkpoint_every: int = 200
    log_every: int = 20
    max_bad_steps: int = 10
    max_restores: int = 3
    eval_batch_size: int = 256
    val_images: int = 0
    device: str = "cpu"
    # Noise-augmented pre-training (0 = off): the flow learns the density of the dequantised
    # image plus Gaussian noise of a level drawn uniformly from [0, noise_sigma_max] per image,
    # a smoothed density whose support holds the noisy images the GLOW prox is fed.
    noise_sigma_max: float = 0.0
    # The share of each batch's images that get that noise (the rest stay clean): the flow then
    # learns the mixture (1 - p) p_clean + p p_noisy, which on a clean image loses at most
    # log2(1 / (1 - p)) bits against its clean component (1.0: every image, as before).
    noise_fraction: float = 1.0

    def __post_init__(self) -> None:
        _validate(self, "train", {
            "n_bits": _count(1, 8), "batch_size": _count(), "lr": _number(positive=True),
            "optimizer": _one_of("adam", "adamax"), "warmup_steps": _count(0),
            "lr_schedule": _one_of("constant", "cosine"), "final_lr_fraction": _number(0, 1),
            "max_steps": _count(), "time_limit_minutes": _number(), "grad_clip": _number(),
            "init_batch_size": _count(), "eval_every": _count(), "checkpoint_every": _count(),
            "log_every": _count(), "max_bad_steps": _count(), "max_restores": _count(0),
            "eval_batch_size": _count(), "val_images": _count(0), "device": _device(),
            "noise_fraction": _number(0, 1),
        })  # fmt: skip


@dataclass(frozen=True)
class PriorExperiment:
    """Everything that defines a prior pre-training run."""

    name: str = "prior"
    seed: int = 0
    model: GlowConfig = field(default_factory=GlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        _validate(self, "", {"seed": _count(0, _MAX_SEED)})


@dataclass(frozen=True)
class TaskConfig:
    """A linear inverse problem ``y = A x + n`` (DESIGN.md section 1, the paper's three tasks).

    ``kind`` is ``"denoise"`` (``A = I``), ``"inpaint"`` (centre ``window x window`` hole),
    ``"inpaint-random"`` (``fraction_missing`` of the pixels, a fixed mask drawn from
    ``mask_seed``) or ``"deblur"`` (Gaussian ``sigma_b``; ``kernel_size`` 0 means the full
    ``2 ceil(3 sigma_b) + 1`` support; ``boundary`` ``"circular"`` or ``"zero"``). ``sigma_n`` is
    the measurement noise of every task. The ``ood_*`` values give the out-of-distribution
    measurement setting of Table III (0 or a negative noise level keeps the trained value).
    Beyond the paper: ``"super-resolution"`` (block means of ``factor x factor`` pixels),
    ``"compressed-sensing"`` (a ``ratio`` of randomly signed 2-D DCT coefficients, drawn from
    ``seed``) and ``"mri"`` (Cartesian k-space lines at ``acceleration``, the centre's
    ``center_fraction`` always, the rest drawn from ``seed``), with ``ood_*`` variants.
    """

    kind: str = "denoise"
    sigma_n: float = 0.0
    window: int = 0
    fraction_missing: float = 0.5
    mask_seed: int = 0
    sigma_b: float = 0.0
    kernel_size: int = 0
    boundary: str = "circular"
    ood_sigma_n: float = -1.0
    ood_window: int = 0
    ood_sigma_b: float = 0.0
    factor: int = 0
    ood_factor: int = 0
    ratio: float = 0.0
    ood_ratio: float = 0.0
    acceleration: float = 0.0
    ood_acceleration: float = 0.0
    center_fraction: float = 0.08
    seed: int = 0

    def __post_init__(self) -> None:
        _validate(self, "task", {
            "sigma_n": _number(), "window": _count(0),
            "fraction_missing": _number(0, 1, below=True), "mask_seed": _count(0, _MAX_SEED),
            "sigma_b": _number(), "kernel_size": _count(0),
            "boundary": _one_of("circular", "zero"), "ood_sigma_n": _finite(),
            "ood_window": _count(0), "ood_sigma_b": _number(), "factor": _count(0),
            "ood_factor": _count(0), "ratio": _number(0, 1), "ood_ratio": _number(0, 1),
            "acceleration": _number(), "ood_acceleration": _number(),
            "center_fraction": _number(0, 1), "seed": _count(0, _MAX_SEED),
        })  # fmt: skip


class ProxKind(str, Enum):
    """The prox of an unrolled network: ``glow`` (untied fine-tuned flows, the proposed
    method), ``pnp-glow`` (the pre-trained flow, frozen and shared: plug-and-play), or a CNN
    (``resnet``, Mardani et al.; ``unet``). Equal to its value as a string."""

    GLOW = "glow"
    PNP_GLOW = "pnp-glow"
    RESNET = "resnet"
    UNET = "unet"

    @classmethod
    def flows(cls) -> tuple[ProxKind, ...]:
        """The kinds whose prox is a flow."""
        return (cls.GLOW, cls.PNP_GLOW)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """Every kind's name, as the command line spells it."""
        return tuple(kind.value for kind in cls)

    @property
    def label(self) -> str:
        """The method's name in tables."""
        return {
            "glow": "GLOW prox",
            "pnp-glow": "GLOW plug-and-play",
            "resnet": "ResNet prox",
            "unet": "U-Net prox",
        }[self.value]


MEMORY_SAVING = ("auto", "on", "off")
#: ``model.network_precision`` (resolved on a device by ``utils.precision``, which lists the
#: same values; tests/test_precision.py checks they agree)
NETWORK_PRECISION_VALUES = ("float32", "bfloat16", "auto")


@dataclass(frozen=True)
class UnrolledModelConfig:
    """The unrolled network around one kind of prox (paper section III-B and V-C).

    ``prox``: a ``ProxKind`` value (for ``pnp-glow`` only the step parameters train).
    ``data_step``: ``"proximal"`` (the exact data prox with a learned ``rho_k``, half-quadratic
    splitting) or ``"gradient"`` (paper eq. 8 with a learned ``mu_k``). ``final``: ``"prox"``
    (the last fold has a learned prox of its own) or ``"data-step"`` (the output is the last
    data step, eq. 12 as we read it); every prox kind honours both alike.
    ``rho_init = 0`` means the rule ``max((sigma_n / rho_prox_sigma)^2, rho_floor)``: the data
    step then hands the prox an image whose noise is about ``rho_prox_sigma`` (DPIR's rule
    ``rho = sigma_n^2 / sigma_k^2``), with a floor for noise-free tasks. ``mu_init = 0`` means
    ``1 / (||A||^2 (1 + rho_0))`` with that ``rho_0``: the gradient step with the same effect on
    the noise. Both keep a share of their input, so no fold is dead (docs/DESIGN.md).
    ``memory_saving`` (flow proxes): ``"on"`` recomputes the flows' activations by inversion in
    backward (memory independent of depth, about 1.5x the time), ``"off"`` keeps them, ``"auto"``
    turns it on when the measured activation memory of a training step exceeds
    ``memory_budget_gb`` (``models.unrolled.uses_memory_saving``); ``true``/``false`` read as
    on/off.
    ``initial_estimate`` ``"auto"`` is the prior's mode ``g_0(0)`` for every prox kind (zeros
    for a CNN trained without a prior); ``"adjoint"`` (``A^T y``) and ``"zeros"`` on request.
    ``network_precision``: ``"float32"``, or ``"bfloat16"`` to run the coupling networks of the
    flows and the CNN proxes in bfloat16 autocast (``models.precision``; the 1x1 convolutions,
    the split priors and every log-determinant stay float32); ``"auto"``: bfloat16 where the
    device computes it natively (``utils.precision``), float32 elsewhere.
    """

    prox: str = ProxKind.GLOW.value
    num_folds: int = 4
    mu_init: float = 0.0
    lambda_init: float = 0.1
    shrinkage: str = "gaussian"
    tied: bool = False
    memory_saving: bool | str = "auto"
    memory_budget_gb: float = 2.0
    initial_estimate: str = "auto"
    resnet_features: int = 128
    resnet_blocks: int = 2
    unet_base: int = 64
    unet_depth: int = 4
    data_step: str = "proximal"
    final: str = "prox"
    rho_init: float = 0.0
    rho_prox_sigma: float = 0.1
    rho_floor: float = 1e-11
    network_precision: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.memory_saving, bool):  # older configs and checkpoints: true/false
            object.__setattr__(self, "memory_saving", "on" if self.memory_saving else "off")
        _validate(self, "model", {
            "prox": _one_of(*ProxKind.values()), "num_folds": _count(1, 1000),
            "mu_init": _number(), "lambda_init": _number(), "resnet_features": _count(),
            "resnet_blocks": _count(0), "unet_base": _count(), "unet_depth": _count(1, 16),
            "memory_saving": _one_of(*MEMORY_SAVING), "memory_budget_gb": _number(positive=True),
            "network_precision": _one_of(*NETWORK_PRECISION_VALUES),
        })  # fmt: skip


@dataclass(frozen=True)
class UnrolledTrainConfig:
    """End-to-end MSE training of the unrolled network (DESIGN.md section 1).

    Adam with ``lr`` for the prox networks and ``lr_step`` for ``mu_k``, ``lambda_k``. With
    ``likelihood_weight`` beta > 0 the loss adds beta times the mean bits/dim that each fold's
    flow gives the clean training batch, so the fine-tuned flows stay density models of clean
    images (the paper's future work, section VII). Fresh
    noise for every training batch (drawn from ``(seed, step)``); validation and test
    measurements come from ``measurement_seed`` so every method sees identical inputs.
    Early stopping after ``early_stopping_patience`` evaluations without a lower val loss;
    with ``stop_when_flat``, also once ``flat_min_steps`` are done and the best val PSNR gained
    less than 0.1 dB over the last 20% of the steps (``training.plateau``). The gradient's
    norm is clipped at ``grad_clip`` (0: never): typical norms of the ``small`` proxes are
    0.04-0.2, but one batch that nearly overflows a flow's inverse gave 1.8e5, and without the
    clip a single such step fills Adam's second moments for hundreds of steps and can break the
    flows (README "Presets").
    """

    batch_size: int = 16
    lr: float = 1e-5
    lr_step: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_steps: int = 2000
    time_limit_minutes: float = 0.0
    eval_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    grad_clip: float = 1.0
    max_bad_steps: int = 10
    max_restores: int = 3
    early_stopping_patience: int = 5
    #: beta of ``MSE + beta * mean over the folds' flows of their bits/dim on the clean batch``
    likelihood_weight: float = 0.0
    stop_when_flat: bool = False
    flat_min_steps: int = 0
    val_images: int = 256
    eval_batch_size: int = 64
    measurement_seed: int = 1234
    device: str = "cpu"

    def __post_init__(self) -> None:
        _validate(self, "train", {
            "batch_size": _count(), "lr": _number(positive=True), "lr_step": _number(),
            "betas": _number(0, 1, below=True), "eps": _number(positive=True),
            "max_steps": _count(), "time_limit_minutes": _number(), "eval_every": _count(),
            "checkpoint_every": _count(), "log_every": _count(), "grad_clip": _number(),
            "max_bad_steps": _count(), "max_restores": _count(0),
            "early_stopping_patience": _count(0), "flat_min_steps": _count(0),
            "likelihood_weight": _number(),
            "val_images": _count(0),
            "eval_batch_size": _count(), "measurement_seed": _count(0, _MAX_SEED),
            "device": _device(),
        })  # fmt: skip


@dataclass(frozen=True)
class UnrolledExperiment:
    """Everything that defines a task-training run (``flowprox train``).

    ``prior`` is the pre-trained prior checkpoint (needed by the flow proxes and for
    ``x_0 = g_0(0)``); ``init_from`` an optional checkpoint of the same prox trained on another
    task (a pre-trained denoiser) whose prox weights start this run. ``prior_model`` records the
    prior's architecture so a checkpoint can be rebuilt without the prior file.
    """

    name: str = "unrolled"
    seed: int = 0
    prior: str = ""
    init_from: str = ""
    task: TaskConfig = field(default_factory=TaskConfig)
    model: UnrolledModelConfig = field(default_factory=UnrolledModelConfig)
    prior_model: GlowConfig = field(default_factory=GlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: UnrolledTrainConfig = field(default_factory=UnrolledTrainConfig)

    def __post_init__(self) -> None:
        _validate(self, "", {"seed": _count(0, _MAX_SEED)})


def _build(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Instantiate dataclass ``cls`` from a (nested) dict, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in [{where}]; valid keys are {sorted(fields)}.")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in values.items():
        default = getattr(defaults, name)
        label = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ValueError(f"[{label}] must be a table of settings, got {value!r}.")
            kwargs[name] = _build(type(default), value, label)
        elif isinstance(value, bool) and "bool" in str(fields[name].type):
            kwargs[name] = value  # a field that takes a flag or a word (normalised by the class)
        else:
            kwargs[name] = _coerce(value, default, label)
    return cls(**kwargs)


def _coerce(value: Any, default: Any, label: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be true or false, got {value!r}.")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{label} must be an integer, got {value!r}.")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{label} must be a number, got {value!r}.")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) != len(default):
            raise ValueError(f"{label} must be a list of {len(default)} values, got {value!r}.")
        return tuple(_coerce(v, d, label) for v, d in zip(value, default, strict=True))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"{label} must be a string, got {value!r}.")
        return value
    return value


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value, e.g. train.lr=1e-4.")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string such as a path
    return key.strip().split("."), value


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return ``values`` with each ``a.b=value`` of ``overrides`` set (nested dicts copied)."""
    result = _deep_copy(values)
    for text in overrides:
        path, value = _parse_override(text)
        table = result
        for part in path[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ValueError(f"override {text!r}: {part} is not a section.")
        table[path[-1]] = value
    return result


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def config_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build the config dataclass ``cls`` from a nested dict (as read from TOML)."""
    return _build(cls, values, "")


PRESETS = ("tiny", "small", "paper")


def preset_path(kind: str, preset: str) -> Path:
    """The packaged preset ``presets/<kind>-<preset>.toml`` (kind ``prior`` or ``unrolled``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}.")
    return Path(__file__).resolve().parent / "presets" / f"{kind}-{preset}.toml"


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read a TOML config file (or start from defaults) and apply ``--set`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"config file {path} not found; pass --preset tiny|small|paper or a path to "
                "your own TOML file (the presets are in flowprox/presets/)."
            )
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"config file {path} is not valid TOML: {error}") from error
    return config_from_dict(cls, apply_overrides(values, overrides))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A nested dict of plain values (tuples as lists), ready for TOML or a checkpoint."""
    return _plain(dataclasses.asdict(config))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def to_toml(values: dict[str, Any]) -> str:
    """Serialise a nested dict of plain values as TOML (top-level keys first, then tables)."""
    lines: list[str] = []
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key, value in values.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        for key, value in table.items():
            if isinstance(value, dict):
                raise ValueError(f"nested table {name}.{key} is not supported in to_toml.")
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML.")
