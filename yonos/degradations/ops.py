"""Per-sample image operations of the Real-ESRGAN degradation: blur, USM sharpening, noise, JPEG, resize.

Each op takes a (B, 3, H, W) batch in [0, 1] and per-sample parameters as (B,) tensors; randomness comes from
one ``torch.Generator`` per sample, so a sample's result does not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from yonos.degradations.jpeg import jpeg_basicsr

ResizeMode = Literal["area", "bilinear", "bicubic"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("area", "bilinear", "bicubic")
# The luma of BasicSR's gray Poisson noise (torchvision's ``rgb_to_grayscale``; kornia's uses 0.299).
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def blur(image: Tensor, kernel: Tensor) -> Tensor:
    """Correlate each sample with its own kernel, reflect padding (BasicSR's ``filter2D``).

    Args:
        image: (B, C, H, W).
        kernel: (B, K, K) or (1, K, K), K odd.

    All-zero outer rings of the kernels (smaller kernels padded to 21) are cropped first: the result is the same
    and the cost falls with k^2. Images too small to reflect-pad K // 2 pixels fall back to replicate padding.
    """
    support = kernel.detach().abs().amax(dim=0).amax(dim=0) > 0  # (K,), kernels are centred
    ring = int(support.int().argmax())
    if 0 < ring < kernel.shape[-1] // 2:
        kernel = kernel[:, ring:-ring, ring:-ring]
    border = "reflect" if min(image.shape[-2:]) > kernel.shape[-1] // 2 else "replicate"
    return kornia.filters.filter2d(image, kernel, border_type=border)


def _gaussian_taps(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """OpenCV's ``getGaussianKernel(size, 0)``: sigma = 0.3 ((size - 1) / 2 - 1) + 0.8, normalised, (1, size)."""
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return (taps / taps.sum()).to(dtype)[None]


def usm_sharpen(image: Tensor, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> Tensor:
    """Unsharp masking as Real-ESRGAN sharpens its GT (BasicSR's ``USMSharp``).

    Args:
        image: (B, C, H, W) in [0, 1].
        radius: Gaussian kernel size (made odd: 50 -> 51, sigma 8).
        threshold: residual magnitude, on the 0-255 scale, above which the sharpened pixel is used.
    """
    size = radius + 1 if radius % 2 == 0 else radius
    taps = _gaussian_taps(size, image.dtype, image.device)
    border = "reflect" if min(image.shape[-2:]) > size // 2 else "replicate"
    # The 2-D Gaussian is separable: two 1-D passes instead of a 51 x 51 one.
    smooth = lambda x: kornia.filters.filter2d_separable(x, taps, taps, border_type=border)  # noqa: E731
    residual = image - smooth(image)
    mask = (residual.abs() * 255 > threshold).to(image.dtype)
    soft_mask = smooth(mask)
    sharp = (image + weight * residual).clamp(0, 1)
    return soft_mask * sharp + (1 - soft_mask) * image


def resize(image: Tensor, size: tuple[int, int], mode: ResizeMode, scale: float | None = None) -> Tensor:
    """``F.interpolate`` as BasicSR calls it (no antialiasing, align_corners False); a no-op at the same size.

    With ``scale`` the call is BasicSR's stage-1 ``scale_factor=scale``: the output has ``size`` =
    floor(H * scale) x floor(W * scale), but source coordinates are (x + 0.5) / scale - 0.5, not scaled by the
    in / out size ratio (the two differ by up to a pixel at the far edge).
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    align_corners = None if mode == "area" else False
    by_factor = tuple(math.floor(side * scale) for side in image.shape[-2:]) if scale is not None else None
    if mode != "area" and by_factor == tuple(size):  # tiny images clamped to 1 px fall back to size=
        return F.interpolate(image, scale_factor=scale, mode=mode, align_corners=align_corners)
    return F.interpolate(image, size=size, mode=mode, align_corners=align_corners)


def add_gaussian_noise(image: Tensor, sigma: Tensor, gray: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Add Gaussian noise and clip to [0, 1].

    Args:
        image: (B, 3, H, W).
        sigma: (B,) standard deviation on the 0-255 scale.
        gray: (B,) bool; gray noise is one channel shared by R, G and B.
        generators: one per sample, on the image's device.
    """
    _, channels, height, width = image.shape
    noise = []
    for is_gray, generator in zip(gray.tolist(), generators, strict=True):
        shape = (1 if is_gray else channels, height, width)
        sample = torch.randn(shape, generator=generator, device=image.device, dtype=image.dtype)
        noise.append(sample.expand(channels, height, width))
    sigma = sigma.to(image)[:, None, None, None] / 255.0
    return (image + torch.stack(noise) * sigma).clamp(0, 1)


def add_poisson_noise(image: Tensor, scale: Tensor, gray: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Add Poisson (shot) noise as BasicSR does, and clip to [0, 1].

    The image (its luma when gray) is quantised to 8 bits, and counts are simulated with 2^ceil(log2(n))
    levels, n being its number of distinct 8-bit values; the noise (counts / levels - image) times ``scale``
    is added to the unquantised image.

    Args:
        image: (B, 3, H, W).
        scale: (B,) noise multiplier.
        gray: (B,) bool; gray noise is one channel shared by R, G and B.
        generators: one per sample, on the image's device.
    """
    noise = []
    for i, (is_gray, generator) in enumerate(zip(gray.tolist(), generators, strict=True)):
        sample = image[i]
        if is_gray:
            red, green, blue = sample
            sample = (GRAY_WEIGHTS[0] * red + GRAY_WEIGHTS[1] * green + GRAY_WEIGHTS[2] * blue)[None]  # (1, H, W)
        levels = torch.round(sample.clamp(0, 1) * 255.0)
        distinct = torch.bincount(levels.long().flatten(), minlength=256).count_nonzero()
        counts = torch.exp2(torch.ceil(torch.log2(distinct.to(image.dtype))))
        quantised = levels / 255.0
        shot = torch.poisson(quantised * counts, generator=generator) / counts - quantised
        noise.append(shot.expand_as(image[i]))
    scale = scale.to(image)[:, None, None, None]
    return (image + torch.stack(noise) * scale).clamp(0, 1)


def add_noise(
    image: Tensor,
    gaussian: Tensor,
    sigma: Tensor,
    poisson_scale: Tensor,
    gray: Tensor,
    generators: Sequence[torch.Generator],
) -> Tensor:
    """Gaussian noise where ``gaussian`` (B,) is True, Poisson noise elsewhere; see the two functions above."""
    out = torch.empty_like(image)
    for use_gaussian, add in ((True, add_gaussian_noise), (False, add_poisson_noise)):
        picked = [i for i, flag in enumerate(gaussian.tolist()) if flag == use_gaussian]
        if not picked:
            continue
        image_index, param_index = torch.tensor(picked, device=image.device), torch.tensor(picked, device=gray.device)
        strength = (sigma if use_gaussian else poisson_scale)[param_index]
        out[image_index] = add(image[image_index], strength, gray[param_index], [generators[i] for i in picked])
    return out


def jpeg(image: Tensor, quality: Tensor) -> Tensor:
    """JPEG encode-decode with a per-sample quality, equal to BasicSR's ``DiffJPEG(differentiable=False)``.

    Args:
        image: (B, 3, H, W), clipped to [0, 1] first as Real-ESRGAN does; any H, W (zero-padded to a multiple of 16
            and cropped back, as BasicSR does).
        quality: (B,) in [1, 100].
    """
    return jpeg_basicsr(image, quality).to(image.dtype)
