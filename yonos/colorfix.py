"""Colour correction of an SR image against its reference (the bicubic-upsampled LR): AdaIN, wavelet, or none.

Pure torch on (B, C, H, W) images in [0, 1]. RGB is corrected; a fourth (alpha) channel passes through untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ColorFix = Literal["adain", "wavelet", "none"]
COLOR_FIX_MODES: tuple[str, ...] = get_args(ColorFix)


def adain_color_fix(sr: Tensor, reference: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-channel mean and standard deviation of ``sr`` set to those of ``reference`` (AdaIN, Huang & Belongie 2017).

    Shifts the global colour balance; local structure stays that of ``sr``. Clamped to [0, 1].
    """
    sr_mean, sr_std = _channel_stats(sr, eps)
    ref_mean, ref_std = _channel_stats(reference, eps)
    return _adain_apply(sr, sr_mean, sr_std, ref_mean, ref_std)


def _adain_apply(sr: Tensor, sr_mean: Tensor, sr_std: Tensor, ref_mean: Tensor, ref_std: Tensor) -> Tensor:
    return ((sr - sr_mean) / sr_std * ref_std + ref_mean).clamp(0.0, 1.0)


def wavelet_decompose(image: Tensor, levels: int = 5) -> tuple[Tensor, Tensor]:
    """Split ``image`` into (high, low) frequencies with an a-trous wavelet: high + low == image.

    Each level blurs with the separable [1, 2, 1] / 4 kernel dilated by 2^level (replicate padding), so ``low``
    holds structure coarser than about 2^(levels + 1) pixels.
    """
    channels = image.shape[1]
    kernel_1d = torch.tensor([0.25, 0.5, 0.25], device=image.device, dtype=image.dtype)
    kernel = torch.outer(kernel_1d, kernel_1d).expand(channels, 1, 3, 3)  # (C, 1, 3, 3) depthwise
    low = image
    for level in range(levels):
        dilation = 2**level
        padded = F.pad(low, (dilation,) * 4, mode="replicate")
        low = F.conv2d(padded, kernel, dilation=dilation, groups=channels)
    return image - low, low


def wavelet_color_fix(sr: Tensor, reference: Tensor, levels: int = 5) -> Tensor:
    """High frequencies of ``sr`` on the low frequencies of ``reference`` (StableSR's wavelet colour fix).

    Keeps the reference's colour at every coarse scale, so it corrects local colour shifts AdaIN cannot.
    Clamped to [0, 1].
    """
    sr_high, _ = wavelet_decompose(sr, levels)
    _, ref_low = wavelet_decompose(reference, levels)
    return (sr_high + ref_low).clamp(0.0, 1.0)


def apply_color_fix(sr: Tensor, reference: Tensor, mode: ColorFix) -> Tensor:
    """Colour-correct ``sr`` (B, 3 or 4, H, W) against ``reference`` (B, >= 3, H, W) by ``mode``.

    Only the first three channels are corrected; a fourth channel of ``sr`` (alpha) is returned unchanged, so RGBA
    images cannot crash or tint the correction. Computed in float32, returned in ``sr``'s dtype.
    """
    if mode not in COLOR_FIX_MODES:
        raise ValueError(f"unknown colour fix {mode!r}; choose from {COLOR_FIX_MODES}")
    if sr.ndim != 4 or sr.shape[1] not in (3, 4) or reference.shape[1] < 3:
        raise ValueError(f"colour fix expects (B, 3|4, H, W) images, got {tuple(sr.shape)}, {tuple(reference.shape)}")
    if sr.shape[-2:] != reference.shape[-2:] or sr.shape[0] != reference.shape[0]:
        raise ValueError(f"colour fix reference {tuple(reference.shape)} does not match the image {tuple(sr.shape)}")
    if mode == "none":
        return sr
    rgb, ref = sr[:, :3].float(), reference[:, :3].float()
    fixed = adain_color_fix(rgb, ref) if mode == "adain" else wavelet_color_fix(rgb, ref)
    return torch.cat([fixed.to(sr.dtype), sr[:, 3:]], dim=1)


def _channel_stats(image: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-image, per-channel mean and standard deviation, each (B, C, 1, 1)."""
    flat = image.flatten(2)
    std = flat.var(-1, unbiased=False).sqrt().clamp_min(eps)  # the floor only matters for flat channels
    return flat.mean(-1)[..., None, None], std[..., None, None]


# Streaming: the same corrections on an image that arrives in bands of rows (see ColorFixRows).

WAVELET_LEVELS = 5
WAVELET_MARGIN = 2**WAVELET_LEVELS - 1
"""Rows of context the a-trous cascade reads on each side (1 + 2 + ... + 2^(levels-1)): with this many true rows
around a band, the band's wavelet colour fix equals the whole image's."""

Band = tuple[int, Tensor]
"""(first row, rows (B, 3, n, W)) of an image that arrives top to bottom."""


class ColorFixRows:
    """:func:`apply_color_fix` for an SR image pushed in bands of rows, top to bottom; corrected bands come back in
    order as they become final. ``reference_rows(top, bottom)`` returns the reference's rows [top, bottom).

    ``none`` passes bands through. ``wavelet`` is local: it holds ``WAVELET_MARGIN`` rows of context on each side
    of what it emits and equals the whole-image result; it works on ``columns``-wide chunks (with the same margin),
    so its temporaries do not grow with the image width. ``adain`` needs the whole image's channel statistics before
    the first corrected pixel: it keeps the uncorrected image in 16 bits (6 bytes per pixel, quantisation 1.5e-5)
    and emits everything at :meth:`finish` (an image pushed as one band is corrected at once, exactly).
    """

    def __init__(
        self, mode: ColorFix, reference_rows: Callable[[int, int], Tensor], height: int, columns: int = 1024
    ) -> None:
        if mode not in COLOR_FIX_MODES:
            raise ValueError(f"unknown colour fix {mode!r}; choose from {COLOR_FIX_MODES}")
        self.mode, self.reference_rows, self.height, self.columns = mode, reference_rows, height, columns
        self._rows: list[Tensor] = []  # wavelet: the buffered SR rows [self._top, self._top + buffered)
        self._top = self._done = 0
        self._sums: list[Tensor] = []  # adain: float64 sums of sr, sr^2, ref, ref^2, each (B, 3)
        self._count = 0
        self._quantised: list[tuple[int, np.ndarray]] = []  # adain: the uncorrected bands

    def push(self, top: int, rows: Tensor) -> list[Band]:
        if self.mode == "none":
            return [(top, rows)]
        if self.mode == "adain":
            if top == 0 and rows.shape[-2] >= self.height:  # the whole image at once: no quantisation
                return [(0, adain_color_fix(rows.float(), self.reference_rows(0, self.height).float()).to(rows.dtype))]
            self._accumulate(top, rows)
            return []
        self._rows.append(rows)
        return self._emit_wavelet(final=top + rows.shape[-2] >= self.height)

    def finish(self) -> list[Band]:
        if self.mode == "adain":
            return self._emit_adain()
        return self._emit_wavelet(final=True) if self.mode == "wavelet" else []

    def _emit_wavelet(self, final: bool) -> list[Band]:
        if not self._rows:
            return []
        window = torch.cat(self._rows, dim=-2) if len(self._rows) > 1 else self._rows[0]
        bottom = self._top + window.shape[-2]
        end = bottom if final else bottom - WAVELET_MARGIN
        if end <= self._done:
            return []
        reference = self.reference_rows(self._top, bottom)
        rows = slice(self._done - self._top, end - self._top)
        band = (self._done, _wavelet_by_columns(window, reference, rows, self.columns))
        keep_from = max(self._top, end - WAVELET_MARGIN)
        self._rows = [window[..., keep_from - self._top :, :]]
        self._top, self._done = keep_from, end
        return [band]

    def _accumulate(self, top: int, rows: Tensor) -> None:
        reference = self.reference_rows(top, top + rows.shape[-2])[:, :3].double()
        rgb = rows[:, :3].double()
        sums = [rgb.sum((2, 3)), rgb.square().sum((2, 3)), reference.sum((2, 3)), reference.square().sum((2, 3))]
        self._sums = sums if not self._sums else [a + b for a, b in zip(self._sums, sums)]
        self._count += rows.shape[-2] * rows.shape[-1]
        self._quantised.append((top, _to_uint16(rows)))  # on the host, 16 bits

    def _emit_adain(self, eps: float = 1e-5) -> list[Band]:
        if not self._quantised:
            return []
        means = [total / self._count for total in self._sums]
        sr_mean, ref_mean = means[0], means[2]
        sr_std = (means[1] - sr_mean.square()).clamp_min(0).sqrt().clamp_min(eps)
        ref_std = (means[3] - ref_mean.square()).clamp_min(0).sqrt().clamp_min(eps)
        stats = [value.float()[..., None, None] for value in (sr_mean, sr_std, ref_mean, ref_std)]
        bands, device = [], self._sums[0].device
        for top, levels in self._quantised:
            rows = torch.from_numpy(levels.astype(np.float32)).to(device).div_(65535.0)
            bands.append((top, _adain_apply(rows, *[s.to(device) for s in stats])))
        self._quantised = []
        return bands


def _wavelet_by_columns(window: Tensor, reference: Tensor, rows: slice, columns: int) -> Tensor:
    """``wavelet_color_fix(window, reference)[..., rows, :]`` computed on column chunks of ``columns`` plus
    ``WAVELET_MARGIN`` on each side (the same values: the cascade is local), so its temporaries stay small."""
    width, out = window.shape[-1], []
    for left in range(0, width, columns):
        right = min(width, left + columns)
        lo, hi = max(0, left - WAVELET_MARGIN), min(width, right + WAVELET_MARGIN)
        fixed = wavelet_color_fix(window[..., lo:hi].float(), reference[..., lo:hi].float(), WAVELET_LEVELS)
        out.append(fixed[..., rows, left - lo : right - lo].to(window.dtype))
    return torch.cat(out, dim=-1) if len(out) > 1 else out[0]


def _to_uint16(rows: Tensor) -> np.ndarray:
    return rows.detach().float().clamp(0, 1).mul(65535.0).round_().cpu().numpy().astype(np.uint16)
