"""Real-ESRGAN second-order degradation (Wang et al. 2021, Sec. 3): draw per-sample parameters, then apply them.

``sample_realesrgan_params`` makes every random choice from one ``torch.Generator`` (noise included, through
per-sample seeds); ``apply_realesrgan`` is deterministic given those parameters and returns one LR image per
requested scale from the same draw. Resize scale and mode are drawn per sample, not per batch, so Real-ESRGAN's
180-pair training pool (which only exists to mix per-batch draws) is not needed. Samples whose sizes differ after a
random resize are processed one by one (samples of equal size are batched). No Lightning, no global RNG.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from yonos.degradations.bicubic import bicubic_downsample, quantize_8bit
from yonos.degradations.config import PRESETS, DegradationStageConfig, RealESRGANConfig, SecondStageConfig
from yonos.degradations.kernels import bernoulli, categorical, sample_blur_kernels, sample_final_sinc_kernels, uniform
from yonos.degradations.ops import RESIZE_MODES, add_noise, blur, jpeg, resize, usm_sharpen

__all__ = [
    "PRESETS",
    "DegradationStageConfig",
    "RealESRGANConfig",
    "RealESRGANParams",
    "SecondStageConfig",
    "StageParams",
    "apply_realesrgan",
    "realesrgan_target",
    "sample_realesrgan_params",
]

_SEED_BITS = 56  # per-sample seeds leave room for a stream id in the low bits of a 63-bit generator seed
_STREAM_BITS = 6


@dataclass
class StageParams:
    """Per-sample draws of one degradation stage; tensors are (B,) unless noted."""

    kernel: Tensor  # (B, 21, 21) float32, normalised
    kernel_type: Tensor  # long: index into config.KERNEL_TYPES, or kernels.SINC
    blur: Tensor  # bool; always True in stage 1
    resize_scale: Tensor  # float32; < 1 down, > 1 up, exactly 1 keep
    resize_mode: Tensor  # long: index into ops.RESIZE_MODES
    gaussian_noise: Tensor  # bool; False means Poisson noise
    noise_sigma: Tensor  # float32, 0-255 scale
    poisson_scale: Tensor  # float32
    gray_noise: Tensor  # bool
    jpeg_quality: Tensor  # float32, 0-100


@dataclass
class RealESRGANParams:
    """Every random choice of a batch's degradation, one entry per sample (edit fields to pin a branch)."""

    stage1: StageParams
    stage2: StageParams
    sinc_first: Tensor  # (B,) bool: final resize + sinc before the last JPEG (else JPEG first)
    final_resize_mode: Tensor  # (B,) long: index into ops.RESIZE_MODES
    sinc_kernel: Tensor  # (B, 21, 21) float32; a delta where no final sinc was drawn
    no_degradation: Tensor  # (B,) bool: LR is the plain bicubic downsample
    noise_seed: Tensor  # (B,) int64 on the CPU: seeds each sample's noise generators
    use_usm: bool = True
    usm_target: bool = True  # the no-degradation LR is made from the sharpened HR (see RealESRGANConfig)

    @property
    def batch_size(self) -> int:
        return self.sinc_first.shape[0]

    def to(self, device: torch.device | str) -> RealESRGANParams:
        """Move every tensor except the host-side noise seeds to ``device``."""
        return _map_tensors(self, lambda t: t.to(device), keep=frozenset({"noise_seed"}))

    @staticmethod
    def cat(params: Sequence[RealESRGANParams]) -> RealESRGANParams:
        """Concatenate along the batch, e.g. to build a validation batch from per-sample seeded draws."""
        if len({(p.use_usm, p.usm_target) for p in params}) != 1:
            raise ValueError("cannot concatenate parameters with different use_usm or usm_target")
        return _zip_tensors(params, torch.cat)


def _map_tensors(params: Any, fn: Callable[[Tensor], Tensor], keep: frozenset[str] = frozenset()) -> Any:
    changes = {}
    for f in fields(params):
        value = getattr(params, f.name)
        if isinstance(value, StageParams):
            changes[f.name] = _map_tensors(value, fn)
        elif isinstance(value, Tensor) and f.name not in keep:
            changes[f.name] = fn(value)
    return replace(params, **changes)


def _zip_tensors(items: Sequence[Any], fn: Callable[[list[Tensor]], Tensor]) -> Any:
    changes = {}
    for f in fields(items[0]):
        values = [getattr(item, f.name) for item in items]
        if isinstance(values[0], StageParams):
            changes[f.name] = _zip_tensors(values, fn)
        elif isinstance(values[0], Tensor):
            changes[f.name] = fn(values)
    return replace(items[0], **changes)


# Sampling.


def _sample_stage(stage: DegradationStageConfig, n: int, generator: torch.Generator, blur_prob: float) -> StageParams:
    draw = sample_blur_kernels(stage, n, generator)
    do_blur = bernoulli(blur_prob, n, generator)
    updown = categorical(stage.resize_prob, n, generator)  # 0 up, 1 down, 2 keep
    low, high = stage.resize_range
    up, down = uniform(1.0, high, n, generator), uniform(low, 1.0, n, generator)
    scale = torch.where(updown == 0, up, torch.where(updown == 1, down, torch.ones_like(up)))
    mode = torch.randint(0, len(RESIZE_MODES), (n,), generator=generator, device=generator.device)
    return StageParams(
        kernel=draw.kernel,
        kernel_type=draw.kernel_type,
        blur=do_blur,
        resize_scale=scale.float(),
        resize_mode=mode,
        gaussian_noise=bernoulli(stage.gaussian_noise_prob, n, generator),
        noise_sigma=uniform(*stage.noise_range, n, generator).float(),
        poisson_scale=uniform(*stage.poisson_scale_range, n, generator).float(),
        gray_noise=bernoulli(stage.gray_noise_prob, n, generator),
        jpeg_quality=uniform(*stage.jpeg_range, n, generator).float(),
    )


def sample_realesrgan_params(
    config: RealESRGANConfig,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> RealESRGANParams:
    """Draw every random choice of the second-order degradation for ``batch_size`` samples.

    Draws are made on the generator's device (so a CPU generator gives the same parameters for any target
    device) and moved to ``device`` (default: the generator's).
    """
    n = batch_size
    stage1 = _sample_stage(config.stage1, n, generator, blur_prob=1.0)
    stage2 = _sample_stage(config.stage2, n, generator, blur_prob=config.stage2.second_blur_prob)
    params = RealESRGANParams(
        stage1=stage1,
        stage2=stage2,
        sinc_first=bernoulli(0.5, n, generator),
        final_resize_mode=torch.randint(0, len(RESIZE_MODES), (n,), generator=generator, device=generator.device),
        sinc_kernel=sample_final_sinc_kernels(config.final_sinc_prob, n, generator),
        no_degradation=bernoulli(config.no_degradation_prob, n, generator),
        noise_seed=torch.randint(0, 2**_SEED_BITS, (n,), generator=generator, device=generator.device).cpu(),
        use_usm=config.use_usm,
        usm_target=config.usm_target,
    )
    return params.to(device if device is not None else generator.device)


# Application.

Images = list[Tensor]  # one (1, 3, h, w) tensor per sample; sizes differ after a random resize


def noise_generator_seed(sample_seed: int, stream: int) -> int:
    """The seed of a sample's noise generator for stream ``stream`` (0: stage 1, s: stage 2 of scale s)."""
    return (sample_seed << _STREAM_BITS) | stream


def _generators(seeds: Tensor, stream: int, device: torch.device) -> list[torch.Generator]:
    """One generator per sample for noise stream ``stream``."""
    return [torch.Generator(device=device).manual_seed(noise_generator_seed(seed, stream)) for seed in seeds.tolist()]


def _map_grouped(fn: Callable[..., Tensor], images: Images, active: Tensor, *per_sample) -> Images:
    """Apply ``fn(batch, *args)`` to the active samples, batching samples of equal size.

    ``per_sample`` holds (B,) tensors or length-B lists, indexed down to each group.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, flag in enumerate(active.tolist()):
        if flag:
            groups[tuple(images[i].shape)].append(i)
    out = list(images)
    for index in groups.values():
        args = [_take(a, index) for a in per_sample]
        for i, image in zip(index, fn(torch.cat([images[i] for i in index]), *args).split(1), strict=True):
            out[i] = image
    return out


def _take(values: Tensor | Sequence[Any], index: list[int]) -> Tensor | list[Any]:
    if isinstance(values, Tensor):
        return values[torch.tensor(index, device=values.device)]
    return [values[i] for i in index]


def _resize_each(images: Images, sizes: list[tuple[int, int]], modes: Tensor, scales: list[float] | None = None) -> Images:
    """Resize sample i to sizes[i] with RESIZE_MODES[modes[i]] (and BasicSR's ``scale_factor`` scales[i] when
    given), batching equal (input size, size, mode, scale)."""
    factors: list[float | None] = scales if scales is not None else [None] * len(images)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, mode in enumerate(modes.tolist()):
        groups[(tuple(images[i].shape), sizes[i], mode, factors[i])].append(i)
    out = list(images)
    for (_, size, mode, factor), index in groups.items():
        batch = resize(torch.cat([images[i] for i in index]), size, RESIZE_MODES[mode], factor)
        for i, image in zip(index, batch.split(1), strict=True):
            out[i] = image
    return out


def _blur_resize_noise(
    images: Images,
    stage: StageParams,
    sizes: list[tuple[int, int]],
    generators: list[torch.Generator],
    by_factor: bool,
) -> Images:
    """Steps 1-3 of a degradation stage; ``by_factor``: resize by ``scale_factor`` (BasicSR's stage 1) rather
    than to ``sizes`` (its stage 2; the output sizes are the same)."""
    images = _map_grouped(blur, images, stage.blur, stage.kernel)
    images = _resize_each(images, sizes, stage.resize_mode, stage.resize_scale.tolist() if by_factor else None)
    everyone = torch.ones(len(images), dtype=torch.bool)
    noise = (stage.gaussian_noise, stage.noise_sigma, stage.poisson_scale, stage.gray_noise, generators)
    return _map_grouped(add_noise, images, everyone, *noise)


def _scaled_sizes(height: int, width: int, scales: Tensor) -> list[tuple[int, int]]:
    return [(max(1, int(height * s)), max(1, int(width * s))) for s in scales.tolist()]


def _second_stage(images: Images, params: RealESRGANParams, lr_size: tuple[int, int], stream: int) -> Tensor:
    """Stage 2 and the final resize / sinc / JPEG for one scale; returns the (B, 3, h, w) LR batch."""
    stage = params.stage2
    device = images[0].device
    # Stage 2's random resize is relative to this scale's LR size.
    sizes = _scaled_sizes(*lr_size, stage.resize_scale)
    images = _blur_resize_noise(images, stage, sizes, _generators(params.noise_seed, stream, device), by_factor=False)
    # Real-ESRGAN's two orders: [resize + sinc] then JPEG, or JPEG then [resize + sinc].
    jpeg_first = ~params.sinc_first
    images = _map_grouped(jpeg, images, jpeg_first, stage.jpeg_quality)
    lr = torch.cat(_resize_each(images, [lr_size] * len(images), params.final_resize_mode))  # (B, 3, h, w)
    lr = blur(lr, params.sinc_kernel)
    if params.sinc_first.any():
        index = params.sinc_first.nonzero().squeeze(1)
        lr = lr.index_copy(0, index.to(device), jpeg(lr[index.to(device)], stage.jpeg_quality[index]))
    return quantize_8bit(lr)


def realesrgan_target(hr: Tensor, config: RealESRGANConfig) -> Tensor:
    """The HR image training compares against: USM-sharpened when ``use_usm`` and ``usm_target``, else ``hr``."""
    if not (config.use_usm and config.usm_target):
        return hr
    return usm_sharpen(hr.float()).to(hr.dtype)


def apply_realesrgan(hr: Tensor, params: RealESRGANParams, scales: Sequence[int]) -> dict[int, Tensor]:
    """Degrade an HR batch with pinned parameters into one LR batch per scale.

    Stage 1 is shared by all scales; the scales differ only from stage 2 on, whose resize and final size are
    relative to each scale's LR size. Same parameters and input on the same device give bit-identical output.

    Args:
        hr: (B, 3, H, W) in [0, 1]; H and W divisible by every scale.
        params: from :func:`sample_realesrgan_params`, best on ``hr.device``.
        scales: integer downscaling factors, e.g. (2, 4).

    Returns:
        {scale: (B, 3, H / scale, W / scale)} in [0, 1] on 8-bit levels, in ``hr``'s dtype.
    """
    batch, channels, height, width = hr.shape
    if channels != 3 or batch != params.batch_size:
        raise ValueError(f"expected (B={params.batch_size}, 3, H, W) images, got {tuple(hr.shape)}")
    for scale in scales:
        if not 1 <= scale < 2**_STREAM_BITS or height % scale or width % scale:
            raise ValueError(f"scale {scale} must be in [1, {2**_STREAM_BITS}) and divide the HR size {height}x{width}")
    # Half precision cannot hold 8-bit levels and the noise; work in float32.
    work = hr.float() if hr.dtype in (torch.float16, torch.bfloat16) else hr
    # Stage 1, at HR resolution.
    x = usm_sharpen(work) if params.use_usm else work
    sizes = _scaled_sizes(height, width, params.stage1.resize_scale)
    generators = _generators(params.noise_seed, 0, hr.device)
    images = _blur_resize_noise(list(x.split(1)), params.stage1, sizes, generators, by_factor=True)
    images = _map_grouped(jpeg, images, torch.ones(batch, dtype=torch.bool), params.stage1.jpeg_quality)
    # Stage 2 and the final steps, per scale.
    out = {}
    target = x if params.usm_target else work  # what training compares against (see realesrgan_target)
    for scale in scales:
        lr = _second_stage(images, params, (height // scale, width // scale), stream=scale)
        if params.no_degradation.any():
            index = params.no_degradation.nonzero().squeeze(1).to(hr.device)
            lr = lr.index_copy(0, index, bicubic_downsample(target[index], scale))
        out[scale] = lr.to(hr.dtype)
    return out
