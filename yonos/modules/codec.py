"""Stage 0: the latent codec. Trains a diffusers ``AutoencoderKL`` as an image <-> latent codec (L1 + KL, the
SD VAE recipe without its perceptual and adversarial terms) through the same ``SRDataModule`` as the SR stages.

Real Stable Diffusion ships its VAE pretrained; this stage gives the tiny preset one. ``yonos make-base`` turns its
checkpoint into an SD-layout folder that ``backbone.pretrained`` reads like a real SD download.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from yonos.batch import SRBatch, lr_key
from yonos.degradations import upsample_to
from yonos.models import BackboneConfig, LatentCodec, build_codec
from yonos.modules.common import configure_optimizer, shared
from yonos.modules.validation import SRMetrics, log_image_grid
from yonos.seeds import TrainingStream


@dataclass
class CodecArchitecture:
    """Shape of a codec trained from scratch (diffusers ``AutoencoderKL`` arguments)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """Channels per resolution level; the downsampling factor is 2 ** (levels - 1): 4 for three levels."""
    layers_per_block: int = 1
    latent_channels: int = 4
    """4, as SD's UNet expects."""
    norm_num_groups: int = 32
    mid_block_add_attention: bool = False
    """Self-attention in the lowest-resolution block; off keeps large images cheap and the codec local."""

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if len(self.block_out_channels) < 2:
            raise ValueError("model.architecture.block_out_channels needs at least two levels")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(
                f"model.architecture.block_out_channels {self.block_out_channels} must be multiples of "
                f"norm_num_groups = {self.norm_num_groups}"
            )


def build_vae(architecture: CodecArchitecture, sample_size: int = 128) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` of the given shape (scaling factor set later from the latents)."""
    levels = len(architecture.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=architecture.block_out_channels,
        layers_per_block=architecture.layers_per_block,
        latent_channels=architecture.latent_channels,
        norm_num_groups=architecture.norm_num_groups,
        mid_block_add_attention=architecture.mid_block_add_attention,
        sample_size=sample_size,
        scaling_factor=1.0,
    )


def codec_loss(rec: Tensor, hr: Tensor, kl: Tensor, l1_weight: float, mse_weight: float, kl_weight: float) -> Tensor:
    """l1_weight * |rec - hr| + mse_weight * (rec - hr)^2 (pixel means) + kl_weight * KL (per-sample sum, mean)."""
    loss = kl_weight * kl.mean()
    if l1_weight > 0:
        loss = loss + l1_weight * F.l1_loss(rec, hr)
    if mse_weight > 0:
        loss = loss + mse_weight * F.mse_loss(rec, hr)
    return loss


class CodecModule(pl.LightningModule):
    """Trains an ``AutoencoderKL`` on HR crops; validates decode(encode(HR)) and decode(encode(bicubic-up LR))."""

    def __init__(
        self,
        architecture: CodecArchitecture | None = None,
        pretrained: str | None = None,
        l1_weight: float = 1.0,
        mse_weight: float = 0.0,
        kl_weight: float = 1e-6,
        initial_logvar: float | None = -8.0,
        latent_std_momentum: float = 0.99,
        log_images: int = 4,
        seed: int = 0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        """
        Args:
            architecture: shape of a codec trained from scratch (ignored with ``pretrained``).
            pretrained: an SD folder or hub id whose ``vae/`` is fine-tuned instead of a fresh codec.
            l1_weight: weight of the pixel L1 loss (images in [0, 1]).
            mse_weight: weight of the pixel MSE loss (0 = the SD recipe's L1 only).
            kl_weight: weight of the KL term to N(0, I), summed over latent elements (SD's VAE: 1e-6).
            initial_logvar: bias of the posterior log-variance in a codec trained from scratch (None: diffusers'
                init, log-variance about 0). At 0 the sampled latent is mostly noise (std 1 against a small mean)
                and the decoder first learns blur; -8 starts nearly deterministic and lets the KL term raise it.
            latent_std_momentum: momentum of the running latent standard deviation; ``yonos make-base`` sets the
                scaling factor to its inverse, as SD's 0.18215 was set (unit-variance latents).
            log_images: rows of (bicubic-up LR | decode(encode(HR)) | HR) logged per validation epoch.
            seed: seed of the posterior-sampling stream (seed + rank).
            optimizer: optimizer factory over the VAE parameters (default AdamW, lr 1e-4, wd 1e-2).
            lr_scheduler: optional scheduler factory, stepped every optimizer step.
        """
        super().__init__()
        architecture = CodecArchitecture(**architecture) if isinstance(architecture, dict) else architecture
        architecture = architecture or CodecArchitecture()
        if min(l1_weight, mse_weight, kl_weight) < 0 or l1_weight + mse_weight == 0:
            raise ValueError("model.l1_weight, model.mse_weight, model.kl_weight must be >= 0, l1 + mse > 0")
        if not 0 <= latent_std_momentum < 1:
            raise ValueError(f"model.latent_std_momentum must be in [0, 1), got {latent_std_momentum}")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["architecture"] = asdict(architecture)  # plain types: checkpoints load with weights_only=True
        self.optimizer_factory, self.lr_scheduler_factory = shared(optimizer), shared(lr_scheduler)
        if pretrained:
            self.codec = build_codec(BackboneConfig(pretrained=pretrained))
        else:
            self.codec = LatentCodec(build_vae(architecture))
            if initial_logvar is not None:
                with torch.no_grad():  # quant_conv's output is (mean, logvar) stacked on channels
                    self.codec.vae.quant_conv.bias[architecture.latent_channels :] = initial_logvar
        self.register_buffer("latent_var", torch.ones(()), persistent=True)
        self.register_buffer("latent_mean", torch.zeros(()), persistent=True)
        self.val_hr = SRMetrics("none")
        self.val_lr = SRMetrics("none")
        self.stream = TrainingStream(seed)

    @property
    def vae(self) -> AutoencoderKL:
        return self.codec.vae

    def latent_scaling_factor(self) -> float:
        """1 / std of the training latents (the running estimate): what makes SD's latents unit-variance."""
        return float(self.latent_var.clamp_min(1e-12).rsqrt())

    # Training.

    def training_step(self, batch: SRBatch, batch_idx: int) -> Tensor:
        hr = batch["hr"]
        posterior = self.vae.encode(hr * 2.0 - 1.0).latent_dist
        z = posterior.sample(self.stream.generator(self.device, self.global_rank))  # (B, 4, H/f, W/f)
        rec = (self.vae.decode(z).sample + 1.0) / 2.0  # (B, 3, H, W), unclamped
        kl = posterior.kl()  # (B,)
        hp = self.hparams
        loss = codec_loss(rec, hr, kl, hp.l1_weight, hp.mse_weight, hp.kl_weight)
        with torch.no_grad():
            m = hp.latent_std_momentum
            self.latent_mean.mul_(m).add_((1 - m) * posterior.mean.mean())
            self.latent_var.mul_(m).add_((1 - m) * (posterior.mean - self.latent_mean).pow(2).mean())
        self.log("train/loss", loss, prog_bar=True, batch_size=hr.shape[0])
        self.log("train/kl", kl.mean(), batch_size=hr.shape[0])
        self.log("train/latent_std", self.latent_var.sqrt(), batch_size=hr.shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        return configure_optimizer(list(self.vae.parameters()), self.optimizer_factory, self.lr_scheduler_factory)

    # Validation: the codec's own ceilings for SR (deterministic: posterior means).

    @torch.no_grad()
    def reconstruct(self, image: Tensor) -> Tensor:
        """decode(encode(image)) with the posterior mean, clamped to [0, 1]."""
        return self.codec.decode(self.codec.encode(image))

    def _evaluation_step(self, batch: SRBatch, prefix: str) -> None:
        hr, valid = batch["hr"], batch.get("valid")
        rec_hr = self.reconstruct(hr)
        self.val_hr.update(rec_hr, hr, valid)
        self.log_dict(self.val_hr.metrics(prefix), batch_size=hr.shape[0], sync_dist=True)
        scales = sorted(int(k.split("x")[1]) for k in batch if k.startswith("lr_x"))
        if scales:  # the largest scale's LR, bicubic-upsampled then coded: the ceiling of SR at that scale
            lr_up = upsample_to(batch[lr_key(scales[-1])], tuple(hr.shape[-2:]))
            self.val_lr.update(self.reconstruct(lr_up), hr, valid)
            self.log_dict(self.val_lr.metrics(prefix, f"_lr_x{scales[-1]}"), batch_size=hr.shape[0], sync_dist=True)
        if self._first_batch and self.global_rank == 0:
            self._first_batch = False
            lr_view = upsample_to(batch[lr_key(scales[-1])], tuple(hr.shape[-2:])) if scales else hr
            log_image_grid(self.logger, f"{prefix}/lr_rec_hr", lr_view, rec_hr, hr, self.global_step, self.hparams.log_images)

    def on_validation_epoch_start(self) -> None:
        self._first_batch = True

    on_test_epoch_start = on_validation_epoch_start

    def validation_step(self, batch: SRBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, "val")

    def test_step(self, batch: SRBatch, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.save(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.stream.load(checkpoint)
