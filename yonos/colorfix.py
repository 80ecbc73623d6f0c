"""Colour correction of an SR image against its reference (the bicubic-upsampled LR): AdaIN, wavelet, or none.

Pure torch on (B, C, H, W) images in [0, 1]. RGB is corrected; a fourth (alpha) channel passes through untouched.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

ColorFix = Literal["adain", "wavelet", "none"]
COLOR_FIX_MODES: tuple[str, ...] = get_args(ColorFix)


def adain_color_fix(sr: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel mean and standard deviation of ``sr`` set to those of ``reference`` (AdaIN, Huang & Belongie 2017).

    Shifts the global colour balance; local structure stays that of ``sr``. Clamped to [0, 1].
    """
    sr_mean, sr_std = _channel_stats(sr, eps)
    ref_mean, ref_std = _channel_stats(reference, eps)
    return ((sr - sr_mean) / sr_std * ref_std + ref_mean).clamp(0.0, 1.0)


def wavelet_decompose(image: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """Split ``image`` into (high, low) frequencies with an a-trous wavelet: high + low == image.

    Each level blurs with the separable [1, 2, 1] / 4 kernel dilated by 2^level (replicate padding), so ``low``
    holds structure coarser than about 2^(levels + 1) pixels.
    """
    channels = image.shape[1]
    kernel_1d = torch.tensor([0.25, 0.5, 0.25], device=image.device, dtype=image.dtype)
    kernel = torch.outer(kernel_1d, kernel_1d).expand(channels, 1, 3, 3)  # (C, 1, 3, 3) depthwise
    low = image
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel, dilation=dilation, groups=channels)
    return image - low, low


def wavelet_color_fix(sr: Tensor, reference: Tensor, levels: int = 5) -> Tensor:
    """High frequencies of ``sr`` on the low frequencies of ``reference`` (StableSR's wavelet colour fix).

    Keeps the reference's colour at every coarse scale, so it corrects local colour shifts AdaIN cannot.
    Clamped to [0, 1].
    """
    sr_high, _ = wavelet_decompose(sr, levels)
    _, ref_low = wavelet_decompose(reference, levels)
    return (sr_high + ref_low).clamp(0.0, 1.0)


def apply_color_fix(sr: Tensor, reference: Tensor, mode: ColorFix) -> Tensor:
    """Colour-correct ``sr`` (B, 3 or 4, H, W) against ``reference`` (B, >= 3, H, W) by ``mode``.

    Only the first three channels are corrected; a fourth channel of ``sr`` (alpha) is returned unchanged, so RGBA
    images cannot crash or tint the correction. Computed in float32, returned in ``sr``'s dtype.
    """
    if mode not in COLOR_FIX_MODES:
        raise ValueError(f"unknown colour fix {mode!r}; choose from {COLOR_FIX_MODES}")
    if sr.ndim != 4 or sr.shape[1] not in (3, 4) or reference.shape[1] < 3:
        raise ValueError(f"colour fix expects (B, 3|4, H, W) images, got {tuple(sr.shape)}, {tuple(reference.shape)}")
    if sr.shape[-2:] != reference.shape[-2:] or sr.shape[0] != reference.shape[0]:
        raise ValueError(f"colour fix reference {tuple(reference.shape)} does not match the image {tuple(sr.shape)}")
    if mode == "none":
        return sr
    rgb, ref = sr[:, :3].float(), reference[:, :3].float()
    fixed = adain_color_fix(rgb, ref) if mode == "adain" else wavelet_color_fix(rgb, ref)
    return torch.cat([fixed.to(sr.dtype), sr[:, 3:]], dim=1)


def _channel_stats(image: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and standard deviation, each (B, C, 1, 1)."""
    flat = image.flatten(2)
    std = flat.var(-1, unbiased=False).sqrt().clamp_min(eps)  # the floor only matters for flat channels
    return flat.mean(-1)[..., None, None], std[..., None, None]
