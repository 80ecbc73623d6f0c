"""The sampling path of validation, ``yonos evaluate``, the decoder stage and YonosSRPipeline: LR pixels -> SR pixels.

:func:`super_resolve` is the one SR function: encode the condition, draw (or take) the starting latent, run
yonos.diffusion.ddim_sample, decode. Callers differ only in the callables they hand it: whole images
(:func:`untiled_calls`, the training modules and ``yonos evaluate``), tile rows and latent tiles (the pipeline), or
latents only (the decoder stage). One noise helper (:func:`randn`) and one padding rule (:func:`size_multiple`,
:func:`pad_to_multiple`) serve all of them. Tiling, colour fix and file handling belong to the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from torch import Tensor, nn

from yonos.degradations import upsample_to
from yonos.diffusion import ddim_sample
from yonos.models import LatentCodec, SRDenoiser

Generators = torch.Generator | list[torch.Generator] | None

Encode = Callable[[Tensor, int], Tensor]
"""(LR batch (B, 3, h, w) in [0, 1], scale) -> the condition latents z_lr (B, C, h', w')."""
Denoise = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(z_t, z_lr, t) -> the network's raw output, shaped like z_t."""
Decode = Callable[[Tensor, tuple[int, int]], Tensor]
"""(z_0, output size (H, W)) -> what :func:`super_resolve` returns (SR images cropped to H x W, for instance)."""
Noise = Tensor | Callable[[Tensor], Tensor]
"""The starting latent z_T, or how to draw it for the condition latents it must match (given z_lr)."""
SRStepCallback = Callable[[int, Tensor, Tensor, Tensor], Tensor]
"""``callback(step, timestep, z_t, z_lr)`` after each DDIM step; returns the z_t to continue from."""


def randn(
    shape: tuple[int, ...], generator: Generators, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> Tensor:
    """THE noise helper: standard normal noise of ``shape`` drawn on the generator's device, then moved to ``device``
    (a CPU generator gives the same noise on any device). With a list of generators, sample i is
    ``randn((1, ...), generator=generator[i])``: its noise does not depend on the batch it is drawn in."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        draws = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat(draws).to(device)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def seeded_noise(
    shape: tuple[int, ...], seeds: list[int], device: torch.device | str, dtype: torch.dtype = torch.float32
) -> Tensor:
    """:func:`randn` with sample i drawn from a generator on ``device`` seeded ``seeds[i]`` (independent of batch size)."""
    return randn(shape, [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds], device, dtype)


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
    lr: Tensor,
    scale: int,
    encode: Encode,
    denoise: Denoise,
    decode: Decode | None,
    scheduler: DDIMScheduler,
    noise: Noise,
    num_steps: int = 1,
    callback: SRStepCallback | None = None,
    progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None = None,
) -> Tensor:
    """THE SR function: z_lr = encode(lr, scale), z_0 = DDIM from ``noise`` with ``num_steps`` steps (1 = YONOS-SR),
    then ``decode(z_0, (h * scale, w * scale))``, or z_0 itself when ``decode`` is None."""
    z_lr = encode(lr, scale)
    z_T = noise(z_lr) if callable(noise) else noise
    if tuple(z_T.shape) != tuple(z_lr.shape):
        raise ValueError(f"noise shape {tuple(z_T.shape)} != latent shape {tuple(z_lr.shape)}")
    step_callback = None if callback is None else lambda step, timestep, z_t: callback(step, timestep, z_t, z_lr)
    z_0 = ddim_sample(lambda z_t, t: denoise(z_t, z_lr, t), scheduler, z_T, num_steps, step_callback, progress)
    size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
    return z_0 if decode is None else decode(z_0, size)


def untiled_calls(denoiser: SRDenoiser, codec: LatentCodec) -> tuple[Encode, Denoise, Decode]:
    """The callables of :func:`super_resolve` on whole images: the bicubic-upsampled LR padded to
    :func:`size_multiple` by :func:`pad_to_multiple` and encoded, the denoiser as is, the decoded output cropped back."""
    multiple = size_multiple(denoiser.unet, codec)

    def encode(lr: Tensor, scale: int) -> Tensor:
        size = (lr.shape[-2] * scale, lr.shape[-1] * scale)
        return codec.encode(pad_to_multiple(upsample_to(lr, size), multiple))  # (B, 4, H'/8, W'/8)

    def decode(z_0: Tensor, size: tuple[int, int]) -> Tensor:
        return codec.decode(z_0)[..., : size[0], : size[1]]

    return encode, denoiser, decode


def sample_with_noise(
    denoiser: SRDenoiser,
    codec: LatentCodec,
    scheduler: DDIMScheduler,
    lr: Tensor,
    scale: int,
    noise: Noise,
    num_steps: int = 1,
) -> Tensor:
    """LR (B, 3, h, w) in [0, 1] -> SR (B, 3, h*scale, w*scale) in [0, 1]: :func:`super_resolve` on whole images."""
    return super_resolve(lr, scale, *untiled_calls(denoiser, codec), scheduler, noise, num_steps)


def sample_with_seeds(
    denoiser: SRDenoiser,
    codec: LatentCodec,
    scheduler: DDIMScheduler,
    lr: Tensor,
    scale: int,
    seeds: list[int],
    num_steps: int = 1,
) -> Tensor:
    """:func:`sample_with_noise` with the starting noise of sample i drawn from ``seeds[i]`` only."""
    noise = lambda z_lr: seeded_noise(tuple(z_lr.shape), seeds, lr.device)  # noqa: E731
    return sample_with_noise(denoiser, codec, scheduler, lr, scale, noise, num_steps)
