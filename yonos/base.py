"""``yonos make-base --out DIR``: a Stable-Diffusion-layout folder that ``backbone.pretrained`` reads exactly like a
downloaded SD folder: ``vae/`` (the block-PCA codec fitted to the training photos, or ``--codec-ckpt``: a trained
CodecModule's AutoencoderKL), ``unet/`` (the tiny UNet with C = latent channels in and out: ``--prior-ckpt``'s
pretrained denoiser, else a seeded random init), ``scheduler/`` (SD 2.1-base's noise schedule with the prior's
parameterisation) and ``model_index.json``. Written under a temporary name and renamed into place: a partial folder
never looks complete.

``backbone.pretrained: yonos:tiny-sd`` names the folder shipped inside the package (``yonos/assets/tiny-sd``).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import diffusers
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from yonos.commands import command_parser, parse
from yonos.diffusion import SD_SCHEDULER_CONFIG
from yonos.files import atomic_folder
from yonos.folders import require_folder
from yonos.images import list_images, read_rgb
from yonos.models import UNET_PRESETS, LatentCodec
from yonos.pca_vae import BlockPCAAutoencoder, fit_block_pca

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": [None, None],
    "tokenizer": [None, None],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_model_index(folder: Path, scheduler: str = "DDIMScheduler", vae: tuple[str, str] = ("diffusers", "AutoencoderKL")) -> None:
    """``folder/model_index.json`` of a Stable-Diffusion-layout folder holding ``unet/``, ``vae/`` and a diffusers
    ``scheduler`` class's ``scheduler/`` (no text encoder, tokenizer or safety checker)."""
    index = {**MODEL_INDEX, "scheduler": ["diffusers", scheduler], "vae": list(vae), "_diffusers_version": diffusers.__version__}
    (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def load_codec_checkpoint(path: str | Path) -> LatentCodec:
    """The trained codec of a CodecModule checkpoint (its EMA weights when the run used EMA), with the VAE's
    ``scaling_factor`` set to 1 / std of the training latents."""
    from yonos.modules.codec import CodecModule

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--codec-ckpt: checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams, state = checkpoint.get("hyper_parameters"), checkpoint.get("state_dict", {})
    if not hparams or "architecture" not in hparams or "latent_var" not in state:
        raise ValueError(f"--codec-ckpt: {path} is not a CodecModule checkpoint (no latent statistics)")
    accepted = set(inspect.signature(CodecModule.__init__).parameters) - {"self", "optimizer", "lr_scheduler"}
    module = CodecModule(**{key: value for key, value in hparams.items() if key in accepted})
    module.load_state_dict(state)
    module.codec.vae.register_to_config(scaling_factor=module.latent_scaling_factor())
    return module.codec.eval()


def fit_pca_codec(train_dir: str | Path, latent_channels: int = 8, patch_size: int = 4, sample_size: int = 128) -> LatentCodec:
    """The block-PCA codec of the images in ``train_dir``: the top ``latent_channels`` components of their
    ``patch_size`` blocks, with ``scaling_factor`` = 1 / std of their latents (as SD's 0.18215)."""
    paths, _ = list_images(require_folder(str(train_dir), "--data"))
    if not paths:
        raise FileNotFoundError(f"--data {train_dir}: no images (run `yonos prepare-samples` for the sample photos)")
    images = [read_rgb(path) * 2.0 - 1.0 for path in paths]  # the VAE's [-1, 1] convention
    components, mean = fit_block_pca(images, patch_size, latent_channels)
    with torch.random.fork_rng():  # the decoder's refine CNN (zero output layer): the same init on every run
        torch.manual_seed(0)
        vae = BlockPCAAutoencoder(latent_channels=latent_channels, patch_size=patch_size, sample_size=sample_size)
    vae.set_basis(components, mean)
    with torch.no_grad():
        latents = torch.cat([vae.encode(image[None, :, : image.shape[-2] // patch_size * patch_size,
                                              : image.shape[-1] // patch_size * patch_size]).latent_dist.mode().flatten()
                             for image in images])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return LatentCodec(vae).eval()


def tiny_unet_init(latent_size: int, seed: int, preset: str = "tiny", latent_channels: int = 4) -> UNet2DConditionModel:
    """The UNet the SR stages start from: the preset's shapes with C latent channels in and out (SD: 4), seeded
    random weights."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"--unet-preset {preset!r}: choose from {sorted(UNET_PRESETS)}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = {**UNET_PRESETS[preset], "sample_size": latent_size}
        return UNet2DConditionModel(in_channels=latent_channels, out_channels=latent_channels, **config)
    finally:
        torch.random.set_rng_state(generator_state)


def load_prior_unet(path: str | Path) -> tuple[UNet2DConditionModel, str]:
    """The pretrained UNet of a PriorModule checkpoint (its EMA weights when the run used EMA) and the
    ``prediction_type`` it was trained with."""
    from yonos.modules.prior import PriorModule

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--prior-ckpt: checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", {})
    if PriorModule.UNET_CONFIG_KEY not in checkpoint:
        raise ValueError(f"--prior-ckpt: {path} is not a PriorModule checkpoint (no '{PriorModule.UNET_CONFIG_KEY}')")
    unet = UNet2DConditionModel.from_config(checkpoint[PriorModule.UNET_CONFIG_KEY])
    unet.load_state_dict({key.removeprefix("unet."): value for key, value in state.items() if key.startswith("unet.")})
    return unet.eval(), str((checkpoint.get("hyper_parameters") or {}).get("prediction_type", "v_prediction"))


def write_base(
    out: str | Path,
    codec_ckpt: str | Path | None = None,
    train_dir: str | Path | None = None,
    latent_channels: int = 8,
    prior_ckpt: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    unet_preset: str = "tiny",
    prediction_type: str = "v_prediction",
) -> Path:
    """Write the SD-layout folder to ``out``: the codec of ``codec_ckpt`` or the PCA codec of ``train_dir``, the
    prior of ``prior_ckpt`` (the scheduler then says the parameterisation the prior was trained with) or a random
    UNet (``prediction_type`` in its scheduler). Refuses a non-empty ``out`` unless ``overwrite``."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    if (codec_ckpt is None) == (train_dir is None):
        raise ValueError("give either --codec-ckpt (a trained AutoencoderKL) or --data (fit the block-PCA codec)")
    codec = load_codec_checkpoint(codec_ckpt) if codec_ckpt is not None else fit_pca_codec(train_dir, latent_channels)
    latent_size = int(codec.vae.config.sample_size) // codec.downsample_factor
    if prior_ckpt is not None:
        unet, prediction_type = load_prior_unet(prior_ckpt)
        if unet.config.in_channels != codec.latent_channels:
            raise ValueError(f"--prior-ckpt: its UNet takes {unet.config.in_channels} channels, the codec's latents have {codec.latent_channels}")
    else:
        unet = tiny_unet_init(latent_size, seed, unet_preset, codec.latent_channels)
    scheduler = DDIMScheduler(
        **SD_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )
    vae_entry = (codec.vae.__module__.split(".")[0], type(codec.vae).__name__)
    with atomic_folder(out) as staging:
        codec.vae.save_pretrained(staging / "vae")
        unet.save_pretrained(staging / "unet")
        scheduler.save_pretrained(staging / "scheduler")
        write_model_index(staging, vae=vae_entry)
    return out


def main(argv: list[str]) -> None:
    """Entry point of ``yonos make-base``."""
    parser = command_parser("yonos make-base", __doc__)
    parser.add_argument("--out", required=True, help="the SD-layout folder to write")
    parser.add_argument("--data", default=None, help="training photos to fit the block-PCA codec on (data/samples/train)")
    parser.add_argument("--latent-channels", type=int, default=8, help="latent channels of the block-PCA codec")
    parser.add_argument("--codec-ckpt", default=None, help="instead of --data: a CodecModule checkpoint (experiments/tiny/codec.yaml)")
    parser.add_argument("--prior-ckpt", default=None, help="a PriorModule checkpoint (experiments/tiny/prior.yaml); else a random UNet")
    parser.add_argument("--seed", type=int, default=0, help="seed of the UNet's random initialisation (without --prior-ckpt)")
    parser.add_argument("--unet-preset", default="tiny", help="UNet architecture preset (yonos.models.UNET_PRESETS)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it is not empty")
    args = parse(parser, argv)
    try:
        out = write_base(
            args.out, args.codec_ckpt, args.data, args.latent_channels, args.prior_ckpt, args.seed, args.overwrite,
            args.unet_preset,
        )
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {out} (vae/, unet/, scheduler/, model_index.json); use it as --model.init_args.backbone.pretrained {out}")
