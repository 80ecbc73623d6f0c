"""CodecModule (stage 0) and `yonos make-base`: the codec learns, its folder loads like an SD download."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from yonos.base import load_codec_checkpoint, write_base
from yonos.degradations import bicubic_downsample
from yonos.metrics import psnr_y
from yonos.models import BackboneConfig, build_codec, build_denoiser, resolve_pretrained, scheduler_source
from yonos.modules import CodecModule, TeacherModule
from yonos.modules.codec import CodecArchitecture, codec_loss

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(block_out_channels=(32, 32), layers_per_block=1)  # f = 2: a few ms per step


def _images(count: int = 4, size: int = 32) -> torch.Tensor:
    """Smooth random images (a codec can learn them in tens of steps)."""
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _batches(images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    return [{"hr": images, "lr_x4": bicubic_downsample(images, 4), "index": torch.arange(len(images))}]


def _fit(module: CodecModule, root: Path, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root, limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(_batches(_images()), batch_size=None))
    return trainer


def test_codec_loss_is_l1_plus_mse_plus_weighted_kl():
    rec, hr = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    kl = torch.tensor([10.0, 30.0])
    assert codec_loss(rec, hr, kl, 1.0, 0.0, 0.0) == pytest.approx(0.5)
    assert codec_loss(rec, hr, kl, 0.0, 1.0, 0.0) == pytest.approx(0.25)
    assert codec_loss(rec, hr, kl, 1.0, 2.0, 0.01) == pytest.approx(0.5 + 0.5 + 0.2)


def test_architecture_is_checked_with_the_yaml_key():
    with pytest.raises(ValueError, match="model.architecture.block_out_channels"):
        CodecArchitecture(block_out_channels=(32, 48))
    with pytest.raises(ValueError, match="model.l1_weight"):
        CodecModule(architecture=CodecArchitecture(**SMALL), l1_weight=0.0, mse_weight=0.0)


@pytest.mark.slow
def test_training_improves_reconstruction(tmp_path: Path, one_thread):
    torch.manual_seed(0)
    optimizer = lambda params: torch.optim.Adam(params, lr=2e-3)  # noqa: E731
    module = CodecModule(architecture=CodecArchitecture(**SMALL), log_images=0, optimizer=optimizer)
    images = _images()
    before = psnr_y(module.reconstruct(images), images).mean()
    _fit(module, tmp_path, steps=60)
    after = psnr_y(module.reconstruct(images), images).mean()
    assert after > before + 3.0, (float(before), float(after))


def test_scaling_factor_makes_training_latents_unit_variance(tmp_path: Path, one_thread):
    torch.manual_seed(0)
    module = CodecModule(architecture=CodecArchitecture(**SMALL), latent_std_momentum=0.0, log_images=0)
    _fit(module, tmp_path, steps=3)  # momentum 0: the estimate is the last batch's (its weights moved after it)
    images = _images()
    module.codec.vae.register_to_config(scaling_factor=module.latent_scaling_factor())
    with torch.no_grad():
        mean = module.codec.vae.encode(images * 2 - 1).latent_dist.mean
        std = module.codec.encode(images).std()
    assert std == pytest.approx(1.0, abs=0.1), float(std)
    assert module.latent_scaling_factor() == pytest.approx(float(1 / mean.std()), rel=0.1)


@pytest.fixture(scope="module")
def codec_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("codec")
    torch.manual_seed(0)
    module = CodecModule(architecture=CodecArchitecture(**SMALL), log_images=0)
    trainer = _fit(module, root, steps=2)
    path = root / "codec.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_make_base_folder_loads_as_a_stable_diffusion_folder(codec_ckpt: Path, tmp_path: Path):
    out = write_base(tmp_path / "base", codec_ckpt=codec_ckpt, seed=3)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["vae"] == ["diffusers", "AutoencoderKL"]
    backbone = BackboneConfig(pretrained=str(out))
    codec, denoiser = build_codec(backbone), build_denoiser(backbone)
    trained = load_codec_checkpoint(codec_ckpt)
    for key, value in trained.state_dict().items():
        assert torch.equal(codec.state_dict()[key], value), key
    assert codec.scaling_factor == pytest.approx(trained.scaling_factor) and codec.scaling_factor != 1.0
    assert codec.downsample_factor == 2
    assert denoiser.unet.config.in_channels == 8  # SD's 4 channels, widened as for a real SD UNet
    assert scheduler_source(backbone) == str(out / "scheduler")
    # The UNet init is the seed's: the same seed gives the same weights, another seed others.
    again = build_denoiser(BackboneConfig(pretrained=str(write_base(tmp_path / "again", codec_ckpt=codec_ckpt, seed=3))))
    other = build_denoiser(BackboneConfig(pretrained=str(write_base(tmp_path / "other", codec_ckpt=codec_ckpt, seed=4))))
    weight = "unet.conv_out.weight"
    assert torch.equal(again.state_dict()[weight], denoiser.state_dict()[weight])
    assert not torch.equal(other.state_dict()[weight], denoiser.state_dict()[weight])
    # A teacher trains on it like on a downloaded SD folder.
    teacher = TeacherModule(backbone=backbone, lpips_net="none", log_images=0)
    assert teacher.codec.scaling_factor == pytest.approx(codec.scaling_factor)


def test_make_base_refuses_to_overwrite_and_names_bad_checkpoints(codec_ckpt: Path, teacher_ckpt: Path, tmp_path: Path):
    out = write_base(tmp_path / "base", codec_ckpt=codec_ckpt)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_base(out, codec_ckpt=codec_ckpt)
    with pytest.raises(ValueError, match="not a CodecModule checkpoint"):
        write_base(tmp_path / "bad", codec_ckpt=teacher_ckpt)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        write_base(tmp_path / "bad", codec_ckpt=tmp_path / "missing.ckpt")
    assert not (tmp_path / "bad").exists()


def test_unknown_shipped_name_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="yonos:tiny-sd"):
        resolve_pretrained("yonos:no-such-model")
    assert Path(resolve_pretrained("yonos:tiny-sd"), "vae", "config.json").is_file()


def test_codec_yaml_fits_and_validates_through_the_cli(tmp_path: Path, sample_data: Path, monkeypatch):
    from yonos.cli import run

    monkeypatch.chdir(ROOT)
    arguments = [
        "fit", "-c", "experiments/tiny/codec.yaml", f"--data.train_dir={sample_data / 'train'}",
        f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32", "--data.val_hr_size=32",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--data.batch_size=2",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--model.init_args.architecture.block_out_channels=[32, 32]",
    ]
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        trainer = run(arguments).trainer
    metrics = trainer.callback_metrics
    assert {"val/psnr", "val/ssim", "val/psnr_lr_x4", "val/ssim_lr_x4"} <= set(metrics)
    trainer.save_checkpoint(tmp_path / "codec.ckpt")
    out = write_base(tmp_path / "base", codec_ckpt=tmp_path / "codec.ckpt")
    assert build_codec(BackboneConfig(pretrained=str(out))).downsample_factor == 2


def test_posterior_starts_nearly_deterministic_when_asked():
    images = _images(2)
    for initial, expected in ((-8.0, -8.0), (None, 0.0)):
        torch.manual_seed(0)
        module = CodecModule(architecture=CodecArchitecture(**SMALL), initial_logvar=initial)
        with torch.no_grad():
            logvar = module.codec.vae.encode(images * 2 - 1).latent_dist.logvar
        assert float(logvar.mean()) == pytest.approx(expected, abs=1.0)
