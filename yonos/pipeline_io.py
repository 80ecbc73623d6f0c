"""What YonosSRPipeline takes and returns: diffusers' image-input conventions, output collectors, and the latent
codec over any of diffusers' SD-latent autoencoders (the noise comes from yonos.sampling.randn).

Inputs follow ``diffusers.image_processor.PipelineImageInput``: PIL images, numpy arrays (h, w, 3) / (B, h, w, 3),
tensors (3, h, w) / (B, 3, h, w), or lists of them. Floats are read as [0, 1], or as [-1, 1] when they hold a
negative value (the rule of diffusers' ``VaeImageProcessor``); uint8 / uint16 are divided by their peak.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from torch import Tensor, nn

from yonos.images import decode_pil, rgb8
from yonos.models import LatentCodec, weight_dtype
from yonos.pca_vae import BlockPCAAutoencoder

ImageInput = PIL.Image.Image | np.ndarray | Tensor | list[PIL.Image.Image | np.ndarray | Tensor]
_INTEGER_PEAKS = {torch.uint8: 255.0, torch.uint16: 65535.0}


def _as_unit_range(tensor: Tensor, what: str) -> Tensor:
    """An integer or float image tensor as float32 in [0, 1] (see the module docstring for the rules)."""
    if tensor.dtype in _INTEGER_PEAKS:
        return tensor.float().div_(_INTEGER_PEAKS[tensor.dtype])
    if not tensor.is_floating_point():
        raise TypeError(f"{what}: unsupported dtype {tensor.dtype}; pass uint8, uint16 or float images")
    tensor = tensor.float()
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0:  # diffusers' VaeImageProcessor: a negative value means the image is in [-1, 1]
        if low < -1.0 - 1e-3 or high > 1.0 + 1e-3:
            raise ValueError(f"{what}: values in [{low:.3g}, {high:.3g}]; expected [0, 1] or [-1, 1]")
        return tensor.add(1.0).div_(2.0)
    if high > 1.0 + 1e-3:
        raise ValueError(f"{what}: float values up to {high:.3g}; expected [0, 1] (divide 0-255 data by 255)")
    return tensor


def _one_item(item: Any, index: int) -> Tensor:
    """One input item as (B, 3, h, w) float32 in [0, 1] on the CPU or its own device."""
    what = f"image {index}"
    if isinstance(item, PIL.Image.Image):
        return rgb8(decode_pil(item))[None]
    if isinstance(item, np.ndarray):
        array = item[..., None] if item.ndim == 2 else item
        if array.ndim not in (3, 4) or array.shape[-1] not in (1, 3):
            raise ValueError(f"{what}: expected an (h, w, 3) or (B, h, w, 3) array, got {item.shape} (drop alpha)")
        array = array[None] if array.ndim == 3 else array
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)  # (B, C, h, w)
    elif isinstance(item, Tensor):
        tensor = item[None] if item.ndim == 3 else item
        if tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
            raise ValueError(
                f"{what}: expected (3, h, w) or (B, 3, h, w) RGB, got {tuple(item.shape)} "
                "(split off alpha first; `yonos upscale` keeps it)"
            )
    else:
        raise TypeError(f"{what}: expected a PIL image, a numpy array or a tensor, got {type(item).__name__}")
    tensor = _as_unit_range(tensor, what)
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


def to_items(image: ImageInput, device: torch.device) -> list[Tensor]:
    """The input as a list of items (B_i, 3, h_i, w_i), float32 in [0, 1] on ``device``."""
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError("no image given")
    return [_one_item(item, index).to(device=device, dtype=torch.float32) for index, item in enumerate(items)]


def same_size_batches(
    items: list[Tensor], noise: list[Tensor], batch_size: int
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """(output indices, LR batch, noise batch): same-size images together, at most ``batch_size`` per batch."""
    by_size: dict[tuple[int, int], list[tuple[int, Tensor, Tensor]]] = {}
    index = 0
    for item, item_noise in zip(items, noise):
        for image, image_noise in zip(item.split(1), item_noise.split(1)):
            by_size.setdefault(tuple(image.shape[-2:]), []).append((index, image, image_noise))
            index += 1
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            lr, z = torch.cat([c[1] for c in chunk]), torch.cat([c[2] for c in chunk])
            yield [c[0] for c in chunk], lr, z


class NonFiniteOutputError(ValueError):
    """The network produced NaN or inf (typically fp16 overflow); nothing should be written."""


def check_finite(tensor: Tensor, indices: list[int], what: str) -> None:
    """Raise naming the images (output indices) of the batch ``tensor`` that hold NaN or inf."""
    finite = torch.isfinite(tensor.flatten(1)).all(1)
    if not finite.all():
        bad = [str(index) for index, ok in zip(indices, finite.tolist()) if not ok]
        names = f"image {bad[0]}" if len(bad) == 1 else f"images {', '.join(bad)}"
        raise NonFiniteOutputError(f"{names}: {what} contains NaN or inf; run in float32 or bfloat16 (fp16 overflows)")


class AnyLatentCodec(LatentCodec):
    """:class:`LatentCodec` over any of diffusers' SD-latent autoencoders: ``AutoencoderKL`` (SD's VAE),
    ``AutoencoderTiny`` (TAESD: fast previews) and ``ConsistencyDecoderVAE`` (its decoder is a 2-step diffusion
    model, seeded by ``decode_generator``). Latents are scaled by the VAE's ``scaling_factor`` in every case."""

    decode_generator: torch.Generator | None = None

    def encode(self, image: Tensor) -> Tensor:
        if isinstance(self.vae, (AutoencoderKL, BlockPCAAutoencoder)):
            return super().encode(image)
        encoded = self.vae.encode(image.to(weight_dtype(self.vae.encoder)) * 2.0 - 1.0)
        if hasattr(encoded, "latent_dist"):
            latent = encoded.latent_dist.mode()
        else:
            latent = encoded.latents  # AutoencoderTiny: deterministic
        return latent * self.scaling_factor

    def decode(self, latent: Tensor, clamp: bool = True) -> Tensor:
        if isinstance(self.vae, (AutoencoderKL, BlockPCAAutoencoder)):
            return super().decode(latent) if clamp else super().decode(latent, clamp=False)
        latent = latent.to(weight_dtype(self.vae)) / self.scaling_factor
        if self.decode_generator is not None and "generator" in _parameters(self.vae.decode):
            image = self.vae.decode(latent, generator=self.decode_generator).sample
        else:
            image = self.vae.decode(latent).sample
        image = (image.float() + 1.0) / 2.0
        return image.clamp(0.0, 1.0) if clamp else image


def _parameters(fn: Any) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8."""
    return images.clamp(0, 1).mul(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class OutputBuffer:
    """Collects the output bands of a batch of images into what ``output_type`` asks for, holding only the final
    representation: uint8 for PIL, float32 (B, H, W, 3) for numpy, float32 (B, 3, H, W) for tensors."""

    def __init__(self, batch: int, height: int, width: int, output_type: str, device: torch.device) -> None:
        self.output_type = output_type
        if output_type == "pil":
            self.data: Any = np.empty((batch, height, width, 3), np.uint8)
        elif output_type == "np":
            self.data = np.empty((batch, height, width, 3), np.float32)
        else:
            self.data = torch.empty((batch, 3, height, width), dtype=torch.float32, device=device)

    def write(self, top: int, rows: Tensor) -> None:
        bottom = top + rows.shape[-2]
        if self.output_type == "pil":
            self.data[:, top:bottom] = to_uint8(rows)
        elif self.output_type == "np":
            self.data[:, top:bottom] = rows.permute(0, 2, 3, 1).cpu().numpy()
        else:
            self.data[..., top:bottom, :] = rows

    def images(self) -> list[Any]:
        if self.output_type == "pil":
            return [PIL.Image.fromarray(image) for image in self.data]
        return list(self.data)


def stack_outputs(images: list[Any], output_type: str) -> Any:
    """PIL list as is; tensors / arrays stacked when all have one size, else the list."""
    if output_type in ("pil",) or not images:
        return images
    if len({tuple(image.shape) for image in images}) != 1:
        return images
    if output_type == "np":
        return np.stack(images)
    return images[0][None] if len(images) == 1 else torch.stack(images)


class _Dispatch(nn.Module):
    """``forward(method, *args)`` calls ``codec.method(*args)``: lets ``functional_call`` swap the VAE's weights."""

    def __init__(self, codec: LatentCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.codec, method)(*args)


def vae_compute_dtype(vae: nn.Module, requested: torch.dtype) -> torch.dtype:
    """The dtype the VAE will compute in: ``requested``, or the stored one under accelerate's offload hooks (the
    weights are not at hand to cast) and for float8 storage (layerwise casting does its own casts)."""
    stored = weight_dtype(vae)
    offloaded = hasattr(vae, "_hf_hook") or next(vae.parameters()).device.type == "meta"
    return stored if offloaded or stored.itemsize == 1 else requested


class CastCodec:
    """The codec computing in ``dtype`` without changing the VAE: when the stored weights have another dtype, each
    call runs on cast copies of them (``torch.func.functional_call``; the copies live for one pipeline call). Under
    accelerate's offload hooks the weights are not at hand and the VAE runs in its stored dtype (``dtype`` says
    which one ran)."""

    def __init__(self, codec: AnyLatentCodec, dtype: torch.dtype) -> None:
        self.codec, self.dtype = codec, vae_compute_dtype(codec.vae, dtype)
        if self.dtype == weight_dtype(codec.vae):
            self._weights = None
        else:
            self._dispatch = _Dispatch(codec)
            self._weights = {f"codec.{name}": p.to(self.dtype) for name, p in codec.named_parameters()}

    @property
    def downsample_factor(self) -> int:
        return self.codec.downsample_factor

    def encode(self, image: Tensor) -> Tensor:
        return self._call("encode", image)

    def decode(self, latent: Tensor) -> Tensor:
        return self._call("decode", latent)

    def _call(self, method: str, x: Tensor) -> Tensor:
        if self._weights is None:
            return getattr(self.codec, method)(x)
        return torch.func.functional_call(self._dispatch, self._weights, (method, x))


@dataclass
class YonosSROutput(ImagePipelineOutput):
    """What the pipeline returns: diffusers' ``ImagePipelineOutput`` plus the settings that made the images."""

    images: Any
    """PIL images, a (B, 3, H, W) tensor or a (B, H, W, 3) array in [0, 1] (lists of them when sizes differ), or
    the (B, 4, h, w) latents for ``output_type="latent"``."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The settings that made the images (scale, steps, colour fix, tiling, precision), for PNG text chunks."""
