"""Stage 2: scale distillation (docs/method.md, "Stage 2: scale distillation"). A student at scale N learns the
frozen teacher's x0 prediction for the same noisy latent, the teacher seeing the LR at scale N / k (the paper: N / 2).

The teacher is a TeacherModule or an earlier ScaleDistillModule checkpoint; the student starts as its copy.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from yonos.batch import SRBatch, lr_key
from yonos.checkpoints import (
    MODEL_CARD_KEY,
    StageCheckpoint,
    as_stage_checkpoint,
    drop_submodule_state,
    restore_submodule_state,
)
from yonos.degradations import upsample_to
from yonos.diffusion import LossWeighting, add_noise, sample_timesteps
from yonos.losses import distillation_loss
from yonos.modules.common import check_scales_available, configure_optimizer, encode_fp32, shard_trainable, shared
from yonos.modules.validation import LPIPSChoice, SRValidation, gate_latents
from yonos.sampling import sample_with_seeds
from yonos.seeds import TrainingStream


def check_scale_rule(teacher_scale: int, student_scale: int) -> None:
    """The student magnifies more than its teacher, by an integer factor (the paper doubles: 2 -> 4 -> 8)."""
    if teacher_scale < 1 or student_scale <= teacher_scale or student_scale % teacher_scale:
        raise ValueError(
            f"model.student_scale = {student_scale} must be a multiple of model.teacher_scale = {teacher_scale} "
            "greater than it (e.g. 2 -> 4 -> 8)"
        )


class ScaleDistillModule(pl.LightningModule):
    """Trains a student at ``student_scale`` on a frozen teacher at ``teacher_scale`` (same z_t, t and noise)."""

    def __init__(
        self,
        teacher_ckpt: str | StageCheckpoint,
        teacher_scale: int = 2,
        student_scale: int = 4,
        gt_mix: float = 0.0,
        loss_weighting: LossWeighting | None = None,
        last_timestep_prob: float = 0.0,
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
            teacher_ckpt: checkpoint of a TeacherModule or of an earlier ScaleDistillModule (or that model already
                loaded: a yonos.checkpoints.StageCheckpoint, whose networks the module then takes over).
            teacher_scale: scale of the teacher's LR input; must equal the scale the teacher was trained at.
            student_scale: scale the student learns; a multiple of teacher_scale greater than it.
            gt_mix: weight in [0, 1] of a ground-truth x0 term blended into the loss (0 = the paper).
            loss_weighting: w(lambda_t); default: the teacher's.
            last_timestep_prob: fraction of training samples at the one-step sampler's timestep T - 1 instead of
                uniform (0 = the paper).
            val_num_steps: DDIM steps of the student's validation (metrics val/psnr, ...).
            val_extra_steps: more step counts to validate at (val/psnr_{n}steps, ...).
            lpips_net: LPIPS backbone for validation, or none.
            random_lpips_backbone: LPIPS with a random backbone (code-path checks only).
            gradient_checkpointing: trade compute for student UNet activation memory.
            log_images: rows of (LR | SR | HR) logged per validation epoch.
            seed: seed of the timestep/noise stream (seed + rank) and of validation noise.
            optimizer: optimizer factory over the student's parameters (default AdamW, lr 1e-4, wd 1e-2).
            lr_scheduler: optional scheduler factory, stepped every optimizer step.
        """
        super().__init__()
        check_scale_rule(teacher_scale, student_scale)
        if not 0.0 <= gt_mix <= 1.0:
            raise ValueError(f"model.gt_mix must be in [0, 1], got {gt_mix}")
        source = as_stage_checkpoint(teacher_ckpt, key="model.teacher_ckpt")
        if source.scale != teacher_scale:
            raise ValueError(
                f"model.teacher_scale = {teacher_scale} but model.teacher_ckpt {source.path} was trained at x{source.scale}"
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "teacher_ckpt"])
        self.hparams["teacher_ckpt"] = None if source.path is None else str(source.path)  # a path, never the networks
        self.teacher_scale, self.student_scale, self.gt_mix = teacher_scale, student_scale, gt_mix
        self.prediction_type, self.loss_weighting = source.prediction_type, loss_weighting or source.loss_weighting
        # What a later stage needs to rebuild this model from the checkpoint alone.
        self.model_card = source.card(student_scale, self.loss_weighting)
        self.optimizer_factory, self.lr_scheduler_factory = shared(optimizer), shared(lr_scheduler)  # see SharedFactory

        self.teacher = source.denoiser.eval().requires_grad_(False)
        self.student = copy.deepcopy(source.denoiser).train().requires_grad_(True)
        if gradient_checkpointing:
            self.student.unet.enable_gradient_checkpointing()
        self.codec = source.codec.eval().requires_grad_(False)
        self.scheduler = source.scheduler()
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)
        if not 0.0 <= last_timestep_prob <= 1.0:
            raise ValueError(f"model.last_timestep_prob must be in [0, 1], got {last_timestep_prob}")
        self.last_timestep_prob = last_timestep_prob
        self.validation = SRValidation(val_num_steps, val_extra_steps, lpips_net, random_lpips_backbone, log_images, seed)
        self.stream = TrainingStream(seed)

    def train(self, mode: bool = True) -> "ScaleDistillModule":
        super().train(mode)
        self.teacher.eval()
        self.codec.eval()
        return self

    def configure_model(self) -> None:
        shard_trainable(self, [self.student.unet])  # FSDP only; the frozen teacher stays whole on every rank

    def setup(self, stage: str) -> None:
        if stage != "predict":
            needed = {"model.student_scale": self.student_scale}
            if stage == "fit":
                needed["model.teacher_scale"] = self.teacher_scale
            check_scales_available(self, needed)
        if stage in ("fit", "validate", "test"):
            self.validation.prepare()

    # Training.

    def training_step(self, batch: SRBatch, batch_idx: int) -> Tensor:
        hr = batch["hr"]
        size = tuple(hr.shape[-2:])
        lr_teacher = upsample_to(batch[lr_key(self.teacher_scale)], size)
        lr_student = upsample_to(batch[lr_key(self.student_scale)], size)
        # HR once for both networks; one VAE call for the three images; float32 latents (see encode_fp32).
        z_hr, z_lr_teacher, z_lr_student = encode_fp32(self.codec, torch.cat([hr, lr_teacher, lr_student])).chunk(3)
        generator = self.stream.generator(self.device, self.global_rank)
        t = sample_timesteps(
            z_hr.shape[0], self.scheduler.config.num_train_timesteps, generator, self.device, self.last_timestep_prob
        )
        eps = torch.randn(z_hr.shape, generator=generator, device=self.device, dtype=torch.float32)
        z_t = add_noise(z_hr, eps, t, self.alphas_cumprod)  # one z_t, seen by teacher and student
        loss = distillation_loss(
            self.student, self.teacher, z_t, t, z_lr_student, z_lr_teacher, self.alphas_cumprod,
            self.prediction_type, self.loss_weighting, z_hr=z_hr, gt_mix=self.gt_mix,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=z_hr.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.student.parameters() if p.requires_grad]
        return configure_optimizer(params, self.optimizer_factory, self.lr_scheduler_factory)

    # Sampling, validation, prediction (the student).

    def sample(self, lr: Tensor, seeds: list[int] | None = None, num_steps: int | None = None) -> Tensor:
        """Student SR images for an LR batch at ``student_scale``; sample i's noise comes from ``seeds[i]``."""
        seeds = seeds if seeds is not None else [self.hparams.seed + i for i in range(lr.shape[0])]
        steps = num_steps or self.validation.steps[0]
        return sample_with_seeds(self.student, self.codec, self.scheduler, lr, self.student_scale, seeds, steps)

    def gate(self, hr: Tensor, lr: Tensor, seeds: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The condition-copy gate's latents (yonos.modules.validation.gate_latents)."""
        return gate_latents(self.student, self.codec, self.scheduler, hr, lr, self.student_scale, seeds)

    def validation_step(self, batch: SRBatch, batch_idx: int) -> None:
        self.validation.step(self, self.sample, batch, batch_idx, self.student_scale, "val", self.gate)

    def on_validation_epoch_end(self) -> None:
        self.validation.report(self)

    def test_step(self, batch: SRBatch, batch_idx: int) -> None:
        self.validation.step(self, self.sample, batch, batch_idx, self.student_scale, "test")

    def predict_step(self, batch: SRBatch, batch_idx: int) -> dict[str, Any]:
        return {"sr": self.sample(batch["lr"]), "name": batch["name"]}

    # Checkpoints hold the student and the codec; the frozen teacher is reloaded from teacher_ckpt.

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.save(checkpoint)
        checkpoint[MODEL_CARD_KEY] = self.model_card
        drop_submodule_state(checkpoint, "teacher.")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.load(checkpoint)
        restore_submodule_state(checkpoint, "teacher.", self.teacher)
