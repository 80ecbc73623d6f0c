"""Stage 0b: the UNet prior of the tiny base. Real SD's UNet is a trained latent denoiser; this stage gives the tiny
base one: an unconditional denoiser of the codec's latents of the training photos, with SD's noise schedule and the
parameterisation that ``yonos make-base`` writes into the base's scheduler config. Not an SR stage: no LR here.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
from diffusers import UNet2DConditionModel
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from yonos.batch import SRBatch
from yonos.diffusion import (
    LossWeighting,
    PredictionType,
    add_noise,
    linear_x0,
    load_scheduler_config,
    make_scheduler,
    parameterisation_mismatch,
    predict_x0,
    sample_timesteps,
)
from yonos.losses import weighted_x0_loss
from yonos.models import PROMPT_LENGTH, BackboneConfig, _load, build_codec, resolve_pretrained, scheduler_source
from yonos.modules.common import configure_optimizer, encode_fp32, shared
from yonos.seeds import TrainingStream, validation_generator

VAL_TIMESTEPS = (99, 499, 899, 999)
log = logging.getLogger("yonos")
"""Timesteps of the validation losses (val/x0_mse_t{t}): fixed, so the curve compares across steps and runs."""


class PriorModule(pl.LightningModule):
    """Trains the base's UNet (C latent channels in and out, zero text context) to denoise z_0 = E(HR) alone."""

    UNET_CONFIG_KEY = "yonos_prior_unet_config"
    """Checkpoint key of the UNet's diffusers config: ``yonos make-base --prior-ckpt`` rebuilds the UNet from it."""

    def __init__(
        self,
        backbone: BackboneConfig | None = None,
        prediction_type: PredictionType = "v_prediction",
        loss_weighting: LossWeighting = "one_plus_snr",
        seed: int = 0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """
        Args:
            backbone: the SD-layout base whose ``vae/`` encodes and whose ``unet/`` (C in, C out) is trained.
            prediction_type: the UNet's parameterisation; write the same into the base (``yonos make-base``).
            loss_weighting: w(lambda_t) of the x0 loss; one_plus_snr equals the MSE on v.
            seed: seed of the timestep/noise stream (seed + rank) and of the validation noise.
            optimizer: optimizer factory over the UNet (default AdamW, lr 1e-4, wd 1e-2).
            lr_scheduler: optional scheduler factory, stepped every optimizer step.
        """
        super().__init__()
        backbone = BackboneConfig(**backbone) if isinstance(backbone, dict) else backbone or BackboneConfig()
        if not backbone.pretrained:
            raise ValueError("model.backbone.pretrained: the prior trains the UNet of an SD-layout base (yonos make-base)")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["backbone"] = asdict(backbone)
        self.prediction_type, self.loss_weighting = prediction_type, loss_weighting
        self.optimizer_factory, self.lr_scheduler_factory = shared(optimizer), shared(lr_scheduler)
        self.unet = _load(UNet2DConditionModel, resolve_pretrained(backbone.pretrained), "unet", backbone.revision)
        if self.unet.config.in_channels != self.unet.config.out_channels:
            raise ValueError(f"{backbone.pretrained}: unet/ takes {self.unet.config.in_channels} channels; the prior is unconditional")
        self.register_buffer("context", torch.zeros(1, PROMPT_LENGTH, self.unet.config.cross_attention_dim), persistent=False)
        self.codec = build_codec(backbone).eval().requires_grad_(False)
        source = scheduler_source(backbone)
        if mismatch := parameterisation_mismatch(load_scheduler_config(source), prediction_type):
            warnings.warn(mismatch, stacklevel=2)
        self.scheduler = make_scheduler(source, prediction_type)
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone(), persistent=False)
        self.stream = TrainingStream(seed)

    def train(self, mode: bool = True) -> "PriorModule":
        super().train(mode)
        self.codec.eval()
        return self

    def loss(self, z_0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """w(lambda_t) * ||x0(z_t, t) - z_0||^2 for the unconditional UNet."""
        z_t = add_noise(z_0, eps, t, self.alphas_cumprod)  # (B, C, h, w)
        context = self.context.expand(z_0.shape[0], -1, -1)
        output = self.unet(z_t, t, encoder_hidden_states=context).sample.float()
        x0_pred = predict_x0(output, z_t, t, self.alphas_cumprod, self.prediction_type)
        return weighted_x0_loss(x0_pred, z_0, t, self.alphas_cumprod, self.loss_weighting)

    def training_step(self, batch: SRBatch, batch_idx: int) -> Tensor:
        z_0 = encode_fp32(self.codec, batch["hr"])
        generator = self.stream.generator(self.device, self.global_rank)
        t = sample_timesteps(z_0.shape[0], self.scheduler.config.num_train_timesteps, generator, self.device)
        eps = torch.randn(z_0.shape, generator=generator, device=self.device, dtype=torch.float32)
        loss = self.loss(z_0, t, eps)
        self.log("train/loss", loss, prog_bar=True, batch_size=z_0.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._gate = {t: torch.zeros(3, dtype=torch.float64) for t in VAL_TIMESTEPS}  # (model, linear, count)

    def on_validation_epoch_end(self) -> None:
        """Say in the log whether the prior beats the best per-channel linear denoiser at every timestep."""
        gate = {t: sums for t, sums in getattr(self, "_gate", {}).items() if sums[2] > 0}
        if not gate or self.global_rank != 0:
            return
        pairs = ", ".join(f"t={t}: {s[0] / s[2]:.4f} vs {s[1] / s[2]:.4f}" for t, s in gate.items())
        if all(s[0] < s[1] for s in gate.values()):
            log.info(f"prior: x0 MSE beats the best per-channel linear denoiser at every timestep ({pairs})")
        else:
            log.warning(f"prior: x0 MSE does NOT beat the best per-channel linear denoiser everywhere ({pairs}): not learned yet")

    def validation_step(self, batch: SRBatch, batch_idx: int) -> None:
        """The unweighted x0 MSE at fixed timesteps, with noise seeded from the sample index, and beside it the
        gate: the x0 MSE of the best per-channel linear denoiser with the batch's channel statistics."""
        z_0 = encode_fp32(self.codec, batch["hr"])
        seeds = batch["index"].tolist()
        eps = torch.cat([
            torch.randn((1, *z_0.shape[1:]), generator=validation_generator(self.hparams.seed, int(i)), dtype=torch.float32)
            for i in seeds
        ]).to(self.device)
        for timestep in VAL_TIMESTEPS:
            t = torch.full((z_0.shape[0],), timestep, device=self.device, dtype=torch.long)
            z_t = add_noise(z_0, eps, t, self.alphas_cumprod)
            output = self.unet(z_t, t, encoder_hidden_states=self.context.expand(z_0.shape[0], -1, -1)).sample.float()
            mse = (predict_x0(output, z_t, t, self.alphas_cumprod, self.prediction_type) - z_0).pow(2).mean()
            mean, var = z_0.mean((0, 2, 3), keepdim=True), z_0.var((0, 2, 3), keepdim=True)
            linear = (linear_x0(z_t, t, self.alphas_cumprod, mean, var) - z_0).pow(2).mean()
            self.log(f"val/x0_mse_t{timestep}", mse, batch_size=z_0.shape[0], sync_dist=True)
            self.log(f"val/x0_mse_linear_t{timestep}", linear, batch_size=z_0.shape[0], sync_dist=True)
            if hasattr(self, "_gate"):
                self._gate[timestep] += torch.tensor([float(mse), float(linear), 1.0], dtype=torch.float64) * z_0.shape[0]

    def configure_optimizers(self) -> Any:
        return configure_optimizer(list(self.unet.parameters()), self.optimizer_factory, self.lr_scheduler_factory)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.save(checkpoint)
        # Plain values only (diffusers' private keys hold a pathlib path), so weights_only loading reads it.
        checkpoint[self.UNET_CONFIG_KEY] = {k: v for k, v in self.unet.config.items() if not k.startswith("_")}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.load(checkpoint)
