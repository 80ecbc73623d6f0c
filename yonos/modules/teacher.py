"""Stage 1: the teacher, an SR denoiser trained at one scale against the ground truth (docs/method.md,
"Stage 1: the x2 teacher").

Trained at the target scale directly, the same module is the paper's "direct" baseline. The VAE is frozen;
degradations come from the DataModule; EMA of the UNet comes from the ``yonos.callbacks.TrainableEMA`` callback (yaml).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from yonos.batch import SRBatch, lr_key
from yonos.checkpoints import MODEL_CARD_KEY, model_card
from yonos.degradations import upsample_to
from yonos.diffusion import (
    LossWeighting,
    PredictionType,
    load_scheduler_config,
    make_scheduler,
    parameterisation_mismatch,
    sample_timesteps,
)
from yonos.losses import denoising_loss
from yonos.models import BackboneConfig, Target, build_codec, build_denoiser, scheduler_source
from yonos.modules.common import (
    check_scales_available,
    configure_optimizer,
    encode_fp32,
    shard_trainable,
    shared,
)
from yonos.modules.validation import LPIPSChoice, SRValidation, gate_latents
from yonos.sampling import sample_with_seeds
from yonos.seeds import TrainingStream


class TeacherModule(pl.LightningModule):
    """Trains ``SRDenoiser`` at ``scale`` with the x0 loss w(lambda_t) * ||x0(z_t, z_lr, t) - z_hr||^2."""

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        scale: int = 2,
        prediction_type: PredictionType = "v_prediction",
        target: Target = "x0",
        loss_weighting: LossWeighting = "one_plus_snr",
        rescale_betas_zero_snr: bool = False,
        last_timestep_prob: float = 0.0,
        zero_output_init: bool = False,
        val_num_steps: int = 1,
        val_extra_steps: list[int] | None = None,
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
            target: what the UNet denoises: ``x0`` = z_hr (the paper, SD), or ``residual`` = z_hr - z_lr, whose
                x0 is z_lr + the network's (ResShift-style; a deviation the tiny world uses, docs/method.md).
            loss_weighting: w(lambda_t) of the x0 loss; one_plus_snr equals the MSE on v.
            rescale_betas_zero_snr: rescale the schedule to zero terminal SNR (Lin et al. 2024).
            last_timestep_prob: fraction of training samples whose timestep is the one-step sampler's T - 1
                instead of uniform (0 = the paper's uniform sampling).
            zero_output_init: start the UNet's output convolution at zero (ControlNet-style zero init): with
                ``target: residual`` the first one-step outputs are close to the condition z_lr instead of the
                pretrained head's answer to another question (its output is absolute latents, or noise).
            val_num_steps: DDIM steps of validation, test and predict (1 = YONOS-SR); metrics val/psnr, ...
            val_extra_steps: more step counts to validate at, logged as val/psnr_{n}steps, ...
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
        self.scale, self.prediction_type, self.loss_weighting = scale, prediction_type, loss_weighting
        self.model_card = model_card(backbone, scale, prediction_type, rescale_betas_zero_snr, loss_weighting, target)
        self.optimizer_factory, self.lr_scheduler_factory = shared(optimizer), shared(lr_scheduler)  # see SharedFactory

        self.denoiser = build_denoiser(backbone).train()  # from_pretrained returns eval mode
        if zero_output_init:
            torch.nn.init.zeros_(self.denoiser.unet.conv_out.weight)
            torch.nn.init.zeros_(self.denoiser.unet.conv_out.bias)
        if gradient_checkpointing:
            self.denoiser.unet.enable_gradient_checkpointing()
        self.codec = build_codec(backbone).eval().requires_grad_(False)
        source = scheduler_source(backbone)
        # A zeroed output layer discards the pretrained head, and with it the parameterisation it was trained in.
        pretrained_head = backbone.pretrained and not zero_output_init
        if pretrained_head and (mismatch := parameterisation_mismatch(load_scheduler_config(source), prediction_type)):
            warnings.warn(mismatch, stacklevel=2)
        self.scheduler = make_scheduler(source, prediction_type, rescale_betas_zero_snr)
        if not 0.0 <= last_timestep_prob <= 1.0:
            raise ValueError(f"model.last_timestep_prob must be in [0, 1], got {last_timestep_prob}")
        self.last_timestep_prob = last_timestep_prob
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)
        self.denoiser.use_target(target, self.scheduler.alphas_cumprod, prediction_type)
        self.validation = SRValidation(val_num_steps, val_extra_steps, lpips_net, random_lpips_backbone, log_images, seed)
        self.stream = TrainingStream(seed)

    def train(self, mode: bool = True) -> "TeacherModule":
        super().train(mode)
        self.codec.eval()  # frozen parts stay in eval mode whatever Lightning asks of the module
        return self

    def configure_model(self) -> None:
        shard_trainable(self, [self.denoiser.unet])  # FSDP only; a no-op elsewhere

    def setup(self, stage: str) -> None:
        if stage != "predict":
            check_scales_available(self, {"model.scale": self.scale})
        if stage in ("fit", "validate", "test"):
            self.validation.prepare()

    # Training.

    def encode_pair(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        """z_hr and z_lr (the LR upsampled to the HR size, then encoded), both (B, 4, H/8, W/8)."""
        z_hr, z_lr = encode_fp32(self.codec, torch.cat([hr, upsample_to(lr, tuple(hr.shape[-2:]))])).chunk(2)
        return z_hr, z_lr  # one VAE call for both: fewer, larger kernels

    def training_step(self, batch: SRBatch, batch_idx: int) -> Tensor:
        z_hr, z_lr = self.encode_pair(batch["hr"], batch[lr_key(self.scale)])
        generator = self.stream.generator(self.device, self.global_rank)
        t = sample_timesteps(
            z_hr.shape[0], self.scheduler.config.num_train_timesteps, generator, self.device, self.last_timestep_prob
        )
        eps = torch.randn(z_hr.shape, generator=generator, device=self.device, dtype=torch.float32)  # (B, 4, h, w)
        loss = denoising_loss(
            self.denoiser, z_hr, z_lr, t, eps, self.alphas_cumprod, self.prediction_type, self.loss_weighting
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=z_hr.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        return configure_optimizer(params, self.optimizer_factory, self.lr_scheduler_factory)

    # Sampling, validation, prediction.

    def sample(self, lr: Tensor, seeds: list[int] | None = None, num_steps: int | None = None) -> Tensor:
        """SR images for an LR batch; the noise of sample i comes from ``seeds[i]`` (default: model seed + i)."""
        seeds = seeds if seeds is not None else [self.hparams.seed + i for i in range(lr.shape[0])]
        steps = num_steps or self.validation.steps[0]
        return sample_with_seeds(self.denoiser, self.codec, self.scheduler, lr, self.scale, seeds, steps)

    def gate(self, hr: Tensor, lr: Tensor, seeds: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The condition-copy gate's latents (yonos.modules.validation.gate_latents)."""
        return gate_latents(self.denoiser, self.codec, self.scheduler, hr, lr, self.scale, seeds)

    def validation_step(self, batch: SRBatch, batch_idx: int) -> None:
        self.validation.step(self, self.sample, batch, batch_idx, self.scale, "val", self.gate)

    def on_validation_epoch_end(self) -> None:
        self.validation.report(self)

    def test_step(self, batch: SRBatch, batch_idx: int) -> None:
        self.validation.step(self, self.sample, batch, batch_idx, self.scale, "test")

    def predict_step(self, batch: SRBatch, batch_idx: int) -> dict[str, Any]:
        return {"sr": self.sample(batch["lr"]), "name": batch["name"]}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.save(checkpoint)
        checkpoint[MODEL_CARD_KEY] = self.model_card

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.load(checkpoint)
