"""The batch contract between the datasets, the DataModule and the stage modules: what a batch holds
(:class:`SRBatch`), the key of each scale's LR image, and how an HR crop is cut from an image (pure tensor code)."""

from __future__ import annotations

from typing import Literal, TypedDict

import numpy as np
import torch
from torch import Tensor

LATENT_FACTOR = 8  # the SD VAE's downsampling factor


class SRBatch(TypedDict, total=False):
    """What a batch holds. Training and validation batches leave the loader with ``hr``, ``index``, ``name``;
    ``SRDataModule.on_after_batch_transfer`` adds one ``lr_x{s}`` per configured scale on the batch's device
    (paired folders bring their own). Prediction batches hold ``lr`` and ``name`` only."""

    hr: Tensor  # (B, 3, H, W) float in [0, 1]
    index: Tensor  # (B,) long: position in the dataset; seeds the validation degradation of the sample
    name: list[str]  # file stems, for writing outputs
    valid: Tensor  # (B,) bool, distributed evaluation only: False on the duplicates that pad the last round
    lr_x2: Tensor  # (B, 3, H/2, W/2) in [0, 1] on 8-bit levels
    lr_x4: Tensor  # (B, 3, H/4, W/4)
    lr_x8: Tensor  # (B, 3, H/8, W/8)
    lr: Tensor  # (1, 3, h, w): prediction input of unknown scale


def lr_key(scale: int) -> str:
    """The batch key of the LR image at ``scale``."""
    return f"lr_x{scale}"


def pad_reflect_to(image: Tensor, size: int, mode: Literal["reflect", "symmetric"] = "reflect", unit: int = 1) -> Tensor:
    """Pad (C, H, W) by reflection so that both sides are at least ``size`` (repeats the reflection if needed).

    ``unit`` > 1 pads by multiples of ``unit`` pixels per side (the HR of a pair whose LR was padded by
    pad / unit, with ``symmetric`` so that HR and LR stay aligned).
    """
    height, width = image.shape[-2:]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h == 0 and pad_w == 0:
        return image
    top, left = (pad_h // unit // 2) * unit, (pad_w // unit // 2) * unit
    array = np.pad(image.numpy(), ((0, 0), (top, pad_h - top), (left, pad_w - left)), mode)
    return torch.from_numpy(array)


def crop_hr(image: Tensor, hr_size: int, generator: torch.Generator | None) -> Tensor:
    """An ``hr_size`` crop of (3, H, W), padded by reflection when smaller: position and horizontal flip drawn from
    ``generator``, or the centre crop without one."""
    image = pad_reflect_to(image, hr_size)  # (3, H, W)
    height, width = image.shape[-2:]
    if generator is not None:
        top = int(torch.randint(0, height - hr_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - hr_size + 1, (1,), generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
    else:
        top, left, flip = (height - hr_size) // 2, (width - hr_size) // 2, False
    crop = image[:, top : top + hr_size, left : left + hr_size]
    return (crop.flip(-1) if flip else crop).contiguous()
