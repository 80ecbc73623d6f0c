"""JPEG encode-decode as Real-ESRGAN simulates it (BasicSR's ``DiffJPEG(differentiable=False)``), batched on the device.

What makes this codec BasicSR's and not libjpeg's or kornia's: the quality factor scales the standard tables without
rounding or clipping them, the luma table is applied transposed (rows index horizontal frequency), chroma is
subsampled by 2 x 2 averaging and upsampled by repetition, coefficients are rounded hard, and the image is
zero-padded at the bottom and right to a multiple of 16. Pure torch, float32, no Lightning.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# The JPEG standard's example tables (ITU-T T.81, Annex K), rows = vertical frequency.
_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_CORNER = ((17, 18, 24, 47), (18, 21, 26, 66), (24, 26, 56, 99), (47, 66, 99, 99))
# JFIF's full-range BT.601 conversion.
_RGB_TO_YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_YCBCR_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


def quality_to_factor(quality: Tensor) -> Tensor:
    """The IJG scaling of the tables: 50 / q below quality 50, 2 - q / 50 above (as a multiplier, float32)."""
    quality = quality.float()
    return torch.where(quality < 50, 5000.0 / quality, 200.0 - quality * 2) / 100.0


def _tables(device: torch.device) -> tuple[Tensor, Tensor]:
    luma = torch.tensor(_LUMA_TABLE, dtype=torch.float32, device=device).T  # BasicSR's transposed luma table
    chroma = torch.full((8, 8), 99.0, device=device)
    chroma[:4, :4] = torch.tensor(_CHROMA_CORNER, dtype=torch.float32, device=device)
    return luma, chroma


def _dct_basis(device: torch.device) -> tuple[Tensor, Tensor]:
    """The 8 x 8 DCT-II as one (64, 64) matrix on flattened blocks, cos((2x + 1) u pi / 16) cos((2y + 1) v pi / 16)
    with rows (x, y) and columns (u, v), and the (64,) normalisation alpha(u) alpha(v) / 4: one matrix product per
    plane, the contraction BasicSR's ``tensordot`` performs."""
    n = torch.arange(8, dtype=torch.float64)
    cos = torch.cos((2 * n[:, None] + 1) * n[None, :] * math.pi / 16)  # (position, frequency)
    basis = torch.einsum("xu,yv->xyuv", cos, cos).reshape(64, 64)
    alpha = torch.ones(8, dtype=torch.float64)
    alpha[0] = 1 / math.sqrt(2)
    scale = (torch.outer(alpha, alpha) * 0.25).reshape(64)
    return basis.float().to(device), scale.float().to(device)


def _blocks(plane: Tensor) -> Tensor:
    """(B, H, W) -> (B, H/8 * W/8, 64), each block flattened row by row."""
    batch, height, width = plane.shape
    return plane.reshape(batch, height // 8, 8, width // 8, 8).transpose(2, 3).reshape(batch, -1, 64)


def _unblocks(blocks: Tensor, height: int, width: int) -> Tensor:
    batch = blocks.shape[0]
    return blocks.reshape(batch, height // 8, width // 8, 8, 8).transpose(2, 3).reshape(batch, height, width)


def _code_plane(plane: Tensor, table: Tensor, basis: Tensor, scale: Tensor) -> Tensor:
    """DCT, hard quantisation with per-sample ``table`` (B, 8, 8), dequantisation and inverse DCT of a plane."""
    table = table.reshape(-1, 1, 64)  # (B, 1, 64)
    coefficients = (_blocks(plane) - 128.0) @ basis * scale  # (B, blocks, 64)
    # Quality 100 gives zero steps (BasicSR then returns NaN): no quantisation, its limit.
    quantised = torch.where(table > 0, torch.round(coefficients / table) * table, coefficients)
    pixels = (quantised * (scale * 4)) @ basis.T * 0.25 + 128.0
    return _unblocks(pixels, *plane.shape[-2:])


def jpeg_basicsr(image: Tensor, quality: Tensor) -> Tensor:
    """Encode and decode each sample at its own quality, 4:2:0, 8 x 8 blocks, hard rounding.

    Args:
        image: (B, 3, H, W) in [0, 1], any H and W (clipped to [0, 1] first).
        quality: (B,) in [1, 100]; at 100 the steps are zero and only the 4:2:0 chroma loss remains.

    Returns:
        (B, 3, H, W) float32 in [0, 1] (not quantised to 8 bits, as BasicSR's codec leaves it).
    """
    batch, _, height, width = image.shape
    device = image.device
    pad_h, pad_w = -height % 16, -width % 16
    x = F.pad(image.clamp(0, 1).float() * 255.0, (0, pad_w, 0, pad_h))  # (B, 3, H', W'), zeros bottom and right
    ycbcr = torch.einsum("dc,bchw->bdhw", torch.tensor(_RGB_TO_YCBCR, device=device), x)
    ycbcr = ycbcr + torch.tensor([0.0, 128.0, 128.0], device=device)[:, None, None]
    chroma = F.avg_pool2d(ycbcr[:, 1:], 2)  # (B, 2, H'/2, W'/2)
    luma_table, chroma_table = _tables(device)
    factor = quality_to_factor(quality.to(device))[:, None, None]  # (B, 1, 1)
    basis, scale = _dct_basis(device)
    luma = _code_plane(ycbcr[:, 0], luma_table * factor, basis, scale)
    cb, cr = (_code_plane(chroma[:, i], chroma_table * factor, basis, scale) for i in (0, 1))
    chroma = torch.stack((cb, cr), 1).repeat_interleave(2, -2).repeat_interleave(2, -1)  # (B, 2, H', W')
    decoded = torch.cat((luma[:, None], chroma), 1) - torch.tensor([0.0, 128.0, 128.0], device=device)[:, None, None]
    rgb = torch.einsum("dc,bchw->bdhw", torch.tensor(_YCBCR_TO_RGB, device=device), decoded)
    return (rgb.clamp(0, 255) / 255.0)[..., :height, :width]
