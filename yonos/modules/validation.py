"""Validation pieces shared by the stage modules by composition: metric accumulation, the image grid, and the
evaluation step (sample at one or more DDIM step counts, update metrics, log)."""

from __future__ import annotations

import logging
from typing import Callable, Literal

import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import MeanMetric

from yonos.batch import SRBatch, lr_key
from yonos.degradations import upsample_to
from yonos.metrics import build_lpips, lpips_distance, psnr_y, ssim_y
from yonos.seeds import validation_seed

LPIPSChoice = Literal["alex", "vgg", "none"]
log = logging.getLogger("yonos")
if not log.handlers:  # the gate's verdict reaches the console at INFO, as Lightning's own lines do
    log.addHandler(logging.StreamHandler())
    log.setLevel(logging.INFO)


class SRMetrics(nn.Module):
    """Running means of PSNR-Y, SSIM-Y and LPIPS over an epoch, reduced across ranks by torchmetrics.

    The LPIPS network is built on first use (so constructing a module for inference needs no metric weights)
    and is kept outside the state dict.
    """

    def __init__(self, lpips_net: LPIPSChoice = "alex", crop_border: int = 0, random_lpips_backbone: bool = False) -> None:
        super().__init__()
        self.lpips_net, self.crop_border, self.random_lpips_backbone = lpips_net, crop_border, random_lpips_backbone
        self.psnr, self.ssim, self.lpips = MeanMetric(), MeanMetric(), MeanMetric()
        self._lpips_model: list[nn.Module] = []  # a list keeps it out of state_dict and .to()

    @property
    def lpips_name(self) -> str:
        # A random backbone is not LPIPS: its number gets a name that says so.
        return f"lpips_{self.lpips_net}_random_backbone" if self.random_lpips_backbone else "lpips"

    def prepare(self) -> None:
        """Build the LPIPS network now (fails early, with the missing weight file named, before training)."""
        if self.lpips_net != "none" and not self._lpips_model:
            self._lpips_model.append(build_lpips(self.lpips_net, random_backbone=self.random_lpips_backbone))

    @torch.no_grad()
    def update(self, sr: Tensor, hr: Tensor, valid: Tensor | None = None) -> None:
        """``valid`` (B,) bool: False leaves the sample out (the padding duplicates of distributed evaluation)."""
        sr, hr = sr.float(), hr.float()
        weight = 1.0 if valid is None else valid.to(sr.device, torch.float32)
        self.psnr.update(psnr_y(sr, hr, self.crop_border), weight)
        self.ssim.update(ssim_y(sr, hr, self.crop_border), weight)
        if self.lpips_net != "none":
            self.prepare()
            model = self._lpips_model[0].to(sr.device)
            self.lpips.update(lpips_distance(model, sr, hr), weight)

    def metrics(self, prefix: str, suffix: str = "") -> dict[str, MeanMetric]:
        """The metric objects to pass to ``LightningModule.log_dict`` (computed and reset at epoch end)."""
        out = {f"{prefix}/psnr{suffix}": self.psnr, f"{prefix}/ssim{suffix}": self.ssim}
        if self.lpips_net != "none":
            out[f"{prefix}/{self.lpips_name}{suffix}"] = self.lpips
        return out


SampleFn = Callable[[Tensor, list[int], int], Tensor]
"""(LR batch, per-sample seeds, DDIM steps) -> SR batch in [0, 1]."""
GateFn = Callable[[Tensor, Tensor, list[int]], tuple[Tensor, Tensor, Tensor, Tensor]]
"""(HR batch, LR batch, per-sample seeds) -> (one-step z_0, z_lr, z_hr, decode(z_lr)): see :func:`gate_latents`."""


def gate_latents(denoiser: nn.Module, codec: nn.Module, scheduler: object, hr: Tensor, lr: Tensor, scale: int, seeds: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What the condition-copy gate compares: the one-step latent z_0, the condition z_lr (the LR upsampled and
    encoded, as the stage conditions on it), z_hr = E(HR), and decode(z_lr) (copying the condition, in pixels)."""
    from yonos.sampling import pad_to_multiple, seeded_noise, size_multiple, super_resolve, untiled_calls

    encode, denoise, _ = untiled_calls(denoiser, codec)
    with torch.no_grad():
        z_lr = encode(lr, scale)
        noise = seeded_noise(tuple(z_lr.shape), seeds, lr.device)
        z_0 = super_resolve(lr, scale, lambda *_: z_lr, denoise, None, scheduler, noise, 1)
        z_hr = codec.encode(pad_to_multiple(hr, size_multiple(denoiser.unet, codec)))
        copy = codec.decode(z_lr)[..., : hr.shape[-2], : hr.shape[-1]]
    return z_0, z_lr, z_hr, copy


class ConditionGate(nn.Module):
    """A stage that does not beat copying its own condition has not learned SR. Accumulates, over a validation
    epoch, the one-step latent MSE to z_hr (``val/latent_mse``), the MSE of copying the condition z_lr
    (``val/latent_mse_copy``) and the PSNR-Y / SSIM-Y of decode(z_lr) (``val/psnr_copy``, ``val/ssim_copy``)."""

    def __init__(self) -> None:
        super().__init__()
        self.latent_mse, self.latent_mse_copy = MeanMetric(), MeanMetric()
        self.copy = SRMetrics("none")
        self._sums = torch.zeros(3, dtype=torch.float64)  # this rank's (model, copy, count) for the verdict

    def update(self, z_0: Tensor, z_lr: Tensor, z_hr: Tensor, copy: Tensor, hr: Tensor, valid: Tensor | None) -> None:
        model_mse = (z_0.float() - z_hr.float()).pow(2).flatten(1).mean(1)  # (B,)
        copy_mse = (z_lr.float() - z_hr.float()).pow(2).flatten(1).mean(1)
        weight = torch.ones_like(model_mse) if valid is None else valid.to(model_mse.device, torch.float32)
        self.latent_mse.update(model_mse, weight)
        self.latent_mse_copy.update(copy_mse, weight)
        self.copy.update(copy, hr, valid)
        self._sums += torch.stack([(model_mse * weight).sum(), (copy_mse * weight).sum(), weight.sum()]).double().cpu()

    def metrics(self, prefix: str) -> dict[str, MeanMetric]:
        return {
            f"{prefix}/latent_mse": self.latent_mse, f"{prefix}/latent_mse_copy": self.latent_mse_copy,
            **self.copy.metrics(prefix, "_copy"),
        }

    def verdict(self) -> tuple[float, float] | None:
        """(model MSE, copy MSE) of the epoch on this rank, and reset; None when nothing was seen."""
        model, copy, count = self._sums.tolist()
        self._sums.zero_()
        return None if count == 0 else (model / count, copy / count)


class SRValidation(nn.Module):
    """Evaluates a sampler at the primary step count (metrics ``val/psnr`` ...) and at extra step counts
    (``val/psnr_{n}steps`` ...). The noise of sample i is seeded from its dataset index, so the numbers do not
    depend on batch size or world size."""

    def __init__(
        self,
        num_steps: int = 1,
        extra_steps: list[int] | None = None,
        lpips_net: LPIPSChoice = "alex",
        random_lpips_backbone: bool = False,
        log_images: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        steps = [num_steps, *[n for n in (extra_steps or []) if n != num_steps]]
        if any(n < 1 for n in steps):
            raise ValueError(f"model.val_num_steps / model.val_extra_steps must be >= 1, got {steps}")
        self.steps, self.log_images, self.seed = steps, log_images, seed
        self.per_steps = nn.ModuleDict({str(n): SRMetrics(lpips_net, 0, random_lpips_backbone) for n in steps})
        self.gate = ConditionGate()

    def prepare(self) -> None:
        for metrics in self.per_steps.values():
            metrics.prepare()

    def step(
        self, module, sample: SampleFn, batch: SRBatch, batch_idx: int, scale: int, prefix: str, gate: GateFn | None = None
    ) -> None:
        """One validation/test batch: SR at every step count, metric updates, logging, the image grid, and the
        condition-copy gate when ``gate`` is given."""
        hr, lr = batch["hr"], batch[lr_key(scale)]
        seeds = [validation_seed(self.seed, int(i)) for i in batch["index"]]
        if gate is not None:
            self.gate.update(*gate(hr, lr, seeds), hr, batch.get("valid"))
            module.log_dict(self.gate.metrics(prefix), batch_size=hr.shape[0], sync_dist=True)
        for position, num_steps in enumerate(self.steps):
            sr = sample(lr, seeds, num_steps)
            metrics = self.per_steps[str(num_steps)]
            metrics.update(sr, hr, batch.get("valid"))
            suffix = "" if position == 0 else f"_{num_steps}steps"
            module.log_dict(metrics.metrics(prefix, suffix), batch_size=hr.shape[0], sync_dist=True)
            if position == 0 and batch_idx == 0 and module.global_rank == 0:
                lr_up = upsample_to(lr, tuple(hr.shape[-2:]))
                log_image_grid(module.logger, f"{prefix}/lr_sr_hr", lr_up, sr, hr, module.global_step, self.log_images)


    def report(self, module, prefix: str = "val") -> None:
        """End of a validation epoch: say in the log whether the stage beats copying its condition."""
        verdict = self.gate.verdict()
        if verdict is None or module.global_rank != 0:
            return
        model, copy = verdict
        where = f"{prefix} ({type(module).__name__}, step {module.global_step})"
        if model < copy:
            log.info(f"{where}: one-step latent MSE {model:.5f} beats copying the condition z_lr ({copy:.5f}) {copy / model:.2f}x")
        else:
            log.warning(
                f"{where}: one-step latent MSE {model:.5f} does NOT beat copying the condition z_lr ({copy:.5f}, "
                f"{model / copy:.1f}x lower): this stage has not learned super-resolution yet"
            )


def log_image_grid(logger: object, tag: str, lr_up: Tensor, sr: Tensor, hr: Tensor, step: int, max_images: int = 4) -> None:
    """Log rows of (LR upsampled | SR | HR) to TensorBoard; other loggers are ignored."""
    if not isinstance(logger, TensorBoardLogger) or max_images <= 0:
        return
    count = min(max_images, sr.shape[0])
    rows = torch.stack([lr_up[:count], sr[:count], hr[:count]], dim=1).flatten(0, 1)  # (3n, 3, H, W)
    grid = torchvision.utils.make_grid(rows.float().clamp(0, 1).cpu(), nrow=3, padding=2)
    logger.experiment.add_image(tag, grid, global_step=step)
