"""Typed config of the Real-ESRGAN second-order degradation: one dataclass tree, two named presets.

Owns the schema, defaults (the StableSR preset), validation and dict/yaml loading; sampling lives in
``realesrgan.py``. Key names are the ones Real-ESRGAN's and StableSR's option files use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, fields
from typing import Any, ClassVar, Literal, get_args

KernelType = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_TYPES: tuple[str, ...] = get_args(KernelType)
Degradation = Literal["bicubic", "bicubic_matlab", "realesrgan"]
"""How LR images are made from HR ones: torch's antialiased bicubic, MATLAB ``imresize`` bicubic, or Real-ESRGAN."""
PresetName = Literal["stablesr", "realesrgan"]
MAX_KERNEL_SIZE = 21
_PROB_TOLERANCE = 1e-6


@dataclass
class DegradationStageConfig:
    """One degradation stage: blur, random resize, noise, JPEG (yaml key ``degradation.stage1``)."""

    kernel_list: list[KernelType] = field(default_factory=lambda: list(KERNEL_TYPES))
    """Blur kernel types drawn when the kernel is not a sinc; paired with ``kernel_prob``."""
    kernel_prob: list[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    """Probability of each entry of ``kernel_list``; must sum to 1."""
    kernel_size_range: tuple[int, int] = (7, 21)
    """Odd kernel sizes drawn uniformly from [low, high], both odd, 3 <= size <= 21; kernels are zero-padded to 21."""
    sinc_prob: float = 0.1
    """Probability that the blur kernel is a circular low-pass (sinc) kernel instead of a Gaussian-family one."""
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    """Range of the Gaussian standard deviations sigma_x, sigma_y, in pixels."""
    betag_range: tuple[float, float] = (0.5, 2.0)
    """Shape beta of generalized Gaussian kernels: U[low, 1] or U[1, high] with p 0.5 each."""
    betap_range: tuple[float, float] = (1.0, 1.5)
    """Shape beta of plateau kernels: U[low, 1] or U[1, high] with p 0.5 each."""
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)
    """Probabilities of resizing up, down, or keeping the size; must sum to 1."""
    resize_range: tuple[float, float] = (0.3, 1.5)
    """Resize factor: U[1, high] when up, U[low, 1] when down."""
    gaussian_noise_prob: float = 0.5
    """Probability of Gaussian noise; Poisson noise otherwise."""
    noise_range: tuple[float, float] = (1.0, 15.0)
    """Gaussian noise standard deviation on the 0-255 scale."""
    poisson_scale_range: tuple[float, float] = (0.05, 2.0)
    """Multiplier of the Poisson (shot) noise."""
    gray_noise_prob: float = 0.4
    """Probability that the noise is gray (one channel shared by R, G and B)."""
    jpeg_range: tuple[float, float] = (60.0, 95.0)
    """JPEG quality, 0-100."""

    yaml_key: ClassVar[str] = "degradation.stage1"
    key: InitVar[str | None] = None
    """Where this config lives in the user's yaml (default ``yaml_key``): validation errors name ``key.<field>``."""

    def __post_init__(self, key: str | None) -> None:
        _coerce_tuples(self)
        self.validate(key or self.yaml_key)

    def validate(self, key: str) -> None:
        """Raise ValueError naming ``key.<field>`` for the first invalid value."""
        _check_choices(f"{key}.kernel_list", list(self.kernel_list), KERNEL_TYPES)
        if len(self.kernel_prob) != len(self.kernel_list):
            raise ValueError(
                f"{key}.kernel_prob: {len(self.kernel_prob)} probabilities for {len(self.kernel_list)} kernel types"
            )
        _check_distribution(f"{key}.kernel_prob", self.kernel_prob)
        _check_kernel_sizes(f"{key}.kernel_size_range", self.kernel_size_range)
        _check_probability(f"{key}.sinc_prob", self.sinc_prob)
        _check_range(f"{key}.blur_sigma", self.blur_sigma, minimum=0.0, strict_minimum=True)
        _check_range(f"{key}.betag_range", self.betag_range, minimum=0.0, strict_minimum=True, around=1.0)
        _check_range(f"{key}.betap_range", self.betap_range, minimum=0.0, strict_minimum=True, around=1.0)
        _check_distribution(f"{key}.resize_prob", self.resize_prob, length=3)
        _check_range(f"{key}.resize_range", self.resize_range, minimum=0.0, strict_minimum=True, around=1.0)
        _check_probability(f"{key}.gaussian_noise_prob", self.gaussian_noise_prob)
        _check_range(f"{key}.noise_range", self.noise_range, minimum=0.0)
        _check_range(f"{key}.poisson_scale_range", self.poisson_scale_range, minimum=0.0)
        _check_probability(f"{key}.gray_noise_prob", self.gray_noise_prob)
        _check_range(f"{key}.jpeg_range", self.jpeg_range, minimum=1.0, maximum=100.0)


@dataclass
class SecondStageConfig(DegradationStageConfig):
    """The second stage (yaml key ``degradation.stage2``): optional blur, resize relative to the final LR size;
    its ``jpeg_range`` is used by the final JPEG step. Defaults are StableSR's ``*2`` options."""

    kernel_size_range: tuple[int, int] = (7, 11)
    """Odd kernel sizes drawn uniformly from [low, high], both odd, 3 <= size <= 21; kernels are zero-padded to 21."""
    blur_sigma: tuple[float, float] = (0.2, 1.0)
    """Range of the Gaussian standard deviations sigma_x, sigma_y, in pixels."""
    resize_prob: tuple[float, float, float] = (0.3, 0.4, 0.3)
    """Probabilities of resizing up, down, or keeping the size; must sum to 1."""
    resize_range: tuple[float, float] = (0.6, 1.2)
    """Resize factor relative to the final LR size: U[1, high] when up, U[low, 1] when down."""
    noise_range: tuple[float, float] = (1.0, 12.0)
    """Gaussian noise standard deviation on the 0-255 scale."""
    poisson_scale_range: tuple[float, float] = (0.05, 1.0)
    """Multiplier of the Poisson (shot) noise."""
    jpeg_range: tuple[float, float] = (60.0, 100.0)
    """JPEG quality of the final JPEG step, 0-100."""
    second_blur_prob: float = 0.5
    """Probability of blurring in the second stage."""

    yaml_key: ClassVar[str] = "degradation.stage2"

    def validate(self, key: str) -> None:
        """Raise ValueError naming ``key.<field>`` for the first invalid value."""
        super().validate(key)
        _check_probability(f"{key}.second_blur_prob", self.second_blur_prob)


@dataclass
class RealESRGANConfig:
    """Real-ESRGAN second-order degradation (yaml key ``degradation``); defaults are the StableSR preset."""

    stage1: DegradationStageConfig = field(default_factory=DegradationStageConfig)
    """First degradation, applied at HR resolution."""
    stage2: SecondStageConfig = field(default_factory=SecondStageConfig)
    """Second degradation, applied at a size relative to each scale's LR size."""
    use_usm: bool = True
    """Sharpen the HR image with unsharp masking (radius 50, weight 0.5, threshold 10/255) before stage 1."""
    usm_target: bool = True
    """With ``use_usm``, train against the sharpened HR as well (the reference recipes: Real-ESRGAN x4plus's pixel and
    perceptual losses use the sharpened GT, StableSR sharpens its GT before degrading it); false keeps the plain HR
    as the target while the LR still comes from the sharpened one. Training batches only: validation scores against
    the plain HR."""
    final_sinc_prob: float = 0.8
    """Probability of the final sinc filter (else identity) applied with the last resize."""
    no_degradation_prob: float = 0.01
    """Probability that a sample's LR image is the plain bicubic downsample of its training target (StableSR's
    ``lq = gt``: the sharpened HR when ``use_usm`` and ``usm_target``, else the plain HR)."""

    yaml_key: ClassVar[str] = "degradation"
    key: InitVar[str | None] = None
    """Where this config lives in the user's yaml (default ``yaml_key``): validation errors name ``key.<field>``."""

    def __post_init__(self, key: str | None) -> None:
        key = key or self.yaml_key
        if isinstance(self.stage1, Mapping):
            self.stage1 = _build(DegradationStageConfig, self.stage1, f"{key}.stage1")
        if isinstance(self.stage2, Mapping):
            self.stage2 = _build(SecondStageConfig, self.stage2, f"{key}.stage2")
        _check_probability(f"{key}.final_sinc_prob", self.final_sinc_prob)
        _check_probability(f"{key}.no_degradation_prob", self.no_degradation_prob)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], key: str | None = None) -> RealESRGANConfig:
        """Build from a nested dict as parsed from yaml (missing keys keep their defaults); errors name
        ``key.<field>`` (default ``degradation``)."""
        return _build(cls, values, key or cls.yaml_key)

    @classmethod
    def from_preset(
        cls,
        name: PresetName = "stablesr",
        overrides: Mapping[str, Any] | None = None,
        key: str | None = None,
        preset_key: str | None = None,
    ) -> RealESRGANConfig:
        """Build a named preset (``stablesr`` or ``realesrgan``), then apply nested ``overrides``. Errors name the
        overrides' keys under ``key`` (default ``degradation``) and the preset as ``preset_key`` (default
        ``degradation.preset``)."""
        if name not in PRESETS:
            where = preset_key or f"{cls.yaml_key}.preset"
            raise ValueError(f"{where}: unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls.from_dict(_deep_merge(PRESETS[name], overrides or {}), key)


# Presets as nested dicts (what a yaml file would hold); `stablesr` equals the dataclass defaults. StableSR's
# option file sets blur_kernel_size2: 11, read here as the largest stage-2 kernel size (StableSR's dataset code
# ignores that key and draws 7..21; set stage2.kernel_size_range: [7, 21] to reproduce it).
PRESETS: dict[str, dict[str, Any]] = {
    "stablesr": {},
    "realesrgan": {
        "stage1": {
            "blur_sigma": (0.2, 3.0),
            "betag_range": (0.5, 4.0),
            "betap_range": (1.0, 2.0),
            "resize_range": (0.15, 1.5),
            "noise_range": (1.0, 30.0),
            "poisson_scale_range": (0.05, 3.0),
            "jpeg_range": (30.0, 95.0),
        },
        "stage2": {
            "kernel_size_range": (7, 21),
            "blur_sigma": (0.2, 1.5),
            "betag_range": (0.5, 4.0),
            "betap_range": (1.0, 2.0),
            "resize_range": (0.3, 1.2),
            "noise_range": (1.0, 25.0),
            "poisson_scale_range": (0.05, 2.5),
            "jpeg_range": (30.0, 95.0),
            "second_blur_prob": 0.8,
        },
        "no_degradation_prob": 0.0,
    },
}


def _build(cls: type, values: Mapping[str, Any], key: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested mapping, rejecting unknown keys with their yaml path."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ValueError(f"{key}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{key}.{unknown[0]}: unknown key; valid keys are {sorted(names)}")
    kwargs = dict(values)
    stage_classes = {"stage1": DegradationStageConfig, "stage2": SecondStageConfig}
    if cls is RealESRGANConfig:
        for stage, stage_cls in stage_classes.items():
            if stage in kwargs:
                kwargs[stage] = _build(stage_cls, kwargs[stage], f"{key}.{stage}")
    return cls(**kwargs, key=key)


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for name, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(name), Mapping):
            merged[name] = _deep_merge(merged[name], value)
        else:
            merged[name] = value
    return merged


def _coerce_tuples(config: DegradationStageConfig) -> None:
    """yaml gives lists; store ranges as tuples and probability lists as lists of floats."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list) and str(f.type).startswith("tuple"):
            setattr(config, f.name, tuple(value))
    config.kernel_list = list(config.kernel_list)
    config.kernel_prob = [float(p) for p in config.kernel_prob]


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key}: probability {value} is outside [0, 1]")


def _check_distribution(key: str, probs: Any, length: int | None = None) -> None:
    if length is not None and len(probs) != length:
        raise ValueError(f"{key}: expected {length} probabilities, got {len(probs)}")
    for p in probs:
        _check_probability(key, p)
    if abs(math.fsum(probs) - 1.0) > _PROB_TOLERANCE:
        raise ValueError(f"{key}: probabilities sum to {math.fsum(probs)}, not 1")


def _check_range(
    key: str,
    bounds: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
    around: float | None = None,
) -> None:
    if len(bounds) != 2:
        raise ValueError(f"{key}: expected [low, high], got {list(bounds)}")
    low, high = bounds
    if low > high:
        raise ValueError(f"{key}: low {low} > high {high}")
    if minimum is not None and (low < minimum or (strict_minimum and low == minimum)):
        raise ValueError(f"{key}: low {low} must be {'>' if strict_minimum else '>='} {minimum}")
    if maximum is not None and high > maximum:
        raise ValueError(f"{key}: high {high} must be <= {maximum}")
    if around is not None and not low <= around <= high:
        raise ValueError(f"{key}: range [{low}, {high}] must contain {around} (draws are U[low, 1] or U[1, high])")


def _check_kernel_sizes(key: str, bounds: Any) -> None:
    _check_range(key, bounds)
    for size in bounds:
        if int(size) != size or size % 2 == 0:
            raise ValueError(f"{key}: kernel size {size} must be odd")
        if not 3 <= size <= MAX_KERNEL_SIZE:
            raise ValueError(f"{key}: kernel size {size} must be in [3, {MAX_KERNEL_SIZE}]")


def _check_choices(key: str, values: list[str], allowed: tuple[str, ...]) -> None:
    if not values:
        raise ValueError(f"{key}: needs at least one kernel type")
    for value in values:
        if value not in allowed:
            raise ValueError(f"{key}: unknown kernel type {value!r}; choose from {list(allowed)}")
