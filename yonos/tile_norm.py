"""GroupNorm statistics shared by the tiles of one image, so that tiled VAE passes do not shift tone tile by tile.

A GroupNorm normalises by the mean and variance of what it sees: run on a tile, the VAE normalises each tile by
that tile's own statistics, and a dark tile next to a bright one comes out with a different tone than the same
region decoded whole. Tiled-VAE implementations fix the statistics per image instead. Here they are measured once
per image on a preview: the whole input, resized to fit one tile, run through the network in :func:`record_stats`;
every tile then normalises with those statistics under :func:`shared_stats`. The cost is one extra tile-sized pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GroupStats = list[tuple[Tensor, Tensor]]
"""Per GroupNorm call, in call order: (mean, variance), each (B, groups) float32."""


def _group_norms(module: nn.Module) -> list[nn.GroupNorm]:
    return [m for m in module.modules() if isinstance(m, nn.GroupNorm)]


@contextmanager
def _patched(module: nn.Module, make_forward: Callable[[nn.GroupNorm], Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """Every GroupNorm of ``module`` runs ``make_forward(norm)`` instead of its forward; restored on exit."""
    norms = _group_norms(module)
    for norm in norms:
        norm.forward = make_forward(norm)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def _group_moments(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    flat = x.float().reshape(x.shape[0], groups, -1)
    return flat.mean(-1), flat.var(-1, unbiased=False)


def _normalise(norm: nn.GroupNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm of ``x`` (N, C, ...) with given per-group statistics (B, G); N is a multiple of B (stacked tiles)."""
    repeats = x.shape[0] // mean.shape[0]
    mean, var = mean.repeat(repeats, 1), var.repeat(repeats, 1)  # tiles are stacked as [tile 0's B images, ...]
    shape = (x.shape[0], norm.num_groups, -1)
    out = (x.float().reshape(shape) - mean[..., None]) * torch.rsqrt(var[..., None] + norm.eps)
    out = out.reshape(x.shape).to(x.dtype)
    if norm.affine:
        view = (1, -1) + (1,) * (x.ndim - 2)
        out = out * norm.weight.view(view) + norm.bias.view(view)
    return out


def record_stats(fn: Callable[[Tensor], Tensor], module: nn.Module, preview: Tensor) -> GroupStats:
    """Run ``fn(preview)`` (``fn`` calls ``module``) and return the statistics every GroupNorm of it saw."""
    stats: GroupStats = []

    def make_forward(norm: nn.GroupNorm) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            mean, var = _group_moments(x, norm.num_groups)
            stats.append((mean, var))
            return _normalise(norm, x, mean, var)

        return forward

    with _patched(module, make_forward):
        fn(preview)
    return stats


@contextmanager
def shared_stats(module: nn.Module, stats: GroupStats) -> Iterator[None]:
    """Inside the block, the k-th GroupNorm call of each pass through ``module`` normalises with ``stats[k]``.

    A pass is one top-level call in which every recorded GroupNorm runs once, in the recorded order (a VAE encoder
    or decoder); the counter wraps around after the last one, so every tile reuses the list.
    """
    position = [0]

    def make_forward(norm: nn.GroupNorm) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            mean, var = stats[position[0] % len(stats)]
            position[0] += 1
            return _normalise(norm, x, mean.to(x.device), var.to(x.device))

        return forward

    if not stats:
        yield
        return
    with _patched(module, make_forward):
        yield


def preview_of(x: Tensor, max_side: int, multiple: int = 1) -> Tensor:
    """``x`` (B, C, H, W) resized (area average) so that its longer side is at most ``max_side``, sides rounded to
    ``multiple``: the whole image at a size one tile can hold."""
    height, width = x.shape[-2:]
    factor = max(height, width) / max_side
    if factor <= 1:
        return x
    size = [max(multiple, round(side / factor / multiple) * multiple) for side in (height, width)]
    return F.interpolate(x.float(), size=size, mode="area").to(x.dtype)
