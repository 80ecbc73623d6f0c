"""Stage 3: decoder fine-tuning (docs/method.md, "Stage 3: decoder fine-tuning"). The distilled UNet and the VAE
encoder are frozen; the one-step sampler produces the latent of each HR crop (fresh noise every step) and the VAE
decoder learns to map that latent to the HR image with L1 + LPIPS and an optional PatchGAN hinge loss (the SD VAE
recipe).

The training LPIPS uses VGG (as the SD VAE recipe does) and validation reports AlexNet LPIPS (the field's
convention), so the validation number is not the objective the decoder descends.
"""

from __future__ import annotations

import logging

import copy
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from yonos.batch import SRBatch, lr_key
from yonos.checkpoints import (
    MODEL_CARD_KEY,
    StageCheckpoint,
    as_stage_checkpoint,
    drop_submodule_state,
    restore_submodule_state,
)
from yonos.degradations import upsample_to
from yonos.losses import adaptive_gan_weight, hinge_discriminator_loss, hinge_generator_loss
from yonos.metrics import LPIPSNet, build_lpips, lpips_distance
from yonos.models import PatchDiscriminator
from yonos.modules.common import check_scales_available, configure_optimizer, encode_fp32, shard_trainable, shared
from yonos.modules.validation import LPIPSChoice, SRMetrics, log_image_grid
from yonos.sampling import Noise, randn, seeded_noise, super_resolve
from yonos.seeds import TrainingStream, validation_seed


class DecoderFinetuneModule(pl.LightningModule):
    """Fine-tunes the VAE decoder on the latents the frozen one-step SR model produces."""

    def __init__(
        self,
        denoiser_ckpt: str | StageCheckpoint,
        num_steps: int = 1,
        l1_weight: float = 1.0,
        lpips_weight: float = 1.0,
        lpips_net: LPIPSNet = "vgg",
        random_lpips_backbone: bool = False,
        gan_weight: float = 0.0,
        gan_start_step: int = 0,
        val_lpips_net: LPIPSChoice = "alex",
        gradient_checkpointing: bool = False,
        log_images: int = 4,
        seed: int = 0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
    ) -> None:
        """
        Args:
            denoiser_ckpt: the distilled model: a ScaleDistillModule (or TeacherModule) checkpoint, or that model
                already loaded (a yonos.checkpoints.StageCheckpoint, whose networks the module then takes over).
            num_steps: DDIM steps of the sampler whose latents the decoder learns from (1 = YONOS-SR).
            l1_weight: weight of the pixel L1 loss.
            lpips_weight: weight of the LPIPS loss (0 disables it).
            lpips_net: LPIPS backbone of the training loss (VGG, as the SD VAE recipe); its pretrained weights
                must be available (vgg16-397923af.pth in $TORCH_HOME/hub/checkpoints offline).
            random_lpips_backbone: random LPIPS backbone (code-path tests only; not a perceptual loss).
            gan_weight: weight of the PatchGAN hinge loss, scaled by the adaptive weight; 0 turns the GAN off.
                With the GAN on, the module optimises manually (decoder, then discriminator, each step).
            gan_start_step: training batch from which the GAN terms are used.
            val_lpips_net: LPIPS backbone of validation (AlexNet: what papers report, and not the training
                objective), or none.
            gradient_checkpointing: trade compute for VAE decoder activation memory.
            log_images: rows of (LR | SR | HR) logged per validation epoch.
            seed: seed of the sampler noise stream (seed + rank) and of validation noise.
            optimizer: optimizer factory over the decoder parameters (default AdamW, lr 1e-4, wd 1e-2).
            lr_scheduler: optional scheduler factory for the decoder optimizer (automatic optimisation only).
            discriminator_optimizer: optimizer factory of the discriminator (default Adam, lr 1e-4, betas 0.5/0.9).
        """
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"model.num_steps must be >= 1, got {num_steps}")
        if min(l1_weight, lpips_weight, gan_weight) < 0:
            raise ValueError("model.l1_weight, model.lpips_weight and model.gan_weight must be >= 0")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "discriminator_optimizer", "denoiser_ckpt"])
        source = as_stage_checkpoint(denoiser_ckpt, key="model.denoiser_ckpt")
        self.hparams["denoiser_ckpt"] = None if source.path is None else str(source.path)  # a path, never the networks
        self.scale, self.prediction_type = source.scale, source.prediction_type
        self.model_card = source.card()
        self.optimizer_factory, self.lr_scheduler_factory = shared(optimizer), shared(lr_scheduler)  # see SharedFactory
        self.discriminator_optimizer_factory = shared(discriminator_optimizer)

        self.denoiser = source.denoiser.eval().requires_grad_(False)
        self.codec = source.codec.eval().requires_grad_(False)
        for parameter in self.codec.decoder_parameters():
            parameter.requires_grad_(True)
        # The decoder as it was, for validation side by side (not saved: rebuilt from denoiser_ckpt).
        self.original_codec = copy.deepcopy(source.codec).eval().requires_grad_(False)
        if gradient_checkpointing:
            self.codec.vae.enable_gradient_checkpointing()  # the encoder runs without gradients: only the decoder
        self.scheduler = source.scheduler()
        self.discriminator = PatchDiscriminator() if gan_weight > 0 else None
        self.automatic_optimization = self.discriminator is None
        self._lpips: list[nn.Module] = []  # kept out of the state dict
        self.val_metrics = SRMetrics(val_lpips_net, 0, random_lpips_backbone)
        self.val_metrics_original = SRMetrics(val_lpips_net, 0, random_lpips_backbone)
        self.stream = TrainingStream(seed)

    def train(self, mode: bool = True) -> "DecoderFinetuneModule":
        super().train(mode)
        self.denoiser.eval()
        self.original_codec.eval()
        self.codec.eval()  # no dropout or batch norm in the SD VAE: eval mode changes nothing for training
        return self

    def configure_model(self) -> None:
        if self.device_mesh is not None and self.discriminator is not None:
            raise ValueError("model.gan_weight > 0 is not supported with FSDP (experiments/cluster/fsdp.yml); use ddp.yml")
        vae = self.codec.vae
        shard_trainable(self, [m for m in (vae.decoder, vae.post_quant_conv) if m is not None])  # FSDP only

    def setup(self, stage: str) -> None:
        if stage != "predict":
            check_scales_available(self, {"model.denoiser_ckpt's scale": self.scale})
        if stage == "fit" and self.hparams.lpips_weight > 0 and not self._lpips:
            self._lpips.append(build_lpips(self.hparams.lpips_net, self.hparams.random_lpips_backbone))
        if stage in ("fit", "validate", "test"):
            self.val_metrics.prepare()
            self.val_metrics_original.prepare()

    # The latents the one-step sampler really produces.

    def sample_latents(self, lr: Tensor, size: tuple[int, int], noise: Noise | None = None) -> Tensor:
        """z_0 from the frozen denoiser for LR images upsampled to ``size`` (B, C, H/f, W/f): yonos.sampling's
        super_resolve without padding or decoding; the noise comes from the training stream unless given."""
        def encode(lr: Tensor, scale: int) -> Tensor:
            return encode_fp32(self.codec, upsample_to(lr, size))

        if noise is None:
            generator = self.stream.generator(self.device, self.global_rank)
            noise = lambda z_lr: randn(tuple(z_lr.shape), generator, z_lr.device, z_lr.dtype)  # noqa: E731
        return super_resolve(lr, self.scale, encode, self.denoiser, None, self.scheduler, noise, self.hparams.num_steps)

    def reconstruction_loss(self, sr: Tensor, hr: Tensor) -> Tensor:
        """l1_weight * |sr - hr| + lpips_weight * LPIPS(sr, hr), sr unclamped."""
        loss = self.hparams.l1_weight * F.l1_loss(sr, hr)
        if self.hparams.lpips_weight > 0:
            model = self._lpips[0].to(sr.device)
            loss = loss + self.hparams.lpips_weight * lpips_distance(model, sr, hr).mean()
        return loss

    # Training.

    def training_step(self, batch: SRBatch, batch_idx: int) -> Tensor | None:
        hr = batch["hr"]
        latent = self.sample_latents(batch[lr_key(self.scale)], tuple(hr.shape[-2:]))
        sr = self.codec.decode(latent, clamp=False)  # (B, 3, H, W), gradients reach only the decoder
        reconstruction = self.reconstruction_loss(sr, hr)
        self.log("train/reconstruction", reconstruction, batch_size=hr.shape[0])
        if self.automatic_optimization:
            self.log("train/loss", reconstruction, prog_bar=True, batch_size=hr.shape[0])
            return reconstruction
        self._adversarial_step(sr, hr, reconstruction)
        return None

    def _adversarial_step(self, sr: Tensor, hr: Tensor, reconstruction: Tensor) -> None:
        """Manual optimisation with the GAN on: the decoder step, then the discriminator step."""
        decoder_optimizer, discriminator_optimizer = self.optimizers()
        # Batches done so far (global_step counts both optimizers' steps); restored with the loop state on resume.
        batches_done = self.trainer.fit_loop.epoch_loop.batch_progress.total.completed
        use_gan = batches_done >= self.hparams.gan_start_step
        loss = reconstruction
        if use_gan:
            adversarial = hinge_generator_loss(self.discriminator(sr * 2 - 1))
            last_layer = self.codec.vae.decoder.conv_out.weight
            weight = adaptive_gan_weight(reconstruction, adversarial, last_layer) * self.hparams.gan_weight
            loss = reconstruction + weight * adversarial
            self.log("train/gan_weight", weight, batch_size=hr.shape[0])
        decoder_optimizer.zero_grad()
        self.manual_backward(loss)
        decoder_optimizer.step()
        self.log("train/loss", loss, prog_bar=True, batch_size=hr.shape[0])
        if use_gan:
            logits_real, logits_fake = self.discriminator(hr * 2 - 1), self.discriminator(sr.detach() * 2 - 1)
            discriminator_loss = hinge_discriminator_loss(logits_real, logits_fake)
            discriminator_optimizer.zero_grad()
            self.manual_backward(discriminator_loss)
            discriminator_optimizer.step()
            self.log("train/discriminator", discriminator_loss, batch_size=hr.shape[0])

    def configure_optimizers(self) -> Any:
        decoder = configure_optimizer(self.codec.decoder_parameters(), self.optimizer_factory, self.lr_scheduler_factory)
        if self.discriminator is None:
            return decoder
        if self.lr_scheduler_factory is not None:
            raise ValueError("model.lr_scheduler is not supported with model.gan_weight > 0 (manual optimisation)")
        factory = self.discriminator_optimizer_factory or (
            lambda params: torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9))
        )
        return [decoder, factory(self.discriminator.parameters())]

    # Validation: the same latents through the original and the fine-tuned decoder.

    def _evaluation_step(self, batch: SRBatch, batch_idx: int, prefix: str) -> None:
        hr, lr = batch["hr"], batch[lr_key(self.scale)]
        seeds = [validation_seed(self.hparams.seed, int(i)) for i in batch["index"]]
        noise = lambda z_lr: seeded_noise(tuple(z_lr.shape), seeds, hr.device)  # noqa: E731 - the codec's latent shape
        latent = self.sample_latents(lr, tuple(hr.shape[-2:]), noise=noise)
        with torch.no_grad():
            sr, sr_original = self.codec.decode(latent), self.original_codec.decode(latent)
        self.val_metrics.update(sr, hr, batch.get("valid"))
        self.val_metrics_original.update(sr_original, hr, batch.get("valid"))
        self.log_dict(self.val_metrics.metrics(prefix), batch_size=hr.shape[0], sync_dist=True)
        self.log_dict(self.val_metrics_original.metrics(prefix, "_original_decoder"), batch_size=hr.shape[0], sync_dist=True)
        if batch_idx == 0 and self.global_rank == 0:
            log_image_grid(self.logger, f"{prefix}/lr_sr_hr", upsample_to(lr, tuple(hr.shape[-2:])), sr, hr, self.global_step, self.hparams.log_images)

    def validation_step(self, batch: SRBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        """One line in the log: PSNR-Y / SSIM-Y of the fine-tuned beside the original decoder, same latents."""
        if self.val_metrics.psnr.update_count == 0:
            return
        tuned = float(self.val_metrics.psnr.compute()), float(self.val_metrics.ssim.compute())  # every rank: a sync
        original = float(self.val_metrics_original.psnr.compute()), float(self.val_metrics_original.ssim.compute())
        if self.global_rank == 0:
            logging.getLogger("yonos").info(
                f"val ({type(self).__name__}, step {self.global_step}): PSNR-Y {tuned[0]:.2f} dB, SSIM-Y {tuned[1]:.4f} "
                f"with the fine-tuned decoder; original decoder {original[0]:.2f} dB, {original[1]:.4f}"
            )

    def test_step(self, batch: SRBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    # Checkpoints hold the denoiser and the codec (with the new decoder), loadable as a stage checkpoint.

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.save(checkpoint)
        checkpoint[MODEL_CARD_KEY] = self.model_card
        drop_submodule_state(checkpoint, "original_codec.")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.load(checkpoint)
        restore_submodule_state(checkpoint, "original_codec.", self.original_codec)
