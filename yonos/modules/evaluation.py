"""Validation pieces shared by the stage modules by composition: metric accumulation and the image grid."""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torchmetrics import MeanMetric

from yonos.metrics import build_lpips, lpips_distance, psnr_y, ssim_y

LPIPSChoice = Literal["alex", "vgg", "none"]


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
    def update(self, sr: Tensor, hr: Tensor) -> None:
        sr, hr = sr.float(), hr.float()
        self.psnr.update(psnr_y(sr, hr, self.crop_border))
        self.ssim.update(ssim_y(sr, hr, self.crop_border))
        if self.lpips_net != "none":
            self.prepare()
            model = self._lpips_model[0].to(sr.device)
            self.lpips.update(lpips_distance(model, sr, hr))

    def metrics(self, prefix: str) -> dict[str, MeanMetric]:
        """The metric objects to pass to ``LightningModule.log_dict`` (computed and reset at epoch end)."""
        out = {f"{prefix}/psnr": self.psnr, f"{prefix}/ssim": self.ssim}
        if self.lpips_net != "none":
            out[f"{prefix}/{self.lpips_name}"] = self.lpips
        return out


def log_image_grid(logger: object, tag: str, lr_up: Tensor, sr: Tensor, hr: Tensor, step: int, max_images: int = 4) -> None:
    """Log rows of (LR upsampled | SR | HR) to TensorBoard; other loggers are ignored."""
    if not isinstance(logger, TensorBoardLogger) or max_images <= 0:
        return
    count = min(max_images, sr.shape[0])
    rows = torch.stack([lr_up[:count], sr[:count], hr[:count]], dim=1).flatten(0, 1)  # (3n, 3, H, W)
    grid = torchvision.utils.make_grid(rows.float().clamp(0, 1).cpu(), nrow=3, padding=2)
    logger.experiment.add_image(tag, grid, global_step=step)
