"""TeacherModule: learning on CPU, frozen VAE, checkpoint round trip, validation logging, scale checks."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.testing import assert_close

from yonos.data import SRDataModule
from yonos.degradations import bicubic_downsample, upsample_to
from yonos.diffusion import add_noise, predict_x0, sample_timesteps
from yonos.losses import weighted_x0_loss
from yonos.models import BackboneConfig
from yonos.modules import TeacherModule


def _module(**kwargs) -> TeacherModule:
    torch.manual_seed(0)
    defaults = dict(backbone=BackboneConfig(preset="tiny"), scale=2, lpips_net="none", log_images=0)
    return TeacherModule(**{**defaults, **kwargs})


def _fixed_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    return {"hr": hr, "lr_x2": bicubic_downsample(hr, 2), "index": torch.arange(2)}


def _fixed_loss(module: TeacherModule, batch: dict[str, torch.Tensor]) -> float:
    """The training loss on a fixed set of (t, eps) so that before/after values are comparable."""
    z_hr, z_lr = module.encode_pair(batch["hr"], batch["lr_x2"])
    g = torch.Generator().manual_seed(123)
    total = 0.0
    with torch.no_grad():
        for t_value in (50, 300, 600, 900):
            t = torch.full((z_hr.shape[0],), t_value)
            eps = torch.randn(z_hr.shape, generator=g)
            z_t = add_noise(z_hr, eps, t, module.alphas_cumprod)
            x0 = predict_x0(module.denoiser(z_t, z_lr, t), z_t, t, module.alphas_cumprod, module.prediction_type)
            total += float(weighted_x0_loss(x0, z_hr, t, module.alphas_cumprod, module.loss_weighting))
    return total / 4


def test_overfits_one_fixed_batch_and_keeps_the_vae_frozen():
    module = _module(optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0))
    batch = _fixed_batch()
    vae_before = {k: v.clone() for k, v in module.codec.state_dict().items()}
    before = _fixed_loss(module, batch)
    optimizer = module.configure_optimizers()
    module.train()
    for step in range(60):
        optimizer.zero_grad()
        loss = module.training_step(batch, step)
        loss.backward()
        assert all(p.grad is None for p in module.codec.parameters())
        optimizer.step()
    after = _fixed_loss(module, batch)
    assert after < 0.5 * before, (before, after)
    assert not module.codec.training
    for key, value in module.codec.state_dict().items():
        assert torch.equal(value, vae_before[key]), key


def test_optimizer_covers_only_the_unet():
    module = _module()
    optimizer = module.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.denoiser.parameters()}
    assert not any(p.requires_grad for p in module.codec.parameters())


def test_injected_optimizer_and_scheduler():
    module = _module(
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["lr_scheduler"]["interval"] == "step"


def test_sampling_depends_on_the_seed_not_the_batch():
    module = _module().eval()
    lr = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    together = module.sample(lr, seeds=[7, 8, 9])
    alone = module.sample(lr[1:2], seeds=[8])
    assert together.shape == (3, 3, 32, 32)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)
    assert not torch.equal(module.sample(lr[1:2], seeds=[10]), alone)


def test_sampling_handles_sizes_that_are_not_a_multiple_of_8():
    module = _module().eval()
    sr = module.sample(torch.rand(1, 3, 13, 7), seeds=[0])
    assert sr.shape == (1, 3, 26, 14)


@pytest.fixture()
def datamodule(sample_data: Path) -> SRDataModule:
    return SRDataModule(
        train_dir=str(sample_data / "train"), val_dir=str(sample_data / "val"), hr_size=32, scales=[2],
        batch_size=2, num_workers=0,
    )


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu", max_steps=3, limit_val_batches=1, logger=TensorBoardLogger(tmp_path, name="", version=""),
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def test_fit_validate_logs_metrics_and_image_grid(tmp_path: Path, datamodule: SRDataModule):
    module = _module(log_images=2, lpips_net="alex", random_lpips_backbone=True)
    trainer = _trainer(tmp_path, val_check_interval=3)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    assert {"train/loss", "val/psnr", "val/ssim", "val/lpips_alex_random_backbone"} <= set(metrics)
    assert "val/lpips" not in metrics  # a random backbone is never reported as LPIPS
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path)).Reload()
    assert "val/lr_sr_hr" in events.Tags()["images"]


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path: Path, datamodule: SRDataModule):
    module = _module()
    trainer = _trainer(tmp_path, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = TeacherModule.load_from_checkpoint(path).eval()
    module.eval()
    lr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(module.sample(lr, seeds=[1, 2]), loaded.sample(lr, seeds=[1, 2]))
    # The timestep/noise stream continues where it stopped.
    assert "yonos_generator_state" in torch.load(path, weights_only=False)


def test_scale_missing_from_the_datamodule_fails_at_start(tmp_path: Path, sample_data: Path):
    datamodule = SRDataModule(
        train_dir=str(sample_data / "train"), val_dir=str(sample_data / "val"), hr_size=32, scales=[4], num_workers=0
    )
    with pytest.raises(ValueError, match=r"model.scale = 2 .*data.scales"):
        _trainer(tmp_path).fit(_module(), datamodule=datamodule)


def test_invalid_arguments_name_the_key():
    with pytest.raises(ValueError, match="model.scale"):
        _module(scale=0)
    with pytest.raises(ValueError, match="model.val_num_steps"):
        _module(val_num_steps=0)


def test_mixed_precision_autocasts_only_the_network_latents_noise_targets_and_loss_stay_fp32():
    """Under bf16 autocast (what trainer.precision bf16-mixed does) a bf16 z_hr would put a floor of ~6e-3 under
    the loss of a perfect network; the VAE runs outside autocast and everything but the UNet stays float32."""
    module = _module()
    batch = _fixed_batch()
    seen = []
    forward = module.denoiser.forward

    def spy(z_t, z_lr, t):
        output = forward(z_t, z_lr, t)
        seen.append((z_t, z_lr, t, output))
        return output

    module.denoiser.forward = spy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module.training_step(batch, 0)
    (z_t, z_lr, t, output), = seen
    assert output.dtype == torch.bfloat16  # the network itself does run under autocast
    assert z_t.dtype == z_lr.dtype == loss.dtype == torch.float32
    # The same values as a float32 computation outside autocast.
    with torch.no_grad():
        z_hr_ref = module.codec.encode(batch["hr"])
        z_lr_ref = module.codec.encode(upsample_to(batch["lr_x2"], (32, 32)))
    generator = torch.Generator().manual_seed(0)
    t_ref = sample_timesteps(2, 1000, generator, torch.device("cpu"))
    z_t_ref = add_noise(z_hr_ref, torch.randn(z_hr_ref.shape, generator=generator), t_ref, module.alphas_cumprod)
    assert torch.equal(t, t_ref)
    assert_close(z_lr, z_lr_ref, rtol=0, atol=1e-6)
    assert_close(z_t, z_t_ref, rtol=0, atol=1e-6)
    x0 = predict_x0(output.float(), z_t_ref, t, module.alphas_cumprod, "v_prediction")
    assert_close(loss, weighted_x0_loss(x0, z_hr_ref, t, module.alphas_cumprod, "one_plus_snr"), rtol=1e-6, atol=0)


def test_a_prediction_type_other_than_the_base_models_is_warned_about(sd_folder: Path):
    """The tiny SD folder's scheduler says epsilon (as SD 2.1-base's does)."""
    with pytest.warns(UserWarning, match=r"model.prediction_type = 'v_prediction' .*'epsilon'"):
        _module(backbone=BackboneConfig(pretrained=str(sd_folder)), prediction_type="v_prediction")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _module(backbone=BackboneConfig(pretrained=str(sd_folder)), prediction_type="epsilon")
        _module(prediction_type="v_prediction")  # no base model, nothing to disagree with
        # A zeroed output layer drops the pretrained head: its parameterisation no longer matters.
        _module(backbone=BackboneConfig(pretrained=str(sd_folder)), prediction_type="sample", zero_output_init=True)


def test_zero_output_init_with_the_residual_target_starts_at_copying_the_condition():
    """With x0 (sample) prediction of the residual, a zeroed conv_out makes the one-step output exactly z_lr: the
    gate's two MSEs agree at step 0. Without the zero init, the random head's output is added to z_lr."""
    batch = _fixed_batch()
    hr, lr = batch["hr"], batch["lr_x2"]
    zeroed = _module(target="residual", prediction_type="sample", zero_output_init=True)
    assert not zeroed.denoiser.unet.conv_out.weight.any() and not zeroed.denoiser.unet.conv_out.bias.any()
    assert zeroed.denoiser.training  # from_pretrained / build returns eval mode; the trained UNet trains
    with torch.no_grad():
        z_0, z_lr, _, _ = zeroed.gate(hr, lr, [0, 1])
    assert_close(z_0, z_lr)
    kept = _module(target="residual", prediction_type="sample")
    with torch.no_grad():
        z_0, z_lr, _, _ = kept.gate(hr, lr, [0, 1])
    assert (z_0 - z_lr).abs().max() > 1e-3
