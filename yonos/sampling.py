"""Super-resolving a batch with a denoiser and a codec: the shared sampling path of validation and prediction.

Tiling, colour fix and file handling belong to the pipeline; this file only turns LR pixels into SR pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import Tensor, nn

from yonos.degradations import upsample_to
from yonos.diffusion import ddim_sample
from yonos.models import LatentCodec, SRDenoiser


def per_sample_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Starting noise (B, C, h, w) whose sample i depends on ``seeds[i]`` only (independent of batch size)."""
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generators])


def size_multiple(unet: nn.Module, codec: LatentCodec) -> int:
    """THE padding rule of validation, prediction and the pipeline: output sizes are padded to the VAE factor times
    the UNet's total downsampling (64 for SD), so the UNet never resizes its skip connections. One rule, so the
    same LR gives the same SR through the training modules and through the exported pipeline."""
    return codec.downsample_factor * 2 ** (len(unet.config.block_out_channels) - 1)


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_mode(size: tuple[int, int], padded: tuple[int, int]) -> str:
    """Reflection, or replication when the image is too small to reflect (pad >= side)."""
    return "reflect" if all(p - s < s for s, p in zip(size, padded)) else "replicate"


def pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Pad bottom and right to multiples of ``multiple`` by :func:`pad_mode`."""
    size = tuple(image.shape[-2:])
    padded = padded_size(*size, multiple)
    if padded == size:
        return image
    return F.pad(image, (0, padded[1] - size[1], 0, padded[0] - size[0]), mode=pad_mode(size, padded))


def upsampled_rows(lr: Tensor, scale: int, top: int, bottom: int, padded: tuple[int, int] | None = None) -> Tensor:
    """Rows [top, bottom) of ``pad_to_multiple(upsample_to(lr, scale x size))``, computed from the LR rows they
    need only: a band of the condition without the full-size image. ``padded`` (H', W') is the padded size (None:
    no padding). Bicubic reads two LR pixels on each side, so a margin of 2 LR rows makes the band exact."""
    height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
    padded = padded or (height, width)
    mode = pad_mode((height, width), padded)
    rows = torch.arange(top, min(bottom, padded[0]), device=lr.device)
    if mode == "reflect":
        rows = torch.where(rows < height, rows, 2 * (height - 1) - rows)
    rows = rows.clamp(0, height - 1)
    first, last = int(rows.min()), int(rows.max())
    lr_top, lr_bottom = max(0, first // scale - 2), min(lr.shape[-2], last // scale + 3)
    band = upsample_to(lr[..., lr_top:lr_bottom, :], ((lr_bottom - lr_top) * scale, width))
    band = band.index_select(-2, rows - lr_top * scale)
    if padded[1] > width:
        band = F.pad(band, (0, padded[1] - width, 0, 0), mode=mode if mode == "replicate" else "reflect")
    return band


@torch.no_grad()
def super_resolve(
    denoiser: SRDenoiser,
    codec: LatentCodec,
    scheduler: DDIMScheduler,
    lr: Tensor,
    scale: int,
    num_steps: int = 1,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """LR (B, 3, h, w) in [0, 1] -> SR (B, 3, h*scale, w*scale) in [0, 1] with ``num_steps`` DDIM steps.

    The condition is padded to :func:`size_multiple` by :func:`pad_to_multiple` and the output cropped back.
    """
    height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
    condition = pad_to_multiple(upsample_to(lr, (height, width)), size_multiple(denoiser.unet, codec))
    z_lr = codec.encode(condition)  # (B, 4, H'/8, W'/8)
    if noise is not None and noise.shape != z_lr.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(z_lr.shape)}")
    z_0 = ddim_sample(
        lambda z_t, t: denoiser(z_t, z_lr, t),
        scheduler,
        tuple(z_lr.shape),
        num_steps=num_steps,
        generator=generator,
        device=z_lr.device,
        dtype=z_lr.dtype,
        noise=noise,
    )
    return codec.decode(z_0)[..., :height, :width]


def sample_with_seeds(
    denoiser: SRDenoiser,
    codec: LatentCodec,
    scheduler: DDIMScheduler,
    lr: Tensor,
    scale: int,
    seeds: list[int],
    num_steps: int = 1,
) -> Tensor:
    """:func:`super_resolve` with the starting noise of sample i drawn from ``seeds[i]`` only."""
    factor = codec.downsample_factor
    padded = padded_size(lr.shape[-2] * scale, lr.shape[-1] * scale, size_multiple(denoiser.unet, codec))
    latent_shape = (lr.shape[0], 4, padded[0] // factor, padded[1] // factor)
    noise = per_sample_noise(latent_shape, seeds, lr.device)
    return super_resolve(denoiser, codec, scheduler, lr, scale, num_steps, noise=noise)
