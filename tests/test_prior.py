"""The UNet prior (stage 0b of the tiny base): PriorModule through the CLI with experiments/tiny/prior.yaml, its
gate against the best linear denoiser, and `make-base --prior-ckpt` writing its weights and parameterisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from yonos.base import load_prior_unet, write_base
from yonos.models import BackboneConfig, build_denoiser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prior_run(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """Two steps of the shipped prior yaml on a random-UNet block-PCA base of the sample photos (6 channels)."""
    from yonos.cli import run

    root = tmp_path_factory.mktemp("prior")
    base = write_base(root / "base_random", train_dir=sample_data / "train", latent_channels=6)
    cli = run([
        "fit", "-c", str(ROOT / "experiments/tiny/prior.yaml"), f"--model.init_args.backbone.pretrained={base}",
        f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
        "--data.val_hr_size=32", "--data.batch_size=2", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        f"--trainer.default_root_dir={root / 'run'}", f"--trainer.logger.init_args.save_dir={root / 'run'}",
        "--trainer.enable_progress_bar=false", "--model.init_args.prediction_type=epsilon",
    ])
    return base, root / "run" / "checkpoints" / "last.ckpt", cli


def test_prior_logs_its_gate_and_trains_only_the_unet(prior_run, one_thread):
    base, ckpt, cli = prior_run
    metrics = cli.trainer.callback_metrics
    for t in (99, 499, 899, 999):
        assert {f"val/x0_mse_t{t}", f"val/x0_mse_linear_t{t}"} <= set(metrics)
    module = cli.model
    assert not any(p.requires_grad for p in module.codec.parameters())
    assert all(p.requires_grad for p in module.unet.parameters())
    assert module.unet.config.in_channels == module.unet.config.out_channels == 6  # unconditional: no z_lr


def test_make_base_writes_the_priors_weights_and_parameterisation(prior_run, tmp_path: Path, sample_data: Path):
    base, ckpt, cli = prior_run
    unet, prediction_type = load_prior_unet(ckpt)
    assert prediction_type == "epsilon"
    trained = cli.model.unet.state_dict()  # the EMA average after fit
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in trained.items())
    out = write_base(tmp_path / "base", train_dir=sample_data / "train", latent_channels=6, prior_ckpt=ckpt)
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon"  # what the prior was trained in, not make-base's default
    denoiser = build_denoiser(BackboneConfig(pretrained=str(out)))
    assert denoiser.unet.config.in_channels == 12  # widened for cat(z_t, z_lr)
    widened = denoiser.unet.conv_in.weight
    assert torch.equal(widened[:, :6], unet.conv_in.weight) and not widened[:, 6:].any()
    assert torch.equal(denoiser.unet.conv_out.weight, unet.conv_out.weight)


def test_make_base_refuses_a_prior_of_another_channel_count_and_other_checkpoints(prior_run, tmp_path: Path, sample_data: Path, teacher_ckpt: Path):
    _, ckpt, _ = prior_run
    with pytest.raises(ValueError, match="6 channels.*8"):
        write_base(tmp_path / "a", train_dir=sample_data / "train", latent_channels=8, prior_ckpt=ckpt)
    with pytest.raises(ValueError, match="not a PriorModule checkpoint"):
        write_base(tmp_path / "b", train_dir=sample_data / "train", prior_ckpt=teacher_ckpt)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        write_base(tmp_path / "c", train_dir=sample_data / "train", prior_ckpt=tmp_path / "missing.ckpt")
    assert not any((tmp_path / name).exists() for name in "abc")
