"""DecoderFinetuneModule: only the decoder learns, validation compares decoders, checkpoints load as a stage."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from yonos.degradations import bicubic_downsample
from yonos.modules import DecoderFinetuneModule
from yonos.modules.common import load_stage_checkpoint


def _module(teacher_ckpt: Path, **kwargs) -> DecoderFinetuneModule:
    defaults = dict(
        denoiser_ckpt=str(teacher_ckpt), lpips_weight=1.0, lpips_net="alex", random_lpips_backbone=True,
        val_lpips_net="none", log_images=0,
    )
    return DecoderFinetuneModule(**{**defaults, **kwargs})


def _batches(count: int = 3) -> list[dict[str, torch.Tensor]]:
    images = torch.rand(2 * count, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return [
        {"hr": images[i : i + 2], "lr_x2": bicubic_downsample(images[i : i + 2], 2), "index": torch.arange(i, i + 2)}
        for i in range(0, 2 * count, 2)
    ]


def _fit(module: DecoderFinetuneModule, root: Path, steps: int, validate: bool = False) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root, limit_val_batches=1 if validate else 0,
        num_sanity_val_steps=0, val_check_interval=steps if validate else None,
        check_val_every_n_epoch=None if validate else 1,
    )
    loader = DataLoader(_batches(), batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader if validate else None)
    return trainer


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("gan_weight", [0.0, 0.5], ids=["l1_lpips_random_backbone", "with_patchgan"])
def test_only_the_decoder_changes(teacher_ckpt: Path, tmp_path: Path, gan_weight: float):
    module = _module(teacher_ckpt, gan_weight=gan_weight)
    unet, encoder = _snapshot(module.denoiser), _snapshot(module.codec.vae.encoder)
    quant, decoder = _snapshot(module.codec.vae.quant_conv), _snapshot(module.codec.vae.decoder)
    _fit(module, tmp_path, steps=3 if gan_weight == 0 else 6)
    assert all(torch.equal(v, unet[k]) for k, v in module.denoiser.state_dict().items())
    assert all(torch.equal(v, encoder[k]) for k, v in module.codec.vae.encoder.state_dict().items())
    assert all(torch.equal(v, quant[k]) for k, v in module.codec.vae.quant_conv.state_dict().items())
    assert any(not torch.equal(v, decoder[k]) for k, v in module.codec.vae.decoder.state_dict().items())
    assert all(torch.equal(v, decoder[k]) for k, v in module.original_codec.vae.decoder.state_dict().items())


def test_gan_mode_optimises_manually_and_trains_the_discriminator(teacher_ckpt: Path, tmp_path: Path):
    module = _module(teacher_ckpt, gan_weight=0.5, gan_start_step=1)
    assert not module.automatic_optimization
    before = _snapshot(module.discriminator)
    trainer = _fit(module, tmp_path, steps=6)
    assert "train/discriminator" in trainer.callback_metrics and "train/gan_weight" in trainer.callback_metrics
    assert any(not torch.equal(v, before[k]) for k, v in module.discriminator.state_dict().items())


def test_reconstruction_loss_falls_on_a_fixed_batch(teacher_ckpt: Path):
    module = _module(teacher_ckpt, lpips_weight=0.0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    batch = _batches(1)[0]
    optimizer = module.configure_optimizers()
    noise = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    latent = module.sample_latents(batch["lr_x2"], (32, 32), noise=noise)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = module.reconstruction_loss(module.codec.decode(latent, clamp=False), batch["hr"])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]


def test_validation_compares_original_and_finetuned_decoders(teacher_ckpt: Path, tmp_path: Path):
    module = _module(teacher_ckpt)
    trainer = _fit(module, tmp_path, steps=2, validate=True)
    metrics = trainer.callback_metrics
    assert {"val/psnr", "val/psnr_original_decoder", "val/ssim_original_decoder"} <= set(metrics)


def test_checkpoint_loads_as_a_stage_with_the_new_decoder(teacher_ckpt: Path, tmp_path: Path):
    module = _module(teacher_ckpt)
    trainer = _fit(module, tmp_path, steps=2)
    path = tmp_path / "decoder.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("original_codec.") for k in state)
    stage = load_stage_checkpoint(path)
    assert stage.scale == 2
    assert all(torch.equal(v, module.codec.state_dict()[k]) for k, v in stage.codec.state_dict().items())
    reloaded = DecoderFinetuneModule.load_from_checkpoint(path)
    assert all(torch.equal(v, module.codec.state_dict()[k]) for k, v in reloaded.codec.state_dict().items())


def test_invalid_weights_name_the_key(teacher_ckpt: Path):
    with pytest.raises(ValueError, match="model.num_steps"):
        _module(teacher_ckpt, num_steps=0)
    with pytest.raises(ValueError, match="model.lpips_weight"):
        _module(teacher_ckpt, lpips_weight=-1.0)
