"""Stage 1: the teacher, an SR denoiser trained at one scale against the ground truth (method.md section 2.1).

Trained at the target scale directly, the same module is the paper's "direct" baseline. The VAE is frozen;
degradations come from the DataModule; EMA comes from Lightning's ``EMAWeightAveraging`` callback (yaml).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from yonos.data import SRBatch, lr_key, validation_seed
from yonos.degradations import upsample_to
from yonos.diffusion import LossWeighting, PredictionType, make_scheduler, sample_timesteps
from yonos.inference import per_sample_noise, super_resolve
from yonos.losses import denoising_loss
from yonos.models import BackboneConfig, build_codec, build_denoiser, scheduler_source
from yonos.modules.evaluation import LPIPSChoice, SRMetrics, log_image_grid


class TeacherModule(pl.LightningModule):
    """Trains ``SRDenoiser`` at ``scale`` with the x0 loss w(lambda_t) * ||x0(z_t, z_lr, t) - z_hr||^2."""

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        scale: int = 2,
        prediction_type: PredictionType = "v_prediction",
        loss_weighting: LossWeighting = "one_plus_snr",
        rescale_betas_zero_snr: bool = False,
        val_num_steps: int = 1,
        lpips_net: LPIPSChoice = "alex",
        random_lpips_backbone: bool = False,
        gradient_checkpointing: bool = False,
        log_images: int = 4,
        seed: int = 0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """
        Args:
            backbone: where the UNet and VAE come from (pretrained SD folder / hub id, or a random preset).
            scale: magnification this model learns; the batch must hold ``lr_x{scale}`` (data.scales).
            prediction_type: what the UNet outputs; every loss goes through the x0 conversion.
            loss_weighting: w(lambda_t) of the x0 loss; one_plus_snr equals the MSE on v.
            rescale_betas_zero_snr: rescale the schedule to zero terminal SNR (Lin et al. 2024).
            val_num_steps: DDIM steps used by validation, test and predict (1 = YONOS-SR).
            lpips_net: LPIPS backbone for validation, or none. Its pretrained weights must be available.
            random_lpips_backbone: LPIPS with a random backbone (code-path checks only; logged as
                val/lpips_<net>_random_backbone, never as val/lpips).
            gradient_checkpointing: trade compute for UNet activation memory.
            log_images: rows of (LR | SR | HR) logged to TensorBoard per validation epoch.
            seed: seed of the timestep/noise stream (rank r uses seed + r) and of validation noise.
            optimizer: optimizer factory over the UNet parameters (default AdamW, lr 1e-4, weight decay 1e-2).
            lr_scheduler: optional scheduler factory, stepped every optimizer step.
        """
        super().__init__()
        backbone = BackboneConfig(**backbone) if isinstance(backbone, dict) else backbone or BackboneConfig()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["backbone"] = asdict(backbone)  # plain types: checkpoints load with weights_only=True
        if scale < 1:
            raise ValueError(f"model.scale must be >= 1, got {scale}")
        if val_num_steps < 1:
            raise ValueError(f"model.val_num_steps must be >= 1, got {val_num_steps}")
        self.scale, self.prediction_type, self.loss_weighting = scale, prediction_type, loss_weighting
        self.val_num_steps, self.log_images, self.seed = val_num_steps, log_images, seed
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler

        self.denoiser = build_denoiser(backbone)
        if gradient_checkpointing:
            self.denoiser.unet.enable_gradient_checkpointing()
        self.codec = build_codec(backbone).eval().requires_grad_(False)
        self.scheduler = make_scheduler(scheduler_source(backbone), prediction_type, rescale_betas_zero_snr)
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)
        self.val_metrics = SRMetrics(lpips_net, crop_border=0, random_lpips_backbone=random_lpips_backbone)
        self._generator: torch.Generator | None = None
        self._restored_generator_state: Tensor | None = None

    # Frozen parts stay in eval mode whatever Lightning asks of the module.

    def train(self, mode: bool = True) -> "TeacherModule":
        super().train(mode)
        self.codec.eval()
        return self

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        scales = getattr(datamodule, "scales", None)
        if stage != "predict" and scales is not None and self.scale not in scales:
            raise ValueError(f"model.scale = {self.scale} is not produced by the data module: data.scales = {scales}")
        if stage in ("fit", "validate", "test"):
            self.val_metrics.prepare()

    # Training.

    def generator(self) -> torch.Generator:
        """This rank's stream of timesteps and noise (seed + global rank), created on the module's device."""
        if self._generator is None or self._generator.device != self.device:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed + self.global_rank)
            if self._restored_generator_state is not None:
                self._generator.set_state(self._restored_generator_state)
                self._restored_generator_state = None
        return self._generator

    def encode_pair(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        """z_hr and z_lr (the LR upsampled to the HR size, then encoded), both (B, 4, H/8, W/8)."""
        with torch.no_grad():
            return self.codec.encode(hr), self.codec.encode(upsample_to(lr, tuple(hr.shape[-2:])))

    def training_step(self, batch: SRBatch, batch_idx: int) -> Tensor:
        z_hr, z_lr = self.encode_pair(batch["hr"], batch[lr_key(self.scale)])
        generator = self.generator()
        t = sample_timesteps(z_hr.shape[0], self.scheduler.config.num_train_timesteps, generator, self.device)
        eps = torch.randn(z_hr.shape, generator=generator, device=self.device, dtype=z_hr.dtype)
        loss = denoising_loss(
            self.denoiser, z_hr, z_lr, t, eps, self.alphas_cumprod, self.prediction_type, self.loss_weighting
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=z_hr.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        optimizer = (
            self.optimizer_factory(params)
            if self.optimizer_factory is not None
            else torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
        )
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # Sampling, validation, prediction.

    def sample(self, lr: Tensor, seeds: list[int] | None = None, num_steps: int | None = None) -> Tensor:
        """SR images for an LR batch; the noise of sample i comes from ``seeds[i]`` (default: model seed + i)."""
        seeds = seeds if seeds is not None else [self.seed + i for i in range(lr.shape[0])]
        factor = self.codec.downsample_factor
        height, width = lr.shape[-2] * self.scale, lr.shape[-1] * self.scale
        latent_shape = (lr.shape[0], 4, -(-height // factor), -(-width // factor))
        noise = per_sample_noise(latent_shape, seeds, lr.device)
        return super_resolve(
            self.denoiser, self.codec, self.scheduler, lr, self.scale, num_steps or self.val_num_steps, noise=noise
        )

    def _evaluation_step(self, batch: SRBatch, batch_idx: int, prefix: str) -> None:
        hr, lr = batch["hr"], batch[lr_key(self.scale)]
        seeds = [validation_seed(self.seed, int(i)) for i in batch["index"]]
        sr = self.sample(lr, seeds)
        self.val_metrics.update(sr, hr)
        self.log_dict(self.val_metrics.metrics(prefix), batch_size=hr.shape[0], sync_dist=True)
        if batch_idx == 0 and self.global_rank == 0:
            log_image_grid(self.logger, f"{prefix}/lr_sr_hr", upsample_to(lr, tuple(hr.shape[-2:])), sr, hr, self.global_step, self.log_images)

    def validation_step(self, batch: SRBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: SRBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def predict_step(self, batch: SRBatch, batch_idx: int) -> dict[str, Any]:
        return {"sr": self.sample(batch["lr"]), "name": batch["name"]}

    # The timestep/noise stream continues across a resume.

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._generator is not None:
            checkpoint["yonos_generator_state"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._restored_generator_state = checkpoint.get("yonos_generator_state")
