"""SRDataModule with Real-ESRGAN degradations: keys, determinism, per-rank streams, yaml switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yonos.batch import lr_key
from yonos.cli import run
from yonos.data import SRDataModule

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def hr_folder(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    return tmp_path


def _datamodule(folder: Path, **overrides) -> SRDataModule:
    defaults = dict(
        train_dir=str(folder), val_dir=str(folder), hr_size=32, scales=[2, 4], degradation="realesrgan",
        preset="realesrgan", batch_size=5, val_batch_size=5, num_workers=0, seed=3,
    )
    return SRDataModule(**{**defaults, **overrides})


def _val_lr(dm: SRDataModule) -> dict[int, torch.Tensor]:
    dm.setup("validate")
    out: dict[int, list[torch.Tensor]] = {2: [], 4: []}
    for batch in dm.val_dataloader():
        batch = dm.on_after_batch_transfer(batch, 0)
        for scale in out:
            out[scale].append(batch[lr_key(scale)])
    return {scale: torch.cat(parts) for scale, parts in out.items()}


def test_emits_every_scale_on_8bit_levels(hr_folder: Path):
    lr = _val_lr(_datamodule(hr_folder))
    assert lr[2].shape == (5, 3, 16, 16) and lr[4].shape == (5, 3, 8, 8)
    for image in lr.values():
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        assert torch.equal(image, torch.round(image * 255) / 255)


def test_validation_lr_does_not_depend_on_batch_size(hr_folder: Path):
    whole = _val_lr(_datamodule(hr_folder, val_batch_size=5))
    pieces = _val_lr(_datamodule(hr_folder, val_batch_size=2))
    for scale in (2, 4):
        assert torch.equal(whole[scale], pieces[scale])


def test_training_streams_are_seeded_per_rank(hr_folder: Path, monkeypatch):
    hr = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def draw(rank: int) -> torch.Tensor:
        dm = _datamodule(hr_folder)
        monkeypatch.setattr(dm, "_rank", lambda: rank)
        return dm.degrade(hr, None, training=True)[4]

    assert torch.equal(draw(0), draw(0))  # same seed and rank: bit-identical
    assert not torch.equal(draw(0), draw(1))  # another rank: another stream


def test_independent_draws_option(hr_folder: Path):
    hr = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    shared = _datamodule(hr_folder).degrade(hr, torch.arange(4), training=False)
    independent = _datamodule(hr_folder, shared_degradation=False).degrade(hr, torch.arange(4), training=False)
    assert torch.equal(shared[2], independent[2])  # the first scale's draw is the same in both modes
    assert not torch.equal(shared[4], independent[4])  # the second scale's is a new draw only when not shared


def test_invalid_override_names_the_yaml_key(hr_folder: Path):
    with pytest.raises(ValueError, match=r"data\.realesrgan\.stage1\.blur_sigma"):
        _datamodule(hr_folder, realesrgan={"stage1": {"blur_sigma": [3.0, 0.2]}})
    with pytest.raises(ValueError, match=r"data\.realesrgan\.stage2\.nosie_range"):
        _datamodule(hr_folder, realesrgan={"stage2": {"nosie_range": [1, 2]}})


def test_yaml_switch_trains_the_teacher_on_realesrgan_lr(tmp_path: Path, sample_data: Path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = run(
        [
            "fit", "-c", "experiments/tiny/teacher_x2_realesrgan.yaml",
            f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.datamodule.degradation == "realesrgan" and cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert "val/psnr" in cli.trainer.callback_metrics


def test_training_batches_get_the_usm_target_and_validation_keeps_the_plain_hr(hr_folder: Path):
    from types import SimpleNamespace

    from yonos.degradations import usm_sharpen

    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def batch_after(dm: SRDataModule, training: bool) -> dict:
        dm.trainer = SimpleNamespace(training=training, global_rank=0)
        return dm.on_after_batch_transfer({"hr": hr.clone(), "index": torch.arange(2)}, 0)

    assert torch.equal(batch_after(_datamodule(hr_folder), training=True)["hr"], usm_sharpen(hr))
    assert torch.equal(batch_after(_datamodule(hr_folder), training=False)["hr"], hr)
    plain = _datamodule(hr_folder, realesrgan={"usm_target": False})
    assert torch.equal(batch_after(plain, training=True)["hr"], hr)
    bicubic = _datamodule(hr_folder, degradation="bicubic_matlab")
    batch = batch_after(bicubic, training=True)
    assert torch.equal(batch["hr"], hr)
    from yonos.degradations import bicubic_downsample, bicubic_matlab_downsample

    assert torch.equal(batch["lr_x4"], bicubic_matlab_downsample(hr, 4))
    assert not torch.equal(batch["lr_x4"], bicubic_downsample(hr, 4))
