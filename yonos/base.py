"""``yonos make-base --codec-ckpt CKPT --out DIR``: a Stable-Diffusion-layout folder (``vae/`` from a trained
CodecModule checkpoint, ``unet/`` a seeded random init of the tiny UNet with SD's 4 input channels,
``scheduler/`` SD 2.1-base's noise schedule, ``model_index.json``) that ``backbone.pretrained`` reads exactly like
a downloaded SD folder. Written under a temporary name and renamed into place: a partial folder never looks complete.

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
from yonos.models import UNET_PRESETS, LatentCodec

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


def write_model_index(folder: Path, scheduler: str = "DDIMScheduler") -> None:
    """``folder/model_index.json`` of a Stable-Diffusion-layout folder holding ``unet/``, ``vae/`` and a diffusers
    ``scheduler`` class's ``scheduler/`` (no text encoder, tokenizer or safety checker)."""
    index = {**MODEL_INDEX, "scheduler": ["diffusers", scheduler], "_diffusers_version": diffusers.__version__}
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


def tiny_unet_init(latent_size: int, seed: int, preset: str = "tiny") -> UNet2DConditionModel:
    """The UNet the SR stages start from: the preset's shapes with SD's 4 input channels, seeded random weights."""
    if preset not in UNET_PRESETS:
        raise ValueError(f"--unet-preset {preset!r}: choose from {sorted(UNET_PRESETS)}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = {**UNET_PRESETS[preset], "sample_size": latent_size}
        return UNet2DConditionModel(in_channels=4, out_channels=4, **config)
    finally:
        torch.random.set_rng_state(generator_state)


def write_base(codec_ckpt: str | Path, out: str | Path, seed: int = 0, overwrite: bool = False, unet_preset: str = "tiny") -> Path:
    """Write the SD-layout folder for ``codec_ckpt`` to ``out``; refuses a non-empty ``out`` unless ``overwrite``."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    codec = load_codec_checkpoint(codec_ckpt)
    latent_size = int(codec.vae.config.sample_size) // codec.downsample_factor
    unet = tiny_unet_init(latent_size, seed, unet_preset)
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    with atomic_folder(out) as staging:
        codec.vae.save_pretrained(staging / "vae")
        unet.save_pretrained(staging / "unet")
        scheduler.save_pretrained(staging / "scheduler")
        write_model_index(staging)
    return out


def main(argv: list[str]) -> None:
    """Entry point of ``yonos make-base``."""
    parser = command_parser("yonos make-base", __doc__)
    parser.add_argument("--codec-ckpt", required=True, help="a CodecModule checkpoint (yonos fit -c experiments/tiny/codec.yaml)")
    parser.add_argument("--out", required=True, help="the SD-layout folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the UNet's random initialisation")
    parser.add_argument("--unet-preset", default="tiny", help="UNet architecture preset (yonos.models.UNET_PRESETS)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it is not empty")
    args = parse(parser, argv)
    try:
        out = write_base(args.codec_ckpt, args.out, args.seed, args.overwrite, args.unet_preset)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(f"wrote {out} (vae/, unet/, scheduler/, model_index.json); use it as --model.init_args.backbone.pretrained {out}")
