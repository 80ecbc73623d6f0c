"""Super-resolving a batch with a denoiser and a codec: the shared sampling path of validation and prediction.

Tiling, colour fix and file handling belong to the pipeline; this file only turns LR pixels into SR pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import Tensor

from yonos.degradations import upsample_to
from yonos.diffusion import ddim_sample
from yonos.models import LatentCodec, SRDenoiser


def per_sample_noise(shape: tuple[int, ...], seeds: list[int], device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """Starting noise (B, C, h, w) whose sample i depends on ``seeds[i]`` only (independent of batch size)."""
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generators])


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

    Sizes that are not a multiple of the VAE factor are padded by reflection and cropped back.
    """
    height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
    factor = codec.downsample_factor
    pad_h, pad_w = (-height) % factor, (-width) % factor
    condition = upsample_to(lr, (height, width))  # (B, 3, H, W)
    if pad_h or pad_w:
        condition = F.pad(condition, (0, pad_w, 0, pad_h), mode="reflect")
    z_lr = codec.encode(condition)  # (B, 4, H/8, W/8)
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
    height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
    latent_shape = (lr.shape[0], 4, -(-height // factor), -(-width // factor))
    noise = per_sample_noise(latent_shape, seeds, lr.device)
    return super_resolve(denoiser, codec, scheduler, lr, scale, num_steps, noise=noise)
