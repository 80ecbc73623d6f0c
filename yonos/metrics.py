"""Image-quality metrics with the SR field's conventions (Y channel PSNR/SSIM, LPIPS, FID, pyiqa's DISTS and
no-reference metrics).

One implementation, used by validation during fit and by ``yonos evaluate``. Pretrained metric networks are looked
up in the torch hub cache; when a file is absent and cannot be downloaded the error names it and where it goes.
Folder handling and reporting live in ``yonos.evaluation``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yonos.degradations import quantize_8bit

LPIPSNet = Literal["alex", "vgg"]
_PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main"
SSIMConvention = Literal["basicsr", "pyiqa"]
GrayConvention = Literal["own", "rgb_y"]
FIDMode = Literal["clean", "legacy"]
FID_SIZE = 299
IQAName = Literal["dists", "niqe", "musiq", "maniqa", "clipiqa"]

# torchvision weights that lpips loads for its backbones, and torch-fidelity's Inception for FID.
WEIGHT_FILES = {
    "lpips-alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "lpips-vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "fid-inception": (
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
    # pyiqa's checkpoints (its download folder is torch.hub.get_dir()/pyiqa), CLIP's (…/clip), timm's ViT (hub cache).
    "pyiqa-dists": ("DISTS_weights-f5e65c96.pth", f"{_PYIQA_URL}/DISTS_weights-f5e65c96.pth"),
    "pyiqa-niqe": ("niqe_modelparameters.mat", f"{_PYIQA_URL}/niqe_modelparameters.mat"),
    "pyiqa-musiq-koniq": ("musiq_koniq_ckpt-e95806b9.pth", f"{_PYIQA_URL}/musiq_koniq_ckpt-e95806b9.pth"),
    "pyiqa-maniqa-pipal": ("MANIQA_PIPAL-ae6d356b.pth", f"{_PYIQA_URL}/MANIQA_PIPAL-ae6d356b.pth"),
    "clip-rn50": (
        "RN50.pt",
        "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    ),
    "timm-vit-b8": ("model.safetensors", "https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"),
}
# Folder of each file under torch.hub.get_dir() (default: checkpoints/); the timm ViT lives in the HF hub cache.
_WEIGHT_FOLDERS = {
    "pyiqa-dists": "pyiqa",
    "pyiqa-niqe": "pyiqa",
    "pyiqa-musiq-koniq": "pyiqa",
    "pyiqa-maniqa-pipal": "pyiqa",
    "clip-rn50": "clip",
}
_HF_REPOS = {"timm-vit-b8": "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"}


class MissingWeightsError(FileNotFoundError):
    """A metric network's pretrained weights are not on this machine and could not be downloaded."""


def rgb_to_y(image: Tensor) -> Tensor:
    """ITU-R BT.601 luma of RGB in [0, 1] on the [0, 255] scale (MATLAB ``rgb2ycbcr``), (B, 3, H, W) -> (B, 1, H, W)."""
    weights = image.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return 16.0 + (image * weights).sum(dim=1, keepdim=True)


def gray_levels(image: Tensor) -> Tensor:
    """The gray value of an image on the [0, 255] scale, (B, 1, H, W): a 1-channel image itself, else its full-range
    BT.601 luma (Y - 16) * 255 / 219, which equals R = G = B for an RGB copy of a gray image."""
    if image.shape[1] == 1:
        return image * 255.0
    return (rgb_to_y(image) - 16.0) * (255.0 / 219.0)


def _prepare(
    sr: Tensor, hr: Tensor, crop_border: int, round_y: bool = False, gray: GrayConvention = "own"
) -> tuple[Tensor, Tensor]:
    """8-bit SR (as it would be written to disk), the Y channel of both, borders cropped; float64.

    ``round_y`` rounds Y to integers, as pyiqa's SSIM does (its ``to_y_channel`` at data range 255). A 1-channel
    (gray) HR image is compared on its own values with ``gray="own"`` (the classic tables: MATLAB scripts take Y
    only of 3-channel images), or as the Y of its RGB copy with ``gray="rgb_y"`` (16 + 219 / 255 of its values:
    PSNR about 1.3 dB higher).
    """
    if sr.shape[0] != hr.shape[0] or sr.shape[-2:] != hr.shape[-2:] or (hr.shape[1] != 1 and sr.shape != hr.shape):
        raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in shape")
    sr, hr = quantize_8bit(sr).double(), quantize_8bit(hr).double()
    if hr.shape[1] == 1 and gray == "own":
        sr_y, hr_y = gray_levels(sr), gray_levels(hr)
    else:
        sr_y = rgb_to_y(sr.expand(-1, 3, -1, -1))
        hr_y = rgb_to_y(hr.expand(-1, 3, -1, -1))
    if round_y:
        sr_y, hr_y = sr_y.round(), hr_y.round()
    if crop_border > 0:
        sr_y = sr_y[..., crop_border:-crop_border, crop_border:-crop_border]
        hr_y = hr_y[..., crop_border:-crop_border, crop_border:-crop_border]
    return sr_y, hr_y


def psnr_y(sr: Tensor, hr: Tensor, crop_border: int = 0, gray: GrayConvention = "own") -> Tensor:
    """PSNR in dB on the Y channel, per image (B,), as BasicSR's ``calculate_psnr(test_y_channel=True)`` (and pyiqa's
    ``psnr(test_y_channel=True, color_space='ycbcr')``, which agrees to 1e-4 dB). A 1-channel HR: see ``_prepare``."""
    sr_y, hr_y = _prepare(sr, hr, crop_border, gray=gray)
    mse = (sr_y - hr_y).pow(2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).float()


def gaussian_window(
    size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> Tensor:
    """The normalised 1-D Gaussian of SSIM's window (its outer product is MATLAB ``fspecial('gaussian', 11, 1.5)``)."""
    offsets = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2 * sigma**2))
    return profile / profile.sum()


def ssim_map(x: Tensor, y: Tensor, data_range: float = 255.0, clip_contrast: bool = False) -> Tensor:
    """Wang et al. 2004 SSIM map over the valid region (no padding) of one-channel images (B, 1, H, W).

    Gaussian window 11 / sigma 1.5 (applied as two separable passes), K1 = 0.01, K2 = 0.03. ``clip_contrast`` sets
    negative contrast-structure terms to zero, as pyiqa does.
    """
    profile = gaussian_window(dtype=x.dtype, device=x.device)
    size = profile.numel()
    if min(x.shape[-2:]) < size:
        raise ValueError(f"SSIM needs images of at least {size} pixels a side, got {tuple(x.shape[-2:])}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    stack = torch.cat([x, y, x * x, y * y, x * y])  # (5B, 1, H, W)
    blurred = F.conv2d(F.conv2d(stack, profile.view(1, 1, size, 1)), profile.view(1, 1, 1, size))  # (5B, 1, H-10, W-10)
    mu_x, mu_y, xx, yy, xy = blurred.split(x.shape[0])
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    contrast_structure = (2 * cov + c2) / (var_x + var_y + c2)
    if clip_contrast:
        contrast_structure = contrast_structure.clamp_min(0.0)
    return (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * contrast_structure


def ssim_y(
    sr: Tensor, hr: Tensor, crop_border: int = 0, convention: SSIMConvention = "basicsr", gray: GrayConvention = "own"
) -> Tensor:
    """SSIM on the Y channel, per image (B,).

    ``basicsr``: BasicSR's ``calculate_ssim(test_y_channel=True)`` (float Y). ``pyiqa``: pyiqa's
    ``ssim(test_y_channel=True, color_space='ycbcr')`` (Y rounded to integers, negative contrast terms clipped);
    the two differ by about 0.001 on photos.
    """
    sr_y, hr_y = _prepare(sr, hr, crop_border, round_y=convention == "pyiqa", gray=gray)
    return ssim_map(sr_y, hr_y, clip_contrast=convention == "pyiqa").mean(dim=(1, 2, 3)).float()


def radial_power_spectrum(y: Tensor) -> Tensor:
    """Radially averaged power spectrum of luma images, (B, 1, H, W) on any scale -> (B, R) with R = min(H, W) // 2.

    A 2-D Hann window is applied after removing the image's window-weighted mean (so the windowed image has no DC
    term and the tile's borders add no false edges); the power
    |FFT|^2 is averaged over rings of width 1 / min(H, W) cycles per pixel, ring r in 1..R (the DC ring 0 is
    dropped). Non-square images use the same ring width on both axes.
    """
    height, width = y.shape[-2:]
    if min(height, width) < 8:
        raise ValueError(f"the power spectrum needs images of at least 8 x 8 pixels, got {height} x {width}")
    window = torch.outer(torch.hann_window(height, periodic=False, dtype=torch.float64),
                         torch.hann_window(width, periodic=False, dtype=torch.float64)).to(y.device)
    y = y.double()
    mean = (y * window).sum(dim=(-2, -1), keepdim=True) / window.sum()
    centred = (y - mean) * window
    power = torch.fft.fft2(centred).abs().pow(2).flatten(1)  # (B, H * W)
    side = min(height, width)
    fy = torch.fft.fftfreq(height, dtype=torch.float64, device=y.device)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64, device=y.device)[None, :]
    ring = torch.round(torch.sqrt(fy**2 + fx**2) * side).long().flatten()  # (H * W,)
    rings = side // 2
    keep = (ring >= 1) & (ring <= rings)
    index = (ring[keep] - 1).expand(power.shape[0], -1)
    sums = power.new_zeros(power.shape[0], rings).scatter_add_(1, index, power[:, keep])
    counts = torch.bincount(ring[keep] - 1, minlength=rings).to(power)
    return sums / counts


def spectrum_distance(sr: Tensor, hr: Tensor, eps: float = 1e-10) -> Tensor:
    """A weight-free measure of detail, per image (B,): the mean over frequency rings of
    |log10 P_sr(r) - log10 P_hr(r)|, P the radially averaged power spectrum of the Y channel of the 8-bit images
    (:func:`radial_power_spectrum`). 0 when the spectra agree; a blurred SR misses power at high frequencies and
    scores worse, even where PSNR rewards the blur. In decades of power (1 = a factor of 10 on average)."""
    if sr.shape[0] != hr.shape[0] or sr.shape[-2:] != hr.shape[-2:]:
        raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in shape")
    sr_y = rgb_to_y(quantize_8bit(sr).double().expand(-1, 3, -1, -1))
    hr_y = rgb_to_y(quantize_8bit(hr).double().expand(-1, 3, -1, -1))
    log_sr = torch.log10(radial_power_spectrum(sr_y) + eps)
    log_hr = torch.log10(radial_power_spectrum(hr_y) + eps)
    return (log_sr - log_hr).abs().mean(dim=1).float()


def _offline() -> bool:
    return any(os.environ.get(flag, "0") not in ("", "0") for flag in ("YONOS_OFFLINE", "HF_HUB_OFFLINE"))


def weights_path(name: str) -> Path:
    """Where the weight file of a metric network is expected (the torch hub cache, or the HF hub cache for timm's)."""
    filename, _ = WEIGHT_FILES[name]
    if name in _HF_REPOS:
        from huggingface_hub import constants

        return (
            Path(constants.HF_HUB_CACHE) / f"models--{_HF_REPOS[name].replace('/', '--')}" / "snapshots" / "<revision>" / filename
        )
    return Path(torch.hub.get_dir()) / _WEIGHT_FOLDERS.get(name, "checkpoints") / filename


def weights_present(name: str) -> bool:
    """Whether the weight file of a metric network is on this machine."""
    if name in _HF_REPOS:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(_HF_REPOS[name], WEIGHT_FILES[name][0]), str)
    return weights_path(name).is_file()


def _missing(name: str, reason: str) -> MissingWeightsError:
    filename, url = WEIGHT_FILES[name]
    if name in _HF_REPOS:
        where = (
            f"Run `hf download {_HF_REPOS[name]}` (huggingface_hub's command) on a machine with network and copy the folder "
            f"{weights_path(name).parents[2].name} into the Hugging Face hub cache ($HF_HOME/hub)."
        )
    else:
        where = (
            f"Download {url} on a machine with network and copy it there (the folder is torch.hub.get_dir()/"
            f"{_WEIGHT_FOLDERS.get(name, 'checkpoints')}, set by $TORCH_HOME)."
        )
    return MissingWeightsError(f"{name}: pretrained weights {filename} are not at {weights_path(name)} ({reason}). {where}")


def require_weights(*names: str) -> None:
    """When offline, raise :class:`MissingWeightsError` naming every absent file (online, libraries download them)."""
    missing = [name for name in names if not weights_present(name)]
    if missing and _offline():
        raise MissingWeightsError(" ".join(str(_missing(name, "offline mode is set")) for name in missing))


def build_lpips(net: LPIPSNet = "alex", random_backbone: bool = False) -> nn.Module:
    """The ``lpips`` package's LPIPS (inputs in [-1, 1]) in eval mode with frozen weights.

    ``random_backbone`` builds a randomly initialised backbone with the shipped linear heads: for tests of the
    code path only; its values are not LPIPS.
    """
    import lpips

    name = f"lpips-{net}"
    if not random_backbone:
        require_weights(name)
    try:
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
    except Exception as err:  # urllib / socket / hub errors when the download fails
        raise _missing(name, f"download failed: {type(err).__name__}: {err}") from err
    return model.eval().requires_grad_(False)


def lpips_distance(model: nn.Module, sr: Tensor, hr: Tensor) -> Tensor:
    """LPIPS per image (B,) for images in [0, 1]."""
    return model(sr * 2.0 - 1.0, hr * 2.0 - 1.0, normalize=False).flatten()


def clean_fid_resize(images: Tensor) -> Tensor:
    """clean-fid's (and pyiqa's default ``clean`` mode) Inception input: each channel of the 8-bit image resized to
    299 x 299 by PIL's bicubic filter in float ('F' mode), clipped to [0, 255]; then rounded to uint8, as torchmetrics'
    Inception only takes uint8 (clean-fid keeps the floats: the two differ by this rounding alone).

    Args:
        images: (B, 3, H, W) in [0, 1]. Returns (B, 3, 299, 299) uint8 on the same device.
    """
    from PIL import Image

    levels = torch.round(images.detach().clamp(0, 1) * 255.0).cpu().numpy().astype("float32")  # (B, 3, H, W)
    resized = [
        [np.asarray(Image.fromarray(channel, mode="F").resize((FID_SIZE, FID_SIZE), Image.BICUBIC)) for channel in image]
        for image in levels
    ]
    out = torch.from_numpy(np.clip(np.array(resized), 0, 255))
    return torch.round(out).to(torch.uint8).to(images.device)


class CleanResizeFID(nn.Module):
    """A torchmetrics FID fed clean-fid's PIL-bicubic 299 px inputs (its own TF1-style bilinear resize is then the
    identity); ``update``/``compute``/``reset`` as torchmetrics'."""

    def __init__(self, fid: nn.Module) -> None:
        super().__init__()
        self.fid = fid

    def update(self, images: Tensor, real: bool) -> None:
        self.fid.update(clean_fid_resize(images), real=real)

    def compute(self) -> Tensor:
        return self.fid.compute()

    def reset(self) -> None:
        self.fid.reset()


def build_fid(feature: int | nn.Module = 2048, reset_real_features: bool = True, mode: FIDMode = "clean") -> nn.Module:
    """torchmetrics' FrechetInceptionDistance with torch-fidelity's Inception weights (or a custom feature net).

    Inputs are float images in [0, 1]. ``mode``: ``clean`` resizes them to 299 as clean-fid / pyiqa's default do
    (:func:`clean_fid_resize`), the peers' convention; ``legacy`` leaves the resize to torch-fidelity (TF1 bilinear,
    pyiqa's ``legacy_tensorflow``). Same network either way. ``reset_real_features=False`` keeps the reference
    statistics across ``reset()``, so one set of HR features serves several SR folders.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if mode not in ("clean", "legacy"):
        raise ValueError(f"--fid-mode: unknown mode {mode!r}; choose clean or legacy")
    if isinstance(feature, int):
        require_weights("fid-inception")
    try:
        fid = FrechetInceptionDistance(feature=feature, normalize=mode == "legacy", reset_real_features=reset_real_features)
    except Exception as err:
        if isinstance(feature, nn.Module):
            raise
        raise _missing("fid-inception", f"download failed: {type(err).__name__}: {err}") from err
    return CleanResizeFID(fid) if mode == "clean" else fid


@dataclass(frozen=True)
class IQASpec:
    """A metric computed by pyiqa: its pyiqa name, whether it needs the HR image, and the files it loads."""

    pyiqa_name: str
    full_reference: bool
    lower_better: bool
    weights: tuple[str, ...]


IQA_METRICS: dict[str, IQASpec] = {
    "dists": IQASpec("dists", True, True, ("pyiqa-dists", "lpips-vgg")),
    "niqe": IQASpec("niqe", False, True, ("pyiqa-niqe",)),
    "musiq": IQASpec("musiq", False, False, ("pyiqa-musiq-koniq",)),
    "maniqa": IQASpec("maniqa-pipal", False, False, ("timm-vit-b8", "pyiqa-maniqa-pipal")),
    "clipiqa": IQASpec("clipiqa", False, False, ("clip-rn50",)),
}
"""pyiqa's references (README: "Evaluation"): DISTS, NIQE, MUSIQ (KonIQ), MANIQA (PIPAL checkpoint), CLIP-IQA (RN50)."""

IQAFn = Callable[[Tensor, Tensor | None], Tensor]
"""(SR (B, 3, H, W) in [0, 1], HR or None) -> scores (B,)."""


def build_iqa_metric(name: IQAName, device: torch.device | str = "cpu", seed: int = 0) -> IQAFn:
    """A pyiqa metric as a function of (SR, HR) in [0, 1]; pyiqa is the ``iqa`` extra (``pip install 'yonos[iqa]'``).

    pyiqa draws random crops inside some metrics (MANIQA) from torch's global generator: each call runs under a
    forked RNG state seeded with ``seed``, so scores are reproducible and the caller's RNG is untouched.
    """
    spec = IQA_METRICS[name]
    try:
        import pyiqa
    except ImportError as err:  # pyiqa's own optional imports fail here too (e.g. pkg_resources for CLIP)
        raise ImportError(f"{name} is computed by pyiqa: pip install 'yonos[iqa]' ({type(err).__name__}: {err})") from err
    require_weights(*spec.weights)
    try:
        model = pyiqa.create_metric(spec.pyiqa_name, device=torch.device(device), as_loss=False)
    except ImportError as err:
        raise ImportError(f"{name}: pyiqa could not import a dependency: {err} (see pip install 'yonos[iqa]')") from err
    except Exception as err:  # download failures surface as URLError / OSError / hub errors
        missing = [w for w in spec.weights if not weights_present(w)] or list(spec.weights)
        raise _missing(missing[0], f"download failed: {type(err).__name__}: {err}") from err
    model.eval()

    @torch.no_grad()
    def score(sr: Tensor, hr: Tensor | None = None) -> Tensor:
        with torch.random.fork_rng(devices=[sr.device] if sr.device.type == "cuda" else []):
            torch.manual_seed(seed)
            out = model(sr.clamp(0, 1), hr.clamp(0, 1)) if spec.full_reference else model(sr.clamp(0, 1))
        return out.flatten().float().cpu()

    return score
