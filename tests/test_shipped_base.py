"""The tiny SD base shipped in the package (yonos:tiny-sd): its codec beats bicubic x2 on the held-out crops, its
UNet prior beats the best linear denoiser, a teacher trained from it by the tiny yaml beats copying its condition,
and the README states what the tests measure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from yonos.degradations import bicubic_downsample, upsample_to
from yonos.demo import validation_pairs
from yonos.metrics import psnr_y, ssim_y
from yonos.models import BackboneConfig, build_codec, build_denoiser, resolve_pretrained
from yonos.samples import VAL_TILE_SIZES, prepare_samples

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BASE = BackboneConfig(pretrained="yonos:tiny-sd")


def _readme_number(pattern: str) -> re.Match:
    match = re.search(pattern, README.read_text())
    assert match, f"README.md has no line matching {pattern!r}"
    return match


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The demo's held-out crops (default sizes), by folder."""
    root = tmp_path_factory.mktemp("samples")
    prepare_samples(root)
    return {folder: validation_pairs(root / folder, scale=4, hr_size=size)[0] for folder, size in VAL_TILE_SIZES.items()}


def test_shipped_codec_reconstructs_the_held_out_crops_above_bicubic_x2(held_out, one_thread):
    stated = _readme_number(r"on the (\d+) held-out 128 px crops: PSNR-Y ([\d.]+) dB, SSIM-Y ([\d.]+)")
    codec = build_codec(BASE).eval()
    for folder, hr in held_out.items():
        with torch.no_grad():
            reconstruction = codec.decode(codec.encode(hr))
        bicubic_x2 = upsample_to(bicubic_downsample(hr, 2), tuple(hr.shape[-2:]))
        assert float(psnr_y(reconstruction, hr).mean()) >= float(psnr_y(bicubic_x2, hr).mean()), folder
    hr = held_out["val_crops"]
    with torch.no_grad():
        reconstruction = codec.decode(codec.encode(hr))
    assert hr.shape[0] == int(stated.group(1))
    assert float(psnr_y(reconstruction, hr).mean()) == pytest.approx(float(stated.group(2)), abs=0.02)
    assert float(ssim_y(reconstruction, hr).mean()) == pytest.approx(float(stated.group(3)), abs=0.002)


def test_shipped_prior_beats_the_best_linear_denoiser_on_held_out_latents(held_out, one_thread):
    """The prior's gate at the timesteps PriorModule validates at, with held-out noise and held-out channel
    statistics for the linear denoiser (an oracle the prior does not get)."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from yonos.diffusion import add_noise, linear_x0, predict_x0
    from yonos.modules.prior import VAL_TIMESTEPS

    folder = Path(resolve_pretrained("yonos:tiny-sd"))
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    scheduler = DDIMScheduler.from_pretrained(folder / "scheduler")
    codec = build_codec(BASE).eval()
    alphas_cumprod = scheduler.alphas_cumprod
    for name, hr in held_out.items():
        with torch.no_grad():
            z_0 = codec.encode(hr)
            mean, var = z_0.mean((0, 2, 3), keepdim=True), z_0.var((0, 2, 3), keepdim=True)
            eps = torch.randn(z_0.shape, generator=torch.Generator().manual_seed(0))
            context = torch.zeros(z_0.shape[0], 1, unet.config.cross_attention_dim)
            for timestep in VAL_TIMESTEPS:
                t = torch.full((z_0.shape[0],), timestep)
                z_t = add_noise(z_0, eps, t, alphas_cumprod)
                output = unet(z_t, t, encoder_hidden_states=context).sample
                prior = (predict_x0(output, z_t, t, alphas_cumprod, scheduler.config.prediction_type) - z_0).pow(2).mean()
                linear = (linear_x0(z_t, t, alphas_cumprod, mean, var) - z_0).pow(2).mean()
                assert prior < 0.9 * linear, (name, timestep, float(prior), float(linear))


def test_shipped_base_is_an_sd_folder_of_the_stated_size():
    stated = _readme_number(r"weights ([\d.]+) MB in all")
    folder = Path(resolve_pretrained("yonos:tiny-sd"))
    weights = sorted(folder.glob("*/diffusion_pytorch_model.safetensors"))
    assert [p.parent.name for p in weights] == ["unet", "vae"]
    size = sum(p.stat().st_size for p in weights) / 1e6
    assert size == pytest.approx(float(stated.group(1)), abs=0.05) and size <= 10.0
    codec, denoiser = build_codec(BASE), build_denoiser(BASE)
    assert codec.downsample_factor == 4 and codec.scaling_factor != 1.0
    assert denoiser.unet.config.in_channels == 2 * codec.latent_channels
    assert codec.latent_channels == denoiser.unet.config.out_channels == 8
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"  # what the prior was trained with


@pytest.mark.slow
def test_stages_trained_by_the_tiny_yamls_beat_copying_their_condition(tmp_path: Path, monkeypatch):
    """The demo's teacher x2 and student x4, with their yamls' whole budgets, validated on the held-out 128 px
    crops: each one-step latent MSE to z_hr is below that of copying the stage's own condition z_lr."""
    from yonos.chain import run_chain
    from yonos.cli import run

    samples = tmp_path / "samples"
    prepare_samples(samples)
    monkeypatch.chdir(ROOT)
    configs = ["experiments/tiny/teacher_x2.yaml", "experiments/tiny/distill_x2_to_x4.yaml"]
    data = [f"--data.train_dir={samples / 'train'}", f"--data.val_dir={samples / 'val_crops'}"]
    finals = run_chain(configs, tmp_path / "chain", extra=data, isolate=False)
    for position, (name, config) in enumerate(zip(finals, configs)):
        arguments = [
            "validate", "-c", config, *data, f"--ckpt_path={finals[name]}", f"--trainer.default_root_dir={tmp_path / name}",
            f"--trainer.logger.init_args.save_dir={tmp_path / name}",
        ]
        if position:
            arguments.append(f"--model.init_args.teacher_ckpt={finals['teacher_x2']}")
        metrics = run(arguments).trainer.callback_metrics
        assert float(metrics["val/latent_mse"]) < 0.9 * float(metrics["val/latent_mse_copy"]), name
