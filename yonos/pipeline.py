"""YonosSRPipeline: one-step super-resolution as a diffusers pipeline (save / load in safetensors, tiling, colour fix).

Sampling is yonos.sampling.super_resolve (the function validation and evaluation call) with tiled callables; tiles and colour
fix come from yonos.tiling and yonos.colorfix, the input conventions from yonos.pipeline_io. Large images stream:
the condition, the VAE passes, the colour fix and the output are computed band by band of tile rows, so host and
device memory hold the latents plus one band, whatever the image size. File handling is ``yonos upscale``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, ModelMixin, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from torch import Tensor, nn

from yonos.colorfix import COLOR_FIX_MODES, ColorFix, ColorFixRows
from yonos.model_card import add_load_hint, write_model_card
from yonos.models import SRDenoiser, compute_dtype
from yonos.pipeline_io import (  # noqa: F401 - NonFiniteOutputError: part of this module's interface
    AnyLatentCodec,
    CastCodec,
    ImageInput,
    NonFiniteOutputError,
    OutputBuffer,
    YonosSROutput,
    check_finite,
    same_size_batches,
    stack_outputs,
    to_items,
    vae_compute_dtype,
)
from yonos.prompt_embedding import PromptEmbedding  # folders exported before it moved name yonos.pipeline
from yonos.sampling import Generators, padded_size, randn, size_multiple, super_resolve, upsampled_rows
from yonos.tile_norm import record_stats, sample_tiles, shared_stats
from yonos.tiling import tile_grid, tiled_map, tiled_rows

OutputType = Literal["pil", "pt", "np", "latent"]
TileNorm = Literal["shared", "tile"]

DEFAULT_TILE_SIZE = 512
"""Output pixels per tile side: SD's training resolution (64 x 64 latents), the size the UNet has seen in training.
Measured (benchmarks/inference.py, H100): sd21-base with a bf16 UNet and an fp32 VAE peaks at 3.2 GiB with these
tiles, 1.2 GiB above the loaded weights, at 512² and at 2048² output alike: it fits any GPU that holds the model."""
DEFAULT_TILE_OVERLAP = 128
"""A quarter of a tile (16 latent pixels), StableSR's ratio: room for a smooth Gaussian hand-over between tiles."""

STAT_TILES = 16
"""Tiles whose GroupNorm statistics are pooled for ``tile_norm="shared"`` (spread over the image; all when fewer)."""


@dataclass(frozen=True)
class _Settings:
    """One call's options, checked."""

    scale: int
    steps: int
    tiles: tuple[int, int] | None
    tiles_per_call: int
    tile_norm: TileNorm
    color_fix: ColorFix
    vae_dtype: torch.dtype


class YonosSRPipeline(DiffusionPipeline):
    """LR image -> SR image at ``scale`` with ``num_inference_steps`` DDIM steps (1 = YONOS-SR).

    The noise schedule, the parameterisation (``prediction_type``) and the zero-terminal-SNR flag live in the
    scheduler's config; the magnification the model was trained for is the pipeline config's ``scale``. The VAE
    may be any of diffusers' SD-latent autoencoders (``AutoencoderKL``, ``AutoencoderTiny``,
    ``ConsistencyDecoderVAE``) with the UNet's latent space.
    """

    model_cpu_offload_seq = "unet->vae"
    _exclude_from_cpu_offload = ["prompt_embedding"]  # 77 x D numbers: kept on the execution device
    _callback_tensor_inputs = ["latents", "image_latents"]

    def __init__(
        self, unet: UNet2DConditionModel, vae: ModelMixin, scheduler: DDIMScheduler, prompt_embedding: PromptEmbedding,
        scale: int = 4, target: str = "x0",
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler, prompt_embedding=prompt_embedding)
        self.register_to_config(scale=scale, target=target)

    @classmethod
    def from_models(cls, denoiser: SRDenoiser, codec: Any, scheduler: DDIMScheduler, scale: int) -> YonosSRPipeline:
        """The pipeline around a training stage's networks (shared, not copied) and its scheduler."""
        embedding = PromptEmbedding.from_tensor(denoiser.prompt_embeds).to(denoiser.prompt_embeds.device)
        return cls(
            unet=denoiser.unet, vae=codec.vae, scheduler=scheduler, prompt_embedding=embedding, scale=scale,
            target=denoiser.target,
        )

    @property
    def components(self) -> dict[str, Any]:
        """diffusers' components plus the ``scale`` config, so ``YonosSRPipeline(**pipe.components)`` keeps it."""
        return {**super().components, "scale": self.config.scale, "target": self.config.get("target", "x0")}

    # Views of the components as the training code sees them (same modules, no copies).

    @property
    def denoiser(self) -> SRDenoiser:
        """The UNet as the training code sees it, reading its output for the pipeline config's ``target``."""
        return self._denoiser(self.prompt_embedding.prompt_embeds.device)

    def _denoiser(self, device: torch.device) -> SRDenoiser:
        denoiser = SRDenoiser(self.unet, self.prompt_embedding.prompt_embeds.to(device))
        target = self.config.get("target", "x0")  # folders exported before the option diffuse z_0
        return denoiser.use_target(target, self.scheduler.alphas_cumprod, self.scheduler.config.prediction_type)

    @property
    def codec(self) -> AnyLatentCodec:
        codec = AnyLatentCodec(self.vae)
        if hasattr(self.vae, "decoder_unet"):  # ConsistencyDecoderVAE: its decoder samples; seeded, deterministic
            codec.decode_generator = torch.Generator(next(self.vae.parameters()).device).manual_seed(0)
        return codec

    @property
    def size_multiple(self) -> int:
        """Output sizes are padded to this (yonos.sampling.size_multiple: the rule validation uses too)."""
        return size_multiple(self.unet, self.codec)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` (e.g. in a callback) to skip the remaining steps; the current latents
        are decoded."""
        return getattr(self, "_interrupt", False)

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained`` plus a model card (``README.md``) when the folder has none, and a ``_yonos``
        entry in ``model_index.json`` saying what loading the folder needs."""
        super().save_pretrained(save_directory, *args, **kwargs)
        add_load_hint(Path(save_directory) / "model_index.json")
        card = Path(save_directory) / "README.md"
        if not card.exists():
            write_model_card(card, self)

    # Inference.

    @torch.no_grad()
    def __call__(
        self,
        image: ImageInput,
        scale: int | None = None,
        num_inference_steps: int = 1,
        generator: Generators = None,
        latents: Tensor | None = None,
        num_images_per_prompt: int = 1,
        batch_size: int = 8,
        tile_size: int | None = DEFAULT_TILE_SIZE,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        tiles_per_call: int = 1,
        tile_norm: TileNorm = "shared",
        color_fix: ColorFix = "none",
        output_type: OutputType = "pil",
        vae_dtype: torch.dtype | None = None,
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict] | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> YonosSROutput | tuple:
        """Super-resolve ``image``: anything ``diffusers.image_processor.PipelineImageInput`` holds (see
        yonos.pipeline_io for the value ranges), a batch or a list of images of any sizes.

        Args:
            scale: integer magnification; the model's training scale (``config.scale``) when None.
            generator: one generator for all noise, or one per output image (image j's noise depends on it only).
            latents: the starting noise z_T, (N, 4, H'/8, W'/8) for N output images of one padded size H' x W'
                (the output size rounded up to ``size_multiple``); drawn from ``generator`` when None.
            num_images_per_prompt: samples per input image (different noise), returned next to each other.
            batch_size: at most this many same-size images go through the networks together.
            tile_size: tile side in output pixels (rounded down to ``size_multiple``); None or 0 disables tiling.
                Images that fit in one tile take the untiled path.
            tile_overlap: output pixels shared by neighbouring tiles (rounded down to the VAE factor).
            tiles_per_call: tiles stacked into one UNet / VAE call.
            tile_norm: ``shared``: the VAE's GroupNorms use one set of statistics per image, pooled over up to
                ``STAT_TILES`` of its tiles (yonos.tile_norm), so tiles do not shift tone; ``tile``: each tile its
                own (also what sequential CPU offload gets: its GroupNorm weights live inside accelerate's hooks).
            color_fix: ``adain`` / ``wavelet`` against the bicubic-upsampled LR, or ``none``.
            output_type: ``pil``, ``np``, ``pt``, or ``latent`` (the sampled latents, before decoding).
            vae_dtype: precision the VAE computes in; float32 when None (fp16 VAE decoding overflows to NaN). The
                VAE module is not changed: other dtypes run on cast copies of its weights for the call.
            callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` after every step, as in diffusers;
                ``tensors`` holds ``callback_on_step_end_tensor_inputs`` (of ``_callback_tensor_inputs``), and a
                returned ``latents`` replaces the current one.

        Returns:
            ``YonosSROutput`` (``images``, ``metadata``), or the 1-tuple ``(images,)`` when not ``return_dict``.

        Raises:
            NonFiniteOutputError: the UNet or the decoder produced NaN / inf for an image (named by its index).
        """
        settings = self._settings(scale, num_inference_steps, tile_size, tile_overlap, tiles_per_call, tile_norm,
                                  color_fix, output_type, vae_dtype)
        callback_inputs = self._callback_inputs(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if num_images_per_prompt < 1 or batch_size < 1:
            raise ValueError(f"num_images_per_prompt and batch_size must be >= 1: {num_images_per_prompt}, {batch_size}")
        self._interrupt = False
        device = self._input_device()
        items = [item.repeat_interleave(num_images_per_prompt, 0) for item in to_items(image, device)]
        noise = self._noise(items, settings.scale, generator, latents, device)
        images: list[Any] = [None] * sum(len(item) for item in items)
        for indices, lr, batch_noise in same_size_batches(items, noise, batch_size):
            out_size = (lr.shape[-2] * settings.scale, lr.shape[-1] * settings.scale)
            sink = None if output_type == "latent" else OutputBuffer(len(indices), *out_size, output_type, device)
            z_0 = self._run(lr, batch_noise, settings, sink.write if sink else None, indices,
                            callback_on_step_end, callback_inputs)
            for index, result in zip(indices, z_0.unbind(0) if sink is None else sink.images()):
                images[index] = result
        self.maybe_free_model_hooks()
        images = stack_outputs(images, "pt" if output_type == "latent" else output_type)
        metadata = self._metadata(settings)
        return YonosSROutput(images=images, metadata=metadata) if return_dict else (images,)

    @torch.no_grad()
    def stream(
        self,
        image: Tensor,
        on_rows: Callable[[int, Tensor], None],
        scale: int | None = None,
        num_inference_steps: int = 1,
        generator: torch.Generator | None = None,
        tile_size: int | None = DEFAULT_TILE_SIZE,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        tiles_per_call: int = 1,
        tile_norm: TileNorm = "shared",
        color_fix: ColorFix = "none",
        vae_dtype: torch.dtype | None = None,
    ) -> dict[str, str]:
        """``__call__`` for one image too large to hold: ``on_rows(top, rows)`` receives the output in bands of
        rows (1, 3, n, W), float32 in [0, 1], top to bottom, and only the latents and one band are ever in memory.
        Same pixels as ``__call__`` with the same arguments. Returns the metadata."""
        settings = self._settings(scale, num_inference_steps, tile_size, tile_overlap, tiles_per_call, tile_norm,
                                  color_fix, "pt", vae_dtype)
        self._interrupt = False
        items = to_items(image, self._input_device())
        if len(items) != 1 or len(items[0]) != 1:
            raise ValueError("stream() takes one image")
        noise = self._noise(items, settings.scale, generator, None, items[0].device)
        self._run(items[0], noise[0], settings, on_rows, [0], None, [])
        self.maybe_free_model_hooks()
        return self._metadata(settings)

    # The steps of a call.

    def _settings(
        self, scale: int | None, steps: int, tile_size: int | None, tile_overlap: int, tiles_per_call: int,
        tile_norm: str, color_fix: str, output_type: str, vae_dtype: torch.dtype | None,
    ) -> _Settings:
        scale = int(scale or self.config.scale)
        if scale < 1 or steps < 1:
            raise ValueError(f"scale and num_inference_steps must be positive integers, got {scale}, {steps}")
        if output_type not in ("pil", "pt", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'pt', 'np' or 'latent', got {output_type!r}")
        if color_fix not in COLOR_FIX_MODES:
            raise ValueError(f"unknown color_fix {color_fix!r}; choose from {COLOR_FIX_MODES}")
        if tile_norm not in ("shared", "tile"):
            raise ValueError(f"tile_norm must be 'shared' or 'tile', got {tile_norm!r}")
        tiles = self._tile_plan(tile_size, tile_overlap)
        dtype = vae_compute_dtype(self.vae, vae_dtype or torch.float32)
        if any(hasattr(module, "_hf_hook") for module in self.vae.modules() if isinstance(module, nn.GroupNorm)):
            tile_norm = "tile"  # sequential offload: the GroupNorm weights exist only inside accelerate's hooks
        return _Settings(scale, steps, tiles, max(1, int(tiles_per_call)), tile_norm, color_fix, dtype)

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

    def _callback_inputs(self, callback: Any, names: list[str] | None) -> list[str]:
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            names = callback.tensor_inputs
        names = ["latents"] if names is None else list(names)
        unknown = [name for name in names if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} not in {self._callback_tensor_inputs}")
        return names

    def _input_device(self) -> torch.device:
        """``_execution_device`` (right under offload hooks), without its walk over every module when none is set."""
        first = next(self.unet.parameters())
        hooked = hasattr(self.unet, "_hf_hook") or hasattr(self.unet, "_diffusers_hook")
        if first.device.type != "meta" and not hooked:
            return first.device
        return self._execution_device

    def _noise(
        self, items: list[Tensor], scale: int, generator: Generators, latents: Tensor | None, device: torch.device
    ) -> list[Tensor]:
        """The starting noise (float32) of each input item (B_i, C, H'/8, W'/8): ``latents`` split, or drawn by
        yonos.sampling.randn: one generator draws the items in order; with one generator per output image, image
        j's noise depends on ``generator[j]`` only, whatever the batching."""
        factor, channels = self.codec.downsample_factor, self.unet.config.out_channels
        shapes = []
        for item in items:
            padded = padded_size(item.shape[-2] * scale, item.shape[-1] * scale, self.size_multiple)
            shapes.append((len(item), channels, padded[0] // factor, padded[1] // factor))
        total = sum(shape[0] for shape in shapes)
        if latents is None:
            if isinstance(generator, list) and len(generator) != total:
                raise ValueError(f"got {len(generator)} generators for {total} images (images x num_images_per_prompt)")
            starts = [sum(shape[0] for shape in shapes[:i]) for i in range(len(shapes))]
            own = [generator[start : start + shape[0]] if isinstance(generator, list) else generator
                   for start, shape in zip(starts, shapes)]
            return [randn(shape, gen, device) for shape, gen in zip(shapes, own)]
        expected = (total, *shapes[0][1:])
        if any(shape[1:] != shapes[0][1:] for shape in shapes) or tuple(latents.shape) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)}; these images need {expected} (one size only)")
        return list(latents.to(device=device, dtype=torch.float32).split([shape[0] for shape in shapes]))

    def _run(
        self, lr: Tensor, noise: Tensor, settings: _Settings, sink: Callable[[int, Tensor], None] | None,
        indices: list[int], callback: Any, callback_inputs: list[str],
    ) -> Tensor:
        """One batch of same-size LR images (B, 3, h, w) through yonos.sampling.super_resolve with tiled callables:
        encode by tile rows, denoise on latent tiles, and (with a ``sink``) decode, colour-fix and hand the output
        over band by band. Returns the sampled latents."""
        padded = padded_size(lr.shape[-2] * settings.scale, lr.shape[-1] * settings.scale, self.size_multiple)
        codec = CastCodec(self.codec, settings.vae_dtype)

        def finish(z_0: Tensor, size: tuple[int, int]) -> Tensor:
            check_finite(z_0, indices, f"the UNet ({compute_dtype(self.unet)}) output")
            if sink is not None:
                self._decode(z_0, lr, size, settings, codec, sink, indices)
            return z_0

        def progress(timesteps: Tensor) -> Iterator[Tensor]:  # the interrupt flag skips the remaining steps
            return (timestep for timestep in self.progress_bar(timesteps) if not self.interrupt)

        self._num_timesteps = settings.steps  # trailing DDIM: one timestep per step
        encode = lambda lr, scale: self._encode(lr, settings, padded, codec)  # noqa: E731
        return super_resolve(lr, settings.scale, encode, self._tiled_denoise(settings), finish, self.scheduler, noise,
                             settings.steps, self._step_callback(callback, callback_inputs), progress)

    def _encode(self, lr: Tensor, settings: _Settings, padded: tuple[int, int], codec: CastCodec) -> Tensor:
        """The padded, bicubic-upsampled LR encoded, tile row by tile row: the full-size condition is never built."""
        def read(top: int, bottom: int) -> Tensor:
            return upsampled_rows(lr, settings.scale, top, bottom, padded)

        tile, overlap = settings.tiles or (1 << 30, 0)
        if max(padded) <= tile:
            return codec.encode(read(0, padded[0])).float()
        stats = []
        if settings.tile_norm == "shared":
            starts = tile_grid(padded, tile, overlap, codec.downsample_factor)
            crops = (read(top, top + tile)[..., left : left + tile] for top, left in sample_tiles(starts, STAT_TILES))
            stats = record_stats(codec.encode, self.vae.encoder, crops)
        with shared_stats(self.vae.encoder, stats):
            factor = codec.downsample_factor
            bands = tiled_rows(codec.encode, read, padded, tile, overlap, factor, settings.tiles_per_call)
            return torch.cat([rows for _, rows in bands], dim=-2)

    def _tiled_denoise(self, settings: _Settings) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
        """(z_t, z_lr, t) -> the UNet's output, the UNet run on latent tiles of [z_t, z_lr] (yonos.tiling)."""
        factor, channels = self.codec.downsample_factor, self.unet.config.out_channels
        tile, overlap = settings.tiles or (1 << 30, 0)

        def denoise(z_t: Tensor, z_lr: Tensor, t: Tensor) -> Tensor:
            denoiser = self._denoiser(z_lr.device)

            def on_tile(stacked: Tensor) -> Tensor:
                t_tiles = t.repeat(stacked.shape[0] // len(t))  # stacked tiles: [tile 0's images, tile 1's, ...]
                z, c = stacked[:, :channels], stacked[:, channels:]  # float32: the denoiser casts the UNet's input
                return denoiser(z, c, t_tiles).float()

            stacked = torch.cat([z_t, z_lr], dim=1)
            align = self.size_multiple // factor
            return tiled_map(on_tile, stacked, tile // factor, overlap // factor, align, settings.tiles_per_call)

        return denoise

    def _step_callback(self, callback: Any, names: list[str]) -> Callable[..., Tensor] | None:
        """diffusers' ``callback_on_step_end`` as yonos.sampling's step callback."""
        if callback is None:
            return None

        def on_step(step: int, timestep: Tensor, latents: Tensor, z_lr: Tensor) -> Tensor:
            tensors = {"latents": latents, "image_latents": z_lr}
            returned = callback(self, step, timestep, {name: tensors[name] for name in names})
            return returned.pop("latents", latents)

        return on_step

    def _decode(
        self, z_0: Tensor, lr: Tensor, size: tuple[int, int], settings: _Settings, codec: CastCodec,
        sink: Callable[[int, Tensor], None], indices: list[int],
    ) -> None:
        """Decode by tile rows, crop the padding, colour-correct against the bicubic LR, hand each band to ``sink``."""
        height, width = size
        reference = lambda top, bottom: upsampled_rows(lr, settings.scale, top, bottom)  # noqa: E731
        fixer = ColorFixRows(settings.color_fix, reference, height)
        factor = codec.downsample_factor
        tile, overlap = settings.tiles or (1 << 30, 0)
        stats, latent_tile = [], tile // factor
        if settings.tile_norm == "shared" and max(z_0.shape[-2:]) * factor > tile:
            starts = tile_grid(tuple(z_0.shape[-2:]), latent_tile, overlap // factor, 1)
            offsets = sample_tiles(starts, STAT_TILES)
            crops = (z_0[..., t : t + latent_tile, left : left + latent_tile] for t, left in offsets)
            stats = record_stats(codec.decode, _decoder(self.vae), crops)
        with shared_stats(_decoder(self.vae), stats):
            if max(z_0.shape[-2:]) * factor <= tile:
                bands = iter([(0, codec.decode(z_0))])
            else:
                read = lambda top, bottom: z_0[..., top:bottom, :]  # noqa: E731
                bands = tiled_rows(codec.decode, read, tuple(z_0.shape[-2:]), tile // factor, overlap // factor,
                                   1, settings.tiles_per_call)
            for top, rows in bands:
                if top >= height:
                    continue
                rows = rows[..., : height - top, :width].float()
                check_finite(rows, indices, f"the VAE decoder ({codec.dtype}) output")
                for band_top, fixed in fixer.push(top, rows):
                    sink(band_top, fixed)
        for band_top, fixed in fixer.finish():
            sink(band_top, fixed)

    def _metadata(self, settings: _Settings) -> dict[str, str]:
        tiles = settings.tiles
        return {
            "yonos:scale": str(settings.scale),
            "yonos:steps": str(settings.steps),
            "yonos:color_fix": settings.color_fix,
            "yonos:tile_size": str(tiles[0]) if tiles else "none",
            "yonos:tile_overlap": str(tiles[1]) if tiles else "none",
            "yonos:tile_norm": settings.tile_norm,
            "yonos:unet_dtype": str(compute_dtype(self.unet)).removeprefix("torch."),
            "yonos:vae_dtype": str(settings.vae_dtype).removeprefix("torch."),
        }


def _decoder(vae: nn.Module) -> nn.Module:
    """The module a VAE decodes with (``decoder``; ``decoder_unet`` for ConsistencyDecoderVAE)."""
    return vae.decoder if hasattr(vae, "decoder") else vae.decoder_unet


def _register_with_diffusers() -> None:
    """Make ``diffusers.YonosSRPipeline`` resolve: plain ``DiffusionPipeline.from_pretrained(DIR)`` looks the class
    that ``model_index.json`` names (``_class_name``) up in the diffusers namespace, so importing this module is all
    it needs (no ``trust_remote_code``, no code in the model folder). yonos.pca_vae registers its codec the same
    way, for folders whose ``vae`` is the tiny base's ``BlockPCAAutoencoder``."""
    setattr(diffusers, YonosSRPipeline.__name__, YonosSRPipeline)


_register_with_diffusers()
