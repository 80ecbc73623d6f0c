"""YonosSRPipeline: one-step super-resolution as a diffusers pipeline (save / load in safetensors, tiling, colour fix).

The sampling maths is yonos.diffusion's (``ddim_sample`` -> ``predict_x0``); tiles and colour fix come from
yonos.tiling and yonos.colorfix. File handling (alpha, bit depth, metadata) is ``yonos upscale``'s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Literal

import diffusers
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from yonos.colorfix import COLOR_FIX_MODES, ColorFix, apply_color_fix
from yonos.degradations import upsample_to
from yonos.diffusion import ddim_sample
from yonos.images import to_rgb8
from yonos.models import PROMPT_LENGTH, LatentCodec, SRDenoiser, weight_dtype
from yonos.tiling import tiled_map

ImageInput = PIL.Image.Image | Tensor | list[PIL.Image.Image | Tensor]
OutputType = Literal["pil", "pt", "np"]
Generators = torch.Generator | list[torch.Generator] | None

DEFAULT_TILE_SIZE = 512
"""Output pixels per tile side: SD's training resolution (64 x 64 latents), the size the UNet has seen in training.
Measured (benchmarks/inference.py, H100): sd21-base with a bf16 UNet and an fp32 VAE peaks at 3.2 GiB with these
tiles, 1.2 GiB above the loaded weights, at 512² and at 2048² output alike: it fits any GPU that holds the model."""
DEFAULT_TILE_OVERLAP = 128
"""A quarter of a tile (16 latent pixels), StableSR's ratio: room for a smooth Gaussian hand-over between tiles."""

class NonFiniteOutputError(ValueError):
    """The network produced NaN or inf (typically fp16 overflow); nothing should be written."""


class PromptEmbedding(ModelMixin, ConfigMixin):
    """The stored empty-prompt embedding (1, 77, D) as a pipeline component, saved in ``prompt_embedding/``."""

    @register_to_config
    def __init__(self, sequence_length: int = PROMPT_LENGTH, embedding_dim: int = 1024) -> None:
        super().__init__()
        self.prompt_embeds = nn.Parameter(torch.zeros(1, sequence_length, embedding_dim), requires_grad=False)

    @classmethod
    def from_tensor(cls, prompt_embeds: Tensor) -> PromptEmbedding:
        module = cls(sequence_length=prompt_embeds.shape[1], embedding_dim=prompt_embeds.shape[2])
        with torch.no_grad():
            module.prompt_embeds.copy_(prompt_embeds.detach())
        return module


@dataclass
class YonosSROutput(BaseOutput):
    """What the pipeline returns."""

    images: Any
    """PIL images, a (B, 3, H, W) tensor or a (B, H, W, 3) array in [0, 1]; lists of them when sizes differ."""
    metadata: dict[str, str]
    """The settings that made the images (scale, steps, colour fix, tiling, precision), for PNG text chunks."""


class YonosSRPipeline(DiffusionPipeline):
    """LR image -> SR image at ``scale`` with ``num_inference_steps`` DDIM steps (1 = YONOS-SR).

    The noise schedule, the parameterisation (``prediction_type``) and the zero-terminal-SNR flag live in the
    scheduler's config; the magnification the model was trained for is the pipeline config's ``scale``.
    """

    model_cpu_offload_seq = "unet->vae"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        prompt_embedding: PromptEmbedding,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, prompt_embedding=prompt_embedding)
        self.register_to_config(scale=scale)

    @classmethod
    def from_models(
        cls, denoiser: SRDenoiser, codec: LatentCodec, scheduler: DDIMScheduler, scale: int
    ) -> YonosSRPipeline:
        """The pipeline around a training stage's networks (shared, not copied) and its scheduler."""
        embedding = PromptEmbedding.from_tensor(denoiser.prompt_embeds).to(denoiser.prompt_embeds.device)
        return cls(unet=denoiser.unet, vae=codec.vae, scheduler=scheduler, prompt_embedding=embedding, scale=scale)

    # Views of the components as the training code sees them (same modules, no copies).

    @property
    def denoiser(self) -> SRDenoiser:
        return SRDenoiser(self.unet, self.prompt_embedding.prompt_embeds)

    @property
    def codec(self) -> LatentCodec:
        return LatentCodec(self.vae)

    @property
    def size_multiple(self) -> int:
        """Output sizes are padded to this: the VAE factor times the UNet's total downsampling."""
        return self.codec.downsample_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' ``load_config``, reading folders exported by yonos 0.1.0 before the class registered itself
        with diffusers: their ``_class_name`` ``["yonos_pipeline", "YonosSRPipeline"]`` pointed at a loader file that
        diffusers runs only with ``trust_remote_code``; loading through this class needs neither."""
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), (list, tuple)) and config["_class_name"][-1] == cls.__name__:
            config["_class_name"] = cls.__name__
        return loaded

    # Inference.

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        scale: int | None = None,
        num_inference_steps: int = 1,
        generator: Generators = None,
        tile_size: int | None = DEFAULT_TILE_SIZE,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        color_fix: ColorFix = "none",
        output_type: OutputType = "pil",
        vae_dtype: torch.dtype | None = None,
        return_dict: bool = True,
    ) -> YonosSROutput | tuple:
        """Super-resolve ``image`` (PIL images, or tensors (3, h, w) / (B, 3, h, w) in [0, 1], or a list of them).

        Args:
            scale: integer magnification; the model's training scale (``config.scale``) when None.
            generator: one generator for all noise, or one per image (then image i's noise depends on it only).
            tile_size: tile side in output pixels (rounded down to ``size_multiple``); None disables tiling.
                Images that fit in one tile take the untiled path.
            tile_overlap: output pixels shared by neighbouring tiles (rounded down to the VAE factor).
            color_fix: ``adain`` / ``wavelet`` against the bicubic-upsampled LR, or ``none``.
            vae_dtype: precision of the VAE; float32 when None (fp16 VAE decoding overflows to NaN). The VAE is
                cast in place. The UNet runs in its own dtype (``dtype`` / ``torch_dtype`` of ``from_pretrained``).

        Raises:
            NonFiniteOutputError: the UNet or the decoder produced NaN / inf for an image (named by its index).
        """
        scale = int(scale or self.config.scale)
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        if output_type not in ("pil", "pt", "np"):
            raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        if color_fix not in COLOR_FIX_MODES:
            raise ValueError(f"unknown color_fix {color_fix!r}; choose from {COLOR_FIX_MODES}")
        tiles = self._tile_plan(tile_size, tile_overlap)
        vae_dtype = vae_dtype or torch.float32
        if weight_dtype(self.vae) != vae_dtype:
            self.vae.to(dtype=vae_dtype)
        batches = _to_batches(image, next(self.unet.parameters()).device)  # DiffusionPipeline.device walks modules
        generators = _split_generators(generator, [len(batch) for batch in batches])
        results, first_index = [], 0
        for batch, batch_generator in zip(batches, generators):
            sr = self._super_resolve(batch, scale, num_inference_steps, batch_generator, tiles, color_fix, first_index)
            results.extend(sr.unbind(0))
            first_index += len(batch)
        metadata = {
            "yonos:scale": str(scale),
            "yonos:steps": str(num_inference_steps),
            "yonos:color_fix": color_fix,
            "yonos:tile_size": str(tiles[0]) if tiles else "none",
            "yonos:tile_overlap": str(tiles[1]) if tiles else "none",
            "yonos:unet_dtype": str(weight_dtype(self.unet)).removeprefix("torch."),
            "yonos:vae_dtype": str(vae_dtype).removeprefix("torch."),
        }
        images = _to_output(results, output_type)
        return YonosSROutput(images=images, metadata=metadata) if return_dict else (images, metadata)

    def _tile_plan(self, tile_size: int | None, tile_overlap: int) -> tuple[int, int] | None:
        """(tile, overlap) in output pixels, aligned to what the networks need; None when tiling is off."""
        if tile_size is None or tile_size <= 0:
            return None
        multiple, factor = self.size_multiple, self.codec.downsample_factor
        tile = max(multiple, tile_size // multiple * multiple)
        overlap = max(0, tile_overlap) // factor * factor
        if overlap >= tile:
            raise ValueError(f"tile_overlap ({tile_overlap}) must be smaller than tile_size ({tile})")
        return tile, overlap

    def _super_resolve(
        self,
        lr: Tensor,
        scale: int,
        num_steps: int,
        generator: Generators,
        tiles: tuple[int, int] | None,
        color_fix: ColorFix,
        first_index: int,
    ) -> Tensor:
        """One batch of same-size LR images (B, 3, h, w) -> SR (B, 3, h*scale, w*scale) in [0, 1], float32."""
        height, width = lr.shape[-2] * scale, lr.shape[-1] * scale
        codec = self.codec
        denoiser = SRDenoiser(self.unet, self.prompt_embedding.prompt_embeds.to(lr.device))
        factor, channels = codec.downsample_factor, self.unet.config.out_channels
        tile, overlap = tiles if tiles else (1 << 30, 0)
        latent_tile, latent_overlap = tile // factor, overlap // factor
        names = f"image {first_index}" if len(lr) == 1 else f"images {first_index}-{first_index + len(lr) - 1}"

        # Encode the bicubic-upsampled LR, padded to the size the networks need. The full-size images are dropped
        # as soon as they are encoded (the colour fix redraws the cheap bicubic reference): with tiling on, peak
        # memory is one tile's activations plus the decoder's output buffer, whatever the image size.
        padded = _pad_to_multiple(upsample_to(lr, (height, width)), self.size_multiple)  # (B, 3, H', W')
        z_lr = tiled_map(codec.encode, padded, tile, overlap, align=factor).float()  # (B, 4, H'/8, W'/8)
        del padded

        # Sample. Blending the raw network output of the tiles equals blending their x0 predictions: the
        # conversion in predict_x0 is linear with per-image coefficients.
        unet_dtype, unet_multiple = weight_dtype(self.unet), self.size_multiple // factor

        def denoise(z_t: Tensor, t: Tensor) -> Tensor:
            def on_tile(stacked: Tensor) -> Tensor:
                return denoiser(stacked[:, :channels].to(unet_dtype), stacked[:, channels:].to(unet_dtype), t).float()

            return tiled_map(on_tile, torch.cat([z_t, z_lr], dim=1), latent_tile, latent_overlap, align=unet_multiple)

        noise = _draw_noise(tuple(z_lr.shape), generator, z_lr.device)
        z_0 = ddim_sample(denoise, self.scheduler, tuple(z_lr.shape), num_steps, device=z_lr.device, noise=noise)
        _check_finite(z_0, f"{names}: the UNet ({unet_dtype}) output")

        # Decode, crop the padding, colour-correct.
        sr = tiled_map(codec.decode, z_0, latent_tile, latent_overlap)[..., :height, :width].float()
        _check_finite(sr, f"{names}: the VAE decoder ({weight_dtype(self.vae.decoder)}) output")
        if color_fix == "none":
            return sr
        return apply_color_fix(sr, upsample_to(lr, (height, width)), color_fix)


def _check_finite(tensor: Tensor, what: str) -> None:
    if not torch.isfinite(tensor).all():
        raise NonFiniteOutputError(f"{what} contains NaN or inf; run in float32 or bfloat16 (fp16 overflows)")


def _pad_to_multiple(image: Tensor, multiple: int) -> Tensor:
    """Pad bottom and right to multiples of ``multiple``: reflection, or replication when the image is too small."""
    height, width = image.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not pad_h and not pad_w:
        return image
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(image, (0, pad_w, 0, pad_h), mode=mode)


def _draw_noise(shape: tuple[int, ...], generator: Generators, device: torch.device) -> Tensor:
    """Starting noise (float32) drawn on the generator's device, then moved: a CPU generator gives the same noise on
    any device. With one generator per image, image i's noise is ``randn((1, ...), generator=generator[i])``."""
    if isinstance(generator, list):
        draws = [torch.randn((1, *shape[1:]), generator=g, device=g.device) for g in generator]
        return torch.cat(draws).to(device)
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device)


def _to_batches(image: ImageInput, device: torch.device) -> list[Tensor]:
    """The input as batches of same-size images (B, 3, h, w) in [0, 1], float32 on ``device``."""
    items = image if isinstance(image, list) else [image]
    if not items:
        raise ValueError("no image given")
    batches = []
    for index, item in enumerate(items):
        if isinstance(item, PIL.Image.Image):
            tensor = torch.from_numpy(to_rgb8(item).copy()).permute(2, 0, 1).float().div(255.0)[None]
        elif isinstance(item, Tensor):
            tensor = item[None] if item.ndim == 3 else item
            if tensor.ndim != 4 or tensor.shape[1] != 3:
                raise ValueError(
                    f"image {index}: expected (3, h, w) or (B, 3, h, w) RGB in [0, 1], got {tuple(item.shape)} "
                    "(split off alpha first; `yonos upscale` keeps it)"
                )
        else:
            raise TypeError(f"image {index}: expected a PIL image or a tensor, got {type(item).__name__}")
        batches.append(tensor.to(device=device, dtype=torch.float32))
    return batches


def _split_generators(generator: Generators, sizes: list[int]) -> list[Generators]:
    """The generator of each batch: the same one for all, or the batch's slice of a per-image list."""
    if not isinstance(generator, list):
        return [generator] * len(sizes)
    if len(generator) != sum(sizes):
        raise ValueError(f"got {len(generator)} generators for {sum(sizes)} images")
    bounds = np.cumsum([0, *sizes]).tolist()
    return [generator[start:end] for start, end in itertools.pairwise(bounds)]


def _to_output(images: list[Tensor], output_type: OutputType) -> Any:
    """(3, H, W) float tensors -> PIL list, a stacked tensor / array, or lists of them when sizes differ."""
    if output_type == "pil":
        return [PIL.Image.fromarray(_to_uint8(image)) for image in images]
    same_size = len({tuple(image.shape) for image in images}) == 1
    if output_type == "pt":  # one image: a view, not a copy of a possibly huge tensor
        return (images[0][None] if len(images) == 1 else torch.stack(images)) if same_size else images
    arrays = [image.permute(1, 2, 0).cpu().numpy() for image in images]  # (H, W, 3)
    return np.stack(arrays) if same_size else arrays


def _to_uint8(image: Tensor) -> np.ndarray:
    return image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _register_with_diffusers() -> None:
    """Make ``diffusers.YonosSRPipeline`` resolve: plain ``DiffusionPipeline.from_pretrained(DIR)`` looks the class
    that ``model_index.json`` names (``_class_name``) up in the diffusers namespace, so importing this module is all
    it needs (no ``trust_remote_code``, no code in the model folder)."""
    setattr(diffusers, YonosSRPipeline.__name__, YonosSRPipeline)


_register_with_diffusers()
