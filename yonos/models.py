"""The networks: the SR denoiser (SD UNet fed cat(z_t, z_lr)) and the latent codec (SD VAE + scaling factor).

Both are built from a pretrained Stable Diffusion folder (local path, or hub id where there is network) or
from a named architecture preset with random weights. Training logic lives in ``yonos.modules``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from yonos.diffusion import residual_input, residual_output_to_absolute
from yonos.pca_vae import BlockPCAAutoencoder

Preset = Literal["tiny", "sd21-base"]
Target = Literal["x0", "residual"]
PROMPT_LENGTH = 77  # CLIP's context length: the empty prompt is padded to it, as SD's pipelines do.

UNET_PRESETS: dict[str, dict[str, Any]] = {
    # diffusers' dummy-component shapes; attention only on the lower-resolution level (fast on a CPU). GroupNorm
    # in groups of 4 channels (8 groups): with 32 groups each channel was normalised alone over the image, which on
    # near-flat inputs scales whatever varies (the noise of z_t) to unit variance; measured in the README ("The tiny
    # world's recipe, measured"): +0.4 dB PSNR-Y at x4 on the training split's curve.
    "tiny": dict(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    # stabilityai/stable-diffusion-2-1-base unet/config.json.
    "sd21-base": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        norm_num_groups=32,
    ),
}

VAE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=128,
    ),
    "sd21-base": dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
    ),
}


@dataclass
class BackboneConfig:
    """Where the Stable Diffusion components come from (shared by the denoiser and the codec)."""

    pretrained: str | None = None
    """A diffusers Stable Diffusion folder (with unet/, vae/, scheduler/), a hub id, or `yonos:tiny-sd` (the
    trained tiny base shipped in the package); None builds `preset`."""
    preset: Preset = "tiny"
    """Architecture with random weights when `pretrained` is None: `tiny` (tests, demo) or `sd21-base`."""
    revision: str | None = None
    """Hub revision, for hub ids only."""
    zero_prompt_embedding: bool = False
    """Opt in to an all-zero text context when `pretrained` has no text_encoder/. A UNet with a CLIP-sized
    cross-attention (768 or more: every SD 1.x / 2.x) was trained on the real empty-prompt embedding and never saw
    zeros, so without this flag such a folder is an error; smaller (test) UNets get zeros anyway."""


SHIPPED_PREFIX = "yonos:"
"""``backbone.pretrained: yonos:NAME`` is the SD-layout folder ``yonos/assets/NAME`` shipped in the package."""


def resolve_pretrained(name: str) -> str:
    """``name`` itself, or for ``yonos:NAME`` the path of the shipped folder (an error lists the shipped ones)."""
    if not name.startswith(SHIPPED_PREFIX):
        return name
    assets = Path(__file__).parent / "assets"
    folder = assets / name[len(SHIPPED_PREFIX) :]
    if not (folder / "model_index.json").is_file():
        shipped = sorted(f"{SHIPPED_PREFIX}{p.parent.name}" for p in assets.glob("*/model_index.json"))
        raise FileNotFoundError(f"backbone.pretrained = {name!r}: no such shipped model; shipped: {shipped}")
    return str(folder)


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") != 1


def _require_component(root: Path, subfolder: str, weight_stem: str) -> Path:
    """Check that ``root/subfolder`` holds a parseable config.json and a weights file; name what is missing."""
    if not root.is_dir():
        raise FileNotFoundError(f"pretrained folder not found: {root}")
    folder = root / subfolder
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{root} is not a diffusers Stable Diffusion folder: missing {subfolder}/config.json")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"malformed {config}: {err}") from err
    if not any(folder.glob(f"{weight_stem}*.safetensors")) and not any(folder.glob(f"{weight_stem}*.bin")):
        raise FileNotFoundError(
            f"{root}: missing {subfolder}/{weight_stem}.safetensors (or .bin); download the full model folder"
        )
    return folder


def _load(cls: type, name: str, subfolder: str, revision: str | None) -> Any:
    """``cls.from_pretrained`` from a checked local folder, or from the hub with an error that says what failed."""
    if _is_local(name):
        root = Path(name).expanduser()
        _require_component(root, subfolder, "diffusion_pytorch_model")
        return cls.from_pretrained(root, subfolder=subfolder)
    try:
        return cls.from_pretrained(name, subfolder=subfolder, revision=revision)
    except Exception as err:  # the hub raises many types (offline, 401, 404)
        raise OSError(
            f"could not load {subfolder}/ of {name!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "Without network, download the folder elsewhere (hf download NAME --local-dir DIR) and "
            "set backbone.pretrained to DIR."
        ) from err


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int | None = None) -> UNet2DConditionModel:
    """Widen ``conv_in`` to ``in_channels``: pretrained weights on the first channels, zeros on the new ones.

    With zero weights on the z_lr channels the widened UNet computes exactly what the pretrained one did. The default
    is twice the latent channels: cat(z_t, z_lr) (8 for SD's 4-channel latents).
    """
    old = unet.conv_in
    in_channels = in_channels or 2 * old.in_channels
    if old.in_channels >= in_channels:
        raise ValueError(f"conv_in already has {old.in_channels} input channels, cannot widen to {in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


CLIP_CONTEXT_WIDTH = 768
"""The smallest text-encoder width of Stable Diffusion (CLIP ViT-L/14; SD 2.x's OpenCLIP ViT-H/14 is 1024). A UNet
whose cross-attention is at least this wide is taken to be a real SD UNet, trained on CLIP text embeddings."""


def empty_prompt_embedding(
    root: Path | str | None, cross_attention_dim: int, revision: str | None = None, allow_zeros: bool = False
) -> Tensor:
    """The text encoder's output for the empty prompt, (1, 77, D), computed once at build time and stored with the
    denoiser, so training and inference never need CLIP.

    A local folder without ``text_encoder/`` gives zeros only for small (test) UNets or with ``allow_zeros``; for a
    real SD UNet (``cross_attention_dim`` >= 768) it is an error naming what is missing.
    """
    local = root is not None and _is_local(str(root))
    folder = Path(root).expanduser() if local else None
    has_text = root is not None and (not local or (folder / "text_encoder" / "config.json").is_file())
    if not has_text:
        if cross_attention_dim >= CLIP_CONTEXT_WIDTH and not allow_zeros:
            raise FileNotFoundError(
                f"{root}: missing text_encoder/config.json (and tokenizer/). This UNet's cross-attention "
                f"({cross_attention_dim} wide) was trained on the text encoder's empty-prompt embedding, which yonos "
                "computes once and stores; an all-zero context is not what it saw. Download the whole model folder "
                "(hf download REPO --local-dir DIR, text_encoder/ and tokenizer/ included) or set "
                "model.init_args.backbone.zero_prompt_embedding: true to use zeros knowingly."
            )
        return torch.zeros(1, PROMPT_LENGTH, cross_attention_dim)
    if local and not (folder / "tokenizer").is_dir():
        raise FileNotFoundError(f"{root}: has text_encoder/ but no tokenizer/; download the whole model folder")
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise ImportError(
            f"{root} has a text encoder; computing the stored empty-prompt embedding needs `transformers` "
            "(pip install 'yonos[sd]')"
        ) from err
    source = folder if local else root
    extra = {} if local else {"revision": revision}
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **extra)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **extra).eval()
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        embedding = text_encoder(ids)[0].float()  # (1, 77, D)
    if embedding.shape[-1] != cross_attention_dim:
        raise ValueError(f"{root}: text encoder width {embedding.shape[-1]} != UNet cross_attention_dim {cross_attention_dim}")
    return embedding


def weight_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first parameter: what its input is cast to. (diffusers' ``ModelMixin.dtype`` walks
    every submodule: milliseconds per call on an SD UNet, which a batch-1 GPU call would wait for.)"""
    return next(module.parameters()).dtype


def compute_dtype(unet: nn.Module) -> torch.dtype:
    """The dtype a UNet's inputs are cast to: its weights', or layerwise casting's compute dtype where the weights
    are stored in float8 (diffusers' ``ModelMixin.dtype`` reports that one then)."""
    dtype = weight_dtype(unet)
    return unet.dtype if dtype.itemsize == 1 else dtype


def resolve_device(name: str) -> torch.device:
    """THE device rule of the commands (``--device``): ``auto`` is the first CUDA device when there is one, else
    Apple's ``mps`` when available, else the CPU; any other name is taken as it is (``cuda:1``, ``cpu``, ...)."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


class SRDenoiser(nn.Module):
    """A diffusers UNet that denoises z_t conditioned on the encoded LR image by channel concatenation.

    ``prompt_embeds`` is the fixed empty-prompt embedding (a persistent buffer, saved in the state dict).
    """

    def __init__(self, unet: UNet2DConditionModel, prompt_embeds: Tensor) -> None:
        super().__init__()
        if unet.config.in_channels != 2 * unet.config.out_channels:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} input channels; cat(z_t, z_lr) needs "
                f"{2 * unet.config.out_channels}"
            )
        self.unet = unet
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=True)
        self.register_buffer("residual_alphas_cumprod", None, persistent=False)
        self.prediction_type = "v_prediction"

    @property
    def target(self) -> Target:
        """``x0``: the UNet denoises z_0 (YONOS-SR, SD); ``residual``: it denoises z_0 - z_lr (see :meth:`use_target`)."""
        return "x0" if self.residual_alphas_cumprod is None else "residual"

    def use_target(self, target: Target, alphas_cumprod: Tensor, prediction_type: str) -> "SRDenoiser":
        """Set what the UNet denoises. With ``residual`` it sees z_t - alpha_t z_lr (yonos.diffusion.residual_input)
        and :meth:`forward` converts its output back, so every loss and sampler reads the output as for ``x0``."""
        if target not in ("x0", "residual"):
            raise ValueError(f"model.target must be 'x0' or 'residual', got {target!r}")
        self.residual_alphas_cumprod = alphas_cumprod.detach().clone().float() if target == "residual" else None
        self.prediction_type = prediction_type
        return self

    def forward(self, z_t: Tensor, z_lr: Tensor, t: Tensor) -> Tensor:
        """Raw network output (v, eps or x0 by the parameterisation, of z_0) for z_t, z_lr (B, C, h, w), t (B,)."""
        dtype = compute_dtype(self.unet)  # inputs in the UNet's dtype (autocast handles mixed precision)
        context = self.prompt_embeds.to(dtype).expand(z_t.shape[0], -1, -1)  # (B, 77, D)
        if self.residual_alphas_cumprod is None:
            return self.unet(torch.cat([z_t, z_lr], dim=1).to(dtype), t, encoder_hidden_states=context).sample
        schedule = self.residual_alphas_cumprod
        r_t = residual_input(z_t.float(), z_lr.float(), t, schedule)  # (B, C, h, w): the noisy residual
        output = self.unet(torch.cat([r_t, z_lr.float()], dim=1).to(dtype), t, encoder_hidden_states=context).sample
        # float32, as the losses and the sampler use it: bf16 would round away the detail the residual adds to z_lr
        return residual_output_to_absolute(output.float(), z_lr.float(), t, schedule, self.prediction_type)

    @classmethod
    def from_preset(cls, preset: Preset, latent_channels: int = 4) -> "SRDenoiser":
        if preset not in UNET_PRESETS:
            raise ValueError(f"unknown denoiser preset {preset!r}; choose from {sorted(UNET_PRESETS)}")
        config = UNET_PRESETS[preset]
        unet = UNet2DConditionModel(in_channels=2 * latent_channels, out_channels=latent_channels, **config)
        return cls(unet, torch.zeros(1, PROMPT_LENGTH, unet.config.cross_attention_dim))

    @classmethod
    def from_pretrained(cls, name: str, revision: str | None = None, zero_prompt_embedding: bool = False) -> "SRDenoiser":
        """From an SD folder or hub id: ``unet/`` with conv_in widened from C to 2C input channels (4 -> 8 for SD)
        when it is the base's unconditional UNet, and the empty-prompt embedding (zeros only as
        :func:`empty_prompt_embedding` allows)."""
        unet = _load(UNet2DConditionModel, name, "unet", revision)
        if unet.config.in_channels == unet.config.out_channels:
            unet = widen_conv_in(unet)
        embedding = empty_prompt_embedding(name, unet.config.cross_attention_dim, revision, zero_prompt_embedding)
        return cls(unet, embedding)


class LatentCodec(nn.Module):
    """The SD VAE as an image <-> latent codec: images in [0, 1], latents scaled by the VAE's scaling factor."""

    def __init__(self, vae: AutoencoderKL | BlockPCAAutoencoder) -> None:
        super().__init__()
        self.vae = vae

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def downsample_factor(self) -> int:
        return vae_downsample_factor(self.vae.config)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def encode(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, H/f, W/f) (f = ``downsample_factor``, 8 for SD; C = 4 for SD): the posterior mean
        (every stage encodes deterministically; the codec stage samples the posterior through the VAE itself)."""
        latent = self.vae.encode(image.to(weight_dtype(self.vae.encoder)) * 2.0 - 1.0).latent_dist.mode()
        shift = self.vae.config.get("shift_factor") or 0.0
        return (latent - shift) * self.scaling_factor

    def decode(self, latent: Tensor, clamp: bool = True) -> Tensor:
        """(B, 4, h, w) -> (B, 3, 8h, 8w) in [0, 1] (unclamped with ``clamp=False``: what decoder training needs,
        since clamping stops gradients outside the range)."""
        shift = self.vae.config.get("shift_factor") or 0.0
        latent = latent.to(weight_dtype(self.vae.decoder)) / self.scaling_factor + shift
        image = (self.vae.decode(latent).sample.float() + 1.0) / 2.0
        return image.clamp(0.0, 1.0) if clamp else image

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The parameters the decoder fine-tuning stage trains: ``post_quant_conv`` and ``decoder``."""
        modules = [self.vae.decoder] + ([self.vae.post_quant_conv] if self.vae.post_quant_conv is not None else [])
        return [p for module in modules for p in module.parameters()]

    @classmethod
    def from_preset(cls, preset: Preset) -> "LatentCodec":
        if preset not in VAE_PRESETS:
            raise ValueError(f"unknown codec preset {preset!r}; choose from {sorted(VAE_PRESETS)}")
        blocks = len(VAE_PRESETS[preset]["block_out_channels"])
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            scaling_factor=0.18215,
            **VAE_PRESETS[preset],
        )
        return cls(vae)

    @classmethod
    def from_pretrained(cls, name: str, revision: str | None = None) -> "LatentCodec":
        """``vae/`` of an SD folder: an ``AutoencoderKL``, or the class its config names when that is yonos' own
        (:class:`yonos.pca_vae.BlockPCAAutoencoder`, the tiny base's codec)."""
        vae_class: type = AutoencoderKL
        if _is_local(name) and Path(name).expanduser().is_dir():
            _require_component(Path(name).expanduser(), "vae", "diffusion_pytorch_model")  # names what is missing
            config = json.loads((Path(name).expanduser() / "vae" / "config.json").read_text())
            if config.get("_class_name") == BlockPCAAutoencoder.__name__:
                vae_class = BlockPCAAutoencoder
        return cls(_load(vae_class, name, "vae", revision))


def vae_downsample_factor(config: Any) -> int:
    """Pixels per latent along a side: ``patch_size`` of a block codec, else 2 ** (levels - 1) of a diffusers VAE."""
    if config.get("patch_size"):
        return int(config["patch_size"])
    blocks = config.get("block_out_channels") or config.get("encoder_block_out_channels")
    return 2 ** (len(blocks) - 1)


def build_denoiser(config: BackboneConfig) -> SRDenoiser:
    """The denoiser for a backbone config (pretrained folder / hub id, else the named preset)."""
    if config.pretrained:
        return SRDenoiser.from_pretrained(
            resolve_pretrained(config.pretrained), config.revision, config.zero_prompt_embedding
        )
    return SRDenoiser.from_preset(config.preset)


def build_codec(config: BackboneConfig) -> LatentCodec:
    """The latent codec for a backbone config."""
    if config.pretrained:
        return LatentCodec.from_pretrained(resolve_pretrained(config.pretrained), config.revision)
    return LatentCodec.from_preset(config.preset)


def scheduler_source(config: BackboneConfig) -> str | dict[str, Any] | None:
    """The scheduler config to read the noise schedule from: the pretrained folder's, else SD 2.1-base's."""
    if not config.pretrained:
        return None
    pretrained = resolve_pretrained(config.pretrained)
    if not _is_local(pretrained):
        from diffusers import DDIMScheduler

        return dict(DDIMScheduler.load_config(pretrained, subfolder="scheduler", revision=config.revision))
    folder = Path(pretrained).expanduser() / "scheduler"
    if not (folder / "scheduler_config.json").is_file():
        warnings.warn(f"{folder}/scheduler_config.json missing; using SD 2.1-base's noise schedule", stacklevel=2)
        return None
    return str(folder)


class PatchDiscriminator(nn.Sequential):
    """PatchGAN discriminator (Isola et al. 2017; the SD VAE recipe's NLayerDiscriminator shape): a map of real/fake
    logits, one per receptive-field patch. Inputs are images in [-1, 1]."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        width = channels
        for index in range(1, num_layers + 1):
            out = channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [nn.Conv2d(width, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        super().__init__(*layers)
