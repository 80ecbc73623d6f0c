"""GroupNorm statistics shared by the tiles of one image, so that tiled VAE passes do not shift tone tile by tile.

A GroupNorm normalises by the mean and variance of what it sees: run on a tile, the VAE normalises each tile by
that tile's own statistics, and a dark tile next to a bright one comes out with a different tone than the same
region decoded whole. Tiled-VAE implementations fix the statistics per image instead. Here a first pass over some
tiles of the image (all, or a sample spread over it) pools what every GroupNorm saw (:func:`record_stats`); the
tiled pass then normalises every tile with those pooled statistics (:func:`shared_stats`). (A preview of the whole
image at a lower resolution is cheaper but wrong: features of a resized image have other variances; measured, it
made tiled decoding much worse.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
    var, mean = torch.var_mean(x.float().reshape(x.shape[0], groups, -1), dim=-1, unbiased=False)
    return mean, var


def _normalise(norm: nn.GroupNorm, x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm of ``x`` (N, C, ...) with given per-group statistics (B, G); N is a multiple of B (stacked tiles).

    Folded into one per-channel scale and shift, so the activation is read once (``addcmul``)."""
    per_group = norm.num_channels // norm.num_groups
    scale = torch.rsqrt(var + norm.eps).repeat_interleave(per_group, 1)  # (B, C)
    shift = -mean.repeat_interleave(per_group, 1) * scale
    if norm.affine:
        scale, shift = scale * norm.weight.float(), shift * norm.weight.float() + norm.bias.float()
    repeats = x.shape[0] // mean.shape[0]  # tiles are stacked as [tile 0's B images, tile 1's, ...]
    view = (x.shape[0], norm.num_channels) + (1,) * (x.ndim - 2)
    scale, shift = scale.repeat(repeats, 1).view(view).to(x.dtype), shift.repeat(repeats, 1).view(view).to(x.dtype)
    return torch.addcmul(shift, x, scale)


def record_stats(fn: Callable[[Tensor], Tensor], module: nn.Module, inputs: Iterable[Tensor]) -> GroupStats:
    """Run ``fn`` (which calls ``module``) on each of ``inputs`` (tiles of one batch of images, (B, C, h, w) each)
    and return, per GroupNorm call, the statistics pooled over all of them: the mean and variance each GroupNorm
    would see on the union of the tiles. The runs themselves normalise each tile by its own statistics."""
    sums: list[list[Tensor]] = []  # per GroupNorm call: [sum, sum of squares, count], (B, G) each
    position = [0]

    def make_forward(norm: nn.GroupNorm) -> Callable[[Tensor], Tensor]:
        def forward(x: Tensor) -> Tensor:
            flat = x.double().reshape(x.shape[0], norm.num_groups, -1)
            moments = [flat.sum(-1), flat.square().sum(-1), torch.full_like(flat[..., 0], flat.shape[-1])]
            index = position[0]
            position[0] += 1
            if index == len(sums):
                sums.append(moments)
            else:
                sums[index] = [a + b for a, b in zip(sums[index], moments)]
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)

        return forward

    with _patched(module, make_forward):
        for tile in inputs:
            position[0] = 0
            fn(tile)
    stats = []
    for total, squares, count in sums:
        mean = total / count
        stats.append((mean.float(), (squares / count - mean.square()).clamp_min(0).float()))
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


def sample_tiles(starts: tuple[list[int], list[int]], limit: int) -> list[tuple[int, int]]:
    """At most ``limit`` (top, left) tile offsets spread evenly over the grid ``starts`` (tops, lefts)."""
    grid = [(top, left) for top in starts[0] for left in starts[1]]
    if len(grid) <= limit:
        return grid
    step = len(grid) / limit
    return [grid[int(i * step)] for i in range(limit)]
