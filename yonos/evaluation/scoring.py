"""The metric suite of ``yonos evaluate``: which metrics run, how each is defined (stated in every summary), which
were skipped and why, and FID over whole folders. The maths lives in ``yonos.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata

import torch
from torch import Tensor, nn

from yonos.metrics import (
    IQA_METRICS,
    FIDMode,
    GrayConvention,
    LPIPSNet,
    MissingWeightsError,
    SSIMConvention,
    build_fid,
    build_iqa_metric,
    build_lpips,
    lpips_distance,
    psnr_y,
    spectrum_distance,
    ssim_y,
)

METRICS = ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa", "spectrum", "latent_mse")
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "dists", "fid")
LOWER_IS_BETTER = {"lpips", "dists", "fid", "niqe", "spectrum", "latent"}  # column names up to their first "_"
LATENT_COLUMNS = ("latent_mse", "latent_mse_copy")
"""What ``latent_mse`` adds: the sampled z_0 and the condition z_lr, each against E(HR) (stage checkpoints only)."""
Y_METRICS = ("psnr", "ssim")
PerImageFn = Callable[[Tensor, Tensor], float]


def version(package: str) -> str:
    """Installed version of a distribution, or ``not installed``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def parse_metrics(text: str | list[str]) -> list[str]:
    """``psnr,ssim,...`` or ``all`` (or a list of names, as a config file gives them) -> the metric names, validated."""
    if isinstance(text, str):
        text = list(METRICS) if text.strip() == "all" else text.split(",")
    names = [n.strip().lower() for n in text if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics: unknown {unknown or 'empty list'}; choose from {', '.join(METRICS)} or 'all'")
    return list(dict.fromkeys(names))


@dataclass
class MetricOptions:
    """How the metrics are computed; every field is reported in the summary."""

    crop_border: int = 0
    lpips_net: LPIPSNet = "alex"
    random_lpips_backbone: bool = False
    ssim_convention: SSIMConvention = "basicsr"
    seed: int = 0
    fid_feature: nn.Module | None = None
    """A custom FID feature extractor (tests); the metric is then reported as ``fid_custom_features``."""
    fid_mode: FIDMode = "clean"
    gray: GrayConvention = "own"


@dataclass
class MetricSuite:
    """The per-image metrics and FID that could be built; ``skipped`` maps a requested metric to the reason."""

    per_image: dict[str, PerImageFn] = field(default_factory=dict)
    fid: nn.Module | None = None
    fid_name: str = "fid"
    latent: bool = False
    """Whether ``latent_mse`` was asked for (the runner scores it: it needs the model's latents, not only images)."""
    definitions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    _reference_done: bool = False
    _count: int = 0

    @property
    def names(self) -> list[str]:
        """Column names of the results, in order."""
        return [*self.per_image, *(LATENT_COLUMNS if self.latent else ()), *([self.fid_name] if self.fid is not None else [])]

    def score(self, sr: Tensor, hr: Tensor, gray: bool = False) -> dict[str, float]:
        """Every per-image metric of one SR image against its HR image, both (1, 3, H, W) in [0, 1]; the pair also
        enters the running FID of the current run. ``gray``: the HR file is one-channel, and PSNR/SSIM see it so
        (their gray convention decides how)."""
        y_hr = hr[:, :1] if gray else hr
        values = {name: fn(sr, y_hr if name in Y_METRICS else hr) for name, fn in self.per_image.items()}
        if self.fid is not None:
            fid_update(self.fid, sr, hr, reference=not self._reference_done)
            self._count += 1
        return values

    def finish_run(self) -> dict[str, float]:
        """The set-level metrics of the run scored since the last call (FID); HR statistics are kept for the next."""
        if self.fid is None:
            return {}
        value = fid_finish(self.fid, self._count)
        self._reference_done, self._count = True, 0
        return {self.fid_name: value}


def fid_update(fid: nn.Module, sr: Tensor, hr: Tensor, reference: bool = True) -> None:
    """Add one SR image (and its HR image when ``reference``) to a FID metric; (1, 3, H, W) in [0, 1]."""
    device = next((b.device for b in fid.buffers()), torch.device("cpu"))
    if reference:
        fid.update(hr.to(device), real=True)
    fid.update(sr.to(device), real=False)


def fid_finish(fid: nn.Module, count: int) -> float:
    """The FID of the images added since the last reset, then reset (HR statistics survive with
    ``reset_real_features=False``); NaN for fewer than two images, whose covariance is undefined."""
    value = float(fid.compute()) if count >= 2 else float("nan")
    fid.reset()
    return value


def folder_fid(fid: nn.Module, pairs: Iterable[tuple[Tensor, Tensor]]) -> float:
    """FID of all SR images against all HR images of ``pairs`` (sizes may differ between pairs)."""
    count = 0
    for sr, hr in pairs:
        fid_update(fid, sr, hr)
        count += 1
    return fid_finish(fid, count)


_FID_RESIZE = {
    "clean": "fid_mode clean: images resized to 299 with PIL bicubic on the 8-bit values as clean-fid and pyiqa's default "
    "'clean' mode do (then rounded to uint8 for torchmetrics), the convention of the peers' tables",
    "legacy": "fid_mode legacy: images resized to 299 by torch-fidelity (TF1-style bilinear), pyiqa's "
    "'legacy_tensorflow' mode; values differ from the clean mode's",
}
_GRAY = {
    "own": "compared on their own gray values (gray_convention own, the classic tables')",
    "rgb_y": "compared as the Y of their RGB copy (gray_convention rgb_y, 16 + 219/255 of the values)",
}


def _definitions(options: MetricOptions) -> dict[str, str]:
    y = "Y of YCbCr (ITU-R BT.601 as MATLAB rgb2ycbcr: Y = 16 + 65.481 R + 128.553 G + 24.966 B, RGB in [0, 1]) of 8-bit images"
    ssim_ref = {
        "basicsr": "BasicSR calculate_ssim(test_y_channel=True): float Y",
        "pyiqa": "pyiqa ssim(test_y_channel=True, color_space='ycbcr'): Y rounded to integers, negative c*s terms clipped",
    }[options.ssim_convention]
    backbone = f"{options.lpips_net} backbone" + (
        " with RANDOM weights (a pipeline check, not LPIPS)" if options.random_lpips_backbone else ""
    )
    return {
        "psnr": f"PSNR (dB) on the {y}, crop_border {options.crop_border}; = BasicSR calculate_psnr(test_y_channel=True) "
        f"= pyiqa psnr(test_y_channel=True, color_space='ycbcr'); gray (1-channel) HR images: {_GRAY[options.gray]}",
        "ssim": f"SSIM on the same Y, Gaussian window 11 / sigma 1.5, valid region, K1 0.01, K2 0.03, data range 255, "
        f"crop_border {options.crop_border}; convention {options.ssim_convention} ({ssim_ref})",
        "lpips": f"LPIPS v0.1, lpips {version('lpips')}, {backbone}, RGB scaled to [-1, 1], full image",
        "dists": f"DISTS, pyiqa {version('pyiqa')} ('dists'), full image",
        "fid": f"FID, all SR images vs all HR images (folder vs folder), torchmetrics {version('torchmetrics')} "
        "FrechetInceptionDistance: Inception v3 pool3 (2048-d) with torch-fidelity's weights (2015-12-05); "
        + _FID_RESIZE[options.fid_mode],
        "niqe": f"NIQE, pyiqa {version('pyiqa')} ('niqe', Y channel)",
        "musiq": f"MUSIQ, pyiqa {version('pyiqa')} ('musiq', KonIQ-10k checkpoint)",
        "maniqa": f"MANIQA, pyiqa {version('pyiqa')} ('maniqa-pipal', PIPAL checkpoint; random crops seeded with {options.seed})",
        "clipiqa": f"CLIP-IQA, pyiqa {version('pyiqa')} ('clipiqa', RN50)",
        "spectrum": "radially averaged power-spectrum distance (weight-free detail measure): mean over frequency rings "
        "of |log10 P_sr - log10 P_hr|, P the ring-averaged |FFT|^2 of the mean-free, Hann-windowed Y of the 8-bit "
        "images (yonos.metrics.spectrum_distance), whole image (crop_border does not apply); 0 = the HR's spectrum, "
        "a blur misses high-frequency power",
        "latent_mse": "mean squared error of the sampled latent z_0 to z_hr = E(HR), free of the decoder, over the "
        "whole latent (images padded to the UNet's size multiple as the sampler pads them; stage checkpoints; n/a "
        "for other models)",
        "latent_mse_copy": "the same for copying the condition z_lr = E(bicubic-upsampled LR): the floor a stage must "
        "beat to have learned anything",
    }


def _build_one(name: str, options: MetricOptions, device: torch.device) -> PerImageFn | nn.Module:
    crop = options.crop_border
    if name == "psnr":
        return lambda sr, hr: float(psnr_y(sr, hr, crop, options.gray))
    if name == "ssim":
        return lambda sr, hr: float(ssim_y(sr, hr, crop, options.ssim_convention, options.gray))
    if name == "spectrum":
        return lambda sr, hr: float(spectrum_distance(sr, hr))
    if name == "lpips":
        with torch.random.fork_rng(devices=[]):  # a random backbone is drawn from the seed: the same in every run
            torch.manual_seed(options.seed)
            model = build_lpips(options.lpips_net, random_backbone=options.random_lpips_backbone).to(device)
        return lambda sr, hr: float(lpips_distance(model, sr.to(device), hr.to(device)))
    if name == "fid":
        feature = options.fid_feature if options.fid_feature is not None else 2048
        return build_fid(feature, reset_real_features=False, mode=options.fid_mode).to(device)
    metric = build_iqa_metric(name, device, seed=options.seed)
    if IQA_METRICS[name].full_reference:
        return lambda sr, hr: float(metric(sr.to(device), hr.to(device)))
    return lambda sr, hr: float(metric(sr.to(device)))


def build_suite(names: list[str], options: MetricOptions, device: torch.device, skip_unavailable: bool = False) -> MetricSuite:
    """Build every requested metric now, before any SR image is computed, so a missing weight file fails early.

    With ``skip_unavailable``, a metric whose weights or package are missing is recorded in ``skipped`` with the
    reason, and the others are still computed.
    """
    definitions = _definitions(options)
    suite = MetricSuite()
    for name in names:
        if name == "latent_mse":
            suite.latent = True
            suite.definitions.update({key: definitions[key] for key in LATENT_COLUMNS})
            continue
        try:
            built = _build_one(name, options, device)
        except (MissingWeightsError, ImportError) as err:
            if not skip_unavailable:
                raise
            suite.skipped[name] = f"{type(err).__name__}: {err}"
            continue
        key = name
        if name == "lpips" and options.random_lpips_backbone:
            key = f"lpips_{options.lpips_net}_random_backbone"
        if name == "fid":
            suite.fid, suite.fid_name = built, "fid" if options.fid_feature is None else "fid_custom_features"
            key = suite.fid_name
            if options.fid_feature is not None:
                definitions[key] = (
                    f"FID with an injected feature extractor ({type(options.fid_feature).__name__}): not Inception FID"
                )
        else:
            suite.per_image[key] = built
        suite.definitions[key] = definitions.get(key, definitions[name])
    return suite


def lower_is_better(name: str) -> bool:
    """Whether smaller values of a result column are better (names with suffixes such as ``_random_backbone`` too)."""
    return name.split("_")[0] in LOWER_IS_BETTER
