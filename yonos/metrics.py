"""Image-quality metrics with the SR field's conventions (Y channel PSNR/SSIM, LPIPS, FID).

One implementation, used by validation during fit and by evaluation. Pretrained metric networks are looked up
in the torch hub cache; when a file is absent and cannot be downloaded the error names it and where it goes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics.functional.image import structural_similarity_index_measure

from yonos.degradations import quantize_8bit

LPIPSNet = Literal["alex", "vgg"]

# torchvision weights that lpips loads for its backbones, and torch-fidelity's Inception for FID.
WEIGHT_FILES = {
    "lpips-alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
    "lpips-vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "fid-inception": (
        "weights-inception-2015-12-05-6726825d.pth",
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    ),
}


class MissingWeightsError(FileNotFoundError):
    """A metric network's pretrained weights are not on this machine and could not be downloaded."""


def rgb_to_y(image: Tensor) -> Tensor:
    """ITU-R BT.601 luma of RGB in [0, 1] on the [0, 255] scale (MATLAB ``rgb2ycbcr``), (B, 3, H, W) -> (B, 1, H, W)."""
    weights = image.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return 16.0 + (image * weights).sum(dim=1, keepdim=True)


def _prepare(sr: Tensor, hr: Tensor, crop_border: int) -> tuple[Tensor, Tensor]:
    """8-bit SR (as it would be written to disk), the Y channel of both, borders cropped; float64."""
    if sr.shape != hr.shape:
        raise ValueError(f"SR {tuple(sr.shape)} and HR {tuple(hr.shape)} differ in shape")
    sr_y, hr_y = rgb_to_y(quantize_8bit(sr).double()), rgb_to_y(quantize_8bit(hr).double())
    if crop_border > 0:
        sr_y = sr_y[..., crop_border:-crop_border, crop_border:-crop_border]
        hr_y = hr_y[..., crop_border:-crop_border, crop_border:-crop_border]
    return sr_y, hr_y


def psnr_y(sr: Tensor, hr: Tensor, crop_border: int = 0) -> Tensor:
    """PSNR in dB on the Y channel, per image (B,), as BasicSR's ``calculate_psnr(test_y_channel=True)``."""
    sr_y, hr_y = _prepare(sr, hr, crop_border)
    mse = (sr_y - hr_y).pow(2).mean(dim=(1, 2, 3))
    return (10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))).float()


def ssim_y(sr: Tensor, hr: Tensor, crop_border: int = 0) -> Tensor:
    """SSIM on the Y channel, per image (B,): Gaussian window 11, sigma 1.5, valid region (BasicSR's definition)."""
    sr_y, hr_y = _prepare(sr, hr, crop_border)
    return structural_similarity_index_measure(
        sr_y, hr_y, gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=255.0, reduction="none"
    ).float()


def _offline() -> bool:
    return any(os.environ.get(flag, "0") not in ("", "0") for flag in ("YONOS_OFFLINE", "HF_HUB_OFFLINE"))


def weights_path(name: str) -> Path:
    """Where the torch hub cache expects the weight file of a metric network."""
    filename, _ = WEIGHT_FILES[name]
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _missing(name: str, reason: str) -> MissingWeightsError:
    filename, url = WEIGHT_FILES[name]
    return MissingWeightsError(
        f"{name}: pretrained weights {filename} are not at {weights_path(name)} ({reason}). "
        f"Download {url} on a machine with network and copy it there (the folder is torch.hub.get_dir()/checkpoints, "
        "set by $TORCH_HOME)."
    )


def build_lpips(net: LPIPSNet = "alex", random_backbone: bool = False) -> nn.Module:
    """The ``lpips`` package's LPIPS (inputs in [-1, 1]) in eval mode with frozen weights.

    ``random_backbone`` builds a randomly initialised backbone with the shipped linear heads: for tests of the
    code path only; its values are not LPIPS.
    """
    import lpips

    name = f"lpips-{net}"
    if not random_backbone and not weights_path(name).is_file() and _offline():
        raise _missing(name, "offline mode is set")
    try:
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
    except Exception as err:  # urllib / socket / hub errors when the download fails
        raise _missing(name, f"download failed: {type(err).__name__}: {err}") from err
    return model.eval().requires_grad_(False)


def lpips_distance(model: nn.Module, sr: Tensor, hr: Tensor) -> Tensor:
    """LPIPS per image (B,) for images in [0, 1]."""
    return model(sr * 2.0 - 1.0, hr * 2.0 - 1.0, normalize=False).flatten()


def build_fid(feature: int | nn.Module = 2048) -> nn.Module:
    """torchmetrics' FrechetInceptionDistance with torch-fidelity's Inception weights (or a custom feature net)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if isinstance(feature, int) and not weights_path("fid-inception").is_file() and _offline():
        raise _missing("fid-inception", "offline mode is set")
    try:
        return FrechetInceptionDistance(feature=feature, normalize=True)
    except Exception as err:
        if isinstance(feature, nn.Module):
            raise
        raise _missing("fid-inception", f"download failed: {type(err).__name__}: {err}") from err
