"""DecoderFinetuneModule: only the decoder learns, validation compares decoders, checkpoints load as a stage."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.data import DataLoader

from yonos.checkpoints import load_stage_checkpoint
from yonos.degradations import bicubic_downsample
from yonos.losses import adaptive_gan_weight
from yonos.metrics import MissingWeightsError, psnr_y
from yonos.modules import DecoderFinetuneModule
from yonos.sampling import seeded_noise
from yonos.seeds import validation_seed


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


def test_validation_scores_the_same_latents_through_the_original_and_the_finetuned_decoder(teacher_ckpt: Path, tmp_path: Path):
    module = _module(teacher_ckpt, lpips_weight=0.0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    trainer = _fit(module, tmp_path, steps=3, validate=True)
    metrics = trainer.callback_metrics
    # By hand: validation's first batch, its per-sample seeded noise, the one-step latents, both decoders.
    batch = _batches()[0]
    seeds = [validation_seed(module.hparams.seed, int(i)) for i in batch["index"]]
    latent = module.sample_latents(batch["lr_x2"], (32, 32), noise=seeded_noise((2, 4, 4, 4), seeds, torch.device("cpu")))
    original = load_stage_checkpoint(teacher_ckpt).codec  # the decoder as the denoiser checkpoint holds it
    with torch.no_grad():
        psnr_finetuned = psnr_y(module.codec.decode(latent), batch["hr"]).mean()
        psnr_original = psnr_y(original.decode(latent), batch["hr"]).mean()
    assert_close(metrics["val/psnr"], psnr_finetuned, rtol=1e-5, atol=1e-4)
    assert_close(metrics["val/psnr_original_decoder"], psnr_original, rtol=1e-5, atol=1e-4)
    assert abs(psnr_finetuned - psnr_original) > 0.01  # the decoders do differ, so the two checks are distinct


def test_adaptive_gan_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    last_layer = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    a, b = torch.tensor([[3.0, 0.0], [0.0, 4.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    reconstruction, adversarial = (a * last_layer).sum(), (b * last_layer).sum()  # gradients a and b
    weight = adaptive_gan_weight(reconstruction, adversarial, last_layer)
    assert weight.item() == pytest.approx(5.0 / (1.0 + 1e-4))
    assert not weight.requires_grad
    assert adaptive_gan_weight(reconstruction, 1e-9 * adversarial, last_layer, max_weight=100.0).item() == 100.0


def test_the_generator_loss_reaches_the_decoder_with_the_adaptive_weight(teacher_ckpt: Path, tmp_path: Path):
    """One GAN step with SGD at lr 1: the decoder's last layer moves by exactly grad(L_rec + w * L_gan), with
    w = gan_weight * ||grad L_rec|| / (||grad L_gan|| + 1e-4), both recomputed here from the same latents."""
    module = _module(teacher_ckpt, lpips_weight=0.0, gan_weight=0.5, gan_start_step=0, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    reference = copy.deepcopy(module)  # same weights, same discriminator, a fresh copy of the noise stream
    before = module.codec.vae.decoder.conv_out.weight.detach().clone()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path, limit_val_batches=0,
    )  # manual optimisation: one batch = two optimizer steps (decoder, discriminator)
    batch = _batches(1)[0]
    trainer.fit(module, train_dataloaders=DataLoader([batch], batch_size=None))
    moved = before - module.codec.vae.decoder.conv_out.weight.detach()

    reference.train()
    sr = reference.codec.decode(reference.sample_latents(batch["lr_x2"], (32, 32)), clamp=False)
    reconstruction = F.l1_loss(sr, batch["hr"])
    adversarial = -reference.discriminator(sr * 2 - 1).mean()
    last_layer = reference.codec.vae.decoder.conv_out.weight
    grad_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    grad_gan = torch.autograd.grad(adversarial, last_layer)[0]
    weight = 0.5 * grad_rec.norm() / (grad_gan.norm() + 1e-4)
    assert_close(trainer.callback_metrics["train/gan_weight"], weight, rtol=1e-4, atol=0)
    assert_close(moved, grad_rec + weight * grad_gan, rtol=1e-3, atol=1e-7)
    assert (weight * grad_gan).norm() > 0.1 * grad_rec.norm()  # the GAN term is a visible part of the step


def test_training_lpips_is_vgg_and_validation_reports_alex_by_default(teacher_ckpt: Path):
    module = DecoderFinetuneModule(denoiser_ckpt=str(teacher_ckpt), random_lpips_backbone=True, log_images=0)
    assert module.hparams.lpips_net == "vgg" and module.hparams.val_lpips_net == "alex"
    module.setup("fit")
    assert type(module._lpips[0].net).__name__ == "vgg16"
    assert type(module.val_metrics._lpips_model[0].net).__name__ == "alexnet"
    assert "val/lpips_alex_random_backbone" in module.val_metrics.metrics("val")


def test_offline_training_lpips_without_its_weights_names_the_file(teacher_ckpt: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    module = DecoderFinetuneModule(denoiser_ckpt=str(teacher_ckpt), val_lpips_net="none", log_images=0)
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        module.setup("fit")


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
