"""MATLAB ``imresize(..., 'bicubic')``: the resize that made the LR images and bicubic rows of the classic SR tables.

MATLAB's semantics: Keys' cubic kernel with a = -0.5, widened by 1/scale when shrinking (antialiasing), output pixel
i (1-based) centred at i / scale + (1 - 1 / scale) / 2 in input coordinates, weights normalised per output pixel,
out-of-range taps folded back by symmetric reflection that repeats the edge pixel, the dimension with the
stronger shrink resized first (rows on ties), and each pass rounded to 8 bits when the image is 8-bit.
Pure torch: the two passes are matrix products with dense (out, in) weight matrices on the image's device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from yonos.degradations.bicubic import check_downscale

KERNEL_WIDTH = 4.0  # support of the cubic kernel, in input pixels at scale 1


def cubic(x: Tensor) -> Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(in_length: int, out_length: int, scale: float, device: torch.device | None = None) -> Tensor:
    """The (out_length, in_length) float64 matrix of one MATLAB bicubic pass along a dimension.

    Args:
        scale: out / in; below 1 the kernel is widened by 1 / scale (MATLAB's default antialiasing).
    """
    width = KERNEL_WIDTH / scale if scale < 1 else KERNEL_WIDTH
    centre = torch.arange(1, out_length + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)  # 1-based
    taps = math.ceil(width) + 2
    index = torch.floor(centre - width / 2)[:, None] + torch.arange(taps, dtype=torch.float64)  # (out, taps)
    distance = centre[:, None] - index
    weights = scale * cubic(distance * scale) if scale < 1 else cubic(distance)
    weights = weights / weights.sum(1, keepdim=True)
    # Symmetric reflection with the edge repeated: 0 -> 1, -1 -> 2, in + 1 -> in, ...
    period = 2 * in_length
    folded = torch.remainder(index.long() - 1, period)
    folded = torch.where(folded >= in_length, period - 1 - folded, folded)  # 0-based
    matrix = torch.zeros(out_length, in_length, dtype=torch.float64)
    matrix.scatter_add_(1, folded, weights)
    return matrix.to(device)


def imresize(image: Tensor, scale: float, round_8bit: bool = True) -> Tensor:
    """Resize (..., H, W) by ``scale`` as MATLAB's ``imresize(image, scale, 'bicubic')``.

    The output size is ceil(H * scale) x ceil(W * scale). With ``round_8bit`` the image is treated as an 8-bit image
    in [0, 1] (MATLAB's uint8 path): each pass is clamped and rounded to the 256 levels, as MATLAB rounds a uint8
    image after each dimension; otherwise (double images) nothing is rounded or clamped.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    height, width = image.shape[-2:]
    out_h, out_w = math.ceil(height * scale - 1e-9), math.ceil(width * scale - 1e-9)
    work = image.double() * 255.0  # MATLAB resizes the uint8 values themselves
    # MATLAB's order: smaller scale first; with one scale for both, rows (height) first.
    rows = resize_matrix(height, out_h, scale, image.device)  # (out_h, H)
    cols = resize_matrix(width, out_w, scale, image.device)  # (out_w, W)
    work = _round(rows @ work, round_8bit)
    work = _round(work @ cols.T, round_8bit)
    return (work / 255.0).to(image.dtype)


def _round(levels: Tensor, round_8bit: bool) -> Tensor:
    """MATLAB's conversion to uint8: clamp, then round half away from zero (torch.round would round half to even)."""
    return torch.floor(levels.clamp(0, 255) + 0.5) if round_8bit else levels


def bicubic_matlab_downsample(hr: Tensor, scale: int) -> Tensor:
    """The classic tables' bicubic LR: MATLAB ``imresize(hr, 1 / scale)`` of an 8-bit image, on 8-bit levels.

    Args:
        hr: (B, C, H, W) in [0, 1]; H and W must be multiples of ``scale``.
    """
    check_downscale(hr, scale)
    return hr.clamp(0, 1) if scale == 1 else imresize(hr, 1 / scale)


def bicubic_matlab_upsample(lr: Tensor, scale: int) -> Tensor:
    """The classic tables' bicubic baseline: MATLAB ``imresize(lr, scale)`` of an 8-bit image, on 8-bit levels."""
    return lr.clamp(0, 1) if scale == 1 else imresize(lr, float(scale))
