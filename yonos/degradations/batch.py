"""Degrading a whole batch into LR images at several scales: the entry points the data module and the evaluator
call (bicubic, MATLAB bicubic, or Real-ESRGAN with one generator per batch or per sample). Pure torch, no Lightning."""

from __future__ import annotations

import torch
from torch import Tensor

from yonos.degradations.bicubic import bicubic_downsample
from yonos.degradations.config import RealESRGANConfig
from yonos.degradations.matlab import bicubic_matlab_downsample
from yonos.degradations.realesrgan import apply_realesrgan, sample_realesrgan_params


def degrade_bicubic(hr: Tensor, scales: list[int], matlab: bool = False) -> dict[int, Tensor]:
    """Bicubic LR images of a batch for each scale (deterministic): torch's antialiased bicubic, or with ``matlab``
    MATLAB ``imresize`` (the classic tables' LR)."""
    downsample = bicubic_matlab_downsample if matlab else bicubic_downsample
    return {scale: downsample(hr, scale) for scale in scales}


def degrade_realesrgan(
    hr: Tensor, scales: list[int], config: RealESRGANConfig, generators: list[torch.Generator], shared: bool
) -> dict[int, Tensor]:
    """Real-ESRGAN LR images for each scale.

    One generator draws for the whole batch (training). With one generator per sample (evaluation) each sample
    is drawn AND degraded on its own: JPEG rounding turns the last-bit differences of batched kernels into
    whole quantisation steps, so only a per-sample pass makes its LR independent of the batch it is in.
    ``shared``: all scales come from one draw and differ only in the final resize; otherwise each scale draws anew.
    """
    if len(generators) == 1:
        return _degrade_realesrgan_batch(hr, scales, config, generators[0], shared)
    if len(generators) != hr.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {hr.shape[0]}")
    samples = [_degrade_realesrgan_batch(hr[i : i + 1], scales, config, g, shared) for i, g in enumerate(generators)]
    return {scale: torch.cat([sample[scale] for sample in samples]) for scale in scales}


def _degrade_realesrgan_batch(
    hr: Tensor, scales: list[int], config: RealESRGANConfig, generator: torch.Generator, shared: bool
) -> dict[int, Tensor]:
    if shared:
        return apply_realesrgan(hr, sample_realesrgan_params(config, hr.shape[0], generator, hr.device), scales)
    return {
        scale: apply_realesrgan(hr, sample_realesrgan_params(config, hr.shape[0], generator, hr.device), [scale])[scale]
        for scale in scales
    }
