"""Overlapping tiles stitched with Gaussian weights: run a spatial function tile by tile without visible seams.

The pipeline uses it for the VAE encode, the UNet pass and the VAE decode. Pure torch; nothing about diffusion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from fractions import Fraction

import torch
from torch import Tensor

MIN_WEIGHT = 1e-4
"""Floor of the 1-D weights: keeps the 2-D product far from fp32 underflow at tile corners with a tiny overlap."""


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Offsets of tiles of size ``tile`` that cover ``[0, length)``, neighbours sharing at least ``overlap``.

    Offsets are multiples of ``align`` (the last one is ``length - tile``, itself a multiple when ``length`` and
    ``tile`` are), so a tile's position maps to whole pixels in a coarser or finer output grid.
    """
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile size), got overlap {overlap} for tile {tile}")
    stride = max(align, (tile - overlap) // align * align)
    return list(range(0, length - tile, stride)) + [length - tile]


def tile_grid(size: tuple[int, int], tile: int, overlap: int, align: int) -> tuple[list[int], list[int]]:
    """The tile offsets (tops, lefts) tiled_rows uses for ``size``."""
    return tuple(tile_starts(side, min(tile, side), overlap, align) for side in size)


def gaussian_weights(size: int, overlap: int, device: torch.device) -> Tensor:
    """1-D blending weights (size,) of a tile: a Gaussian centred on the tile, floored at ``MIN_WEIGHT``.

    Where two tiles at stride s = size - overlap overlap, the ratio of their Gaussians is a logistic across the shared
    band. sigma^2 = overlap * s / 8 makes the neighbour's share e^-4 / (1 + e^-4) = 1.8 % at the band's edges, so
    the hand-over uses the whole band and the jump where a tile ends is below 2 % of the tiles' disagreement. The
    tile borders, where convolutions see padding, get the least weight.
    """
    if overlap <= 0 or size <= overlap:
        return torch.ones(size, device=device)
    sigma = math.sqrt(overlap * (size - overlap) / 8.0)
    offsets = torch.arange(size, device=device, dtype=torch.float32) - (size - 1) / 2.0
    return torch.exp(-0.5 * (offsets / sigma) ** 2).clamp_min(MIN_WEIGHT)


def tiled_map(
    fn: Callable[[Tensor], Tensor], x: Tensor, tile: int, overlap: int, align: int = 1, tiles_per_call: int = 1
) -> Tensor:
    """``fn(x)`` computed on overlapping ``tile`` x ``tile`` crops of ``x`` and blended with Gaussian weights.

    ``fn`` may change the channel count and the spatial size by a fixed ratio (1/8 for a VAE encoder, 8 for a
    decoder); the ratio is read from the first tile's output. When ``x`` fits in one tile, ``fn(x)`` is returned as
    is (the fast path, bit-identical to not tiling). Blended outputs come back in float32. :func:`tiled_rows` is the
    same computation band by band, for inputs and outputs too large to hold.

    Args:
        x: (B, C, H, W) input.
        tile: tile side in input pixels (tiles are clipped to H and W when the image is smaller).
        overlap: pixels shared by neighbouring tiles, in input pixels.
        align: tile offsets are multiples of this (the input pixels per output pixel, or a network's multiple).
        tiles_per_call: tiles stacked into one call of ``fn``.
    """
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return fn(x)
    read = lambda top, bottom: x[..., top:bottom, :]  # noqa: E731
    bands = tiled_rows(fn, read, (height, width), tile, overlap, align, tiles_per_call)
    return torch.cat([rows for _, rows in bands], dim=-2)


def tiled_rows(
    fn: Callable[[Tensor], Tensor],
    read_rows: Callable[[int, int], Tensor],
    size: tuple[int, int],
    tile: int,
    overlap: int,
    align: int = 1,
    tiles_per_call: int = 1,
) -> Iterator[tuple[int, Tensor]]:
    """``fn`` on overlapping tiles of an input read band by band; yields the blended output as (top, rows) bands.

    The input (B, C, H, W) of ``size`` (H, W) is never held whole: ``read_rows(top, bottom)`` returns its rows
    [top, bottom) (all columns), one band of tile rows at a time, and each output band is yielded as soon as no later
    tile touches it (bands come in order, cover the output once, and are float32). Peak memory is one band of tiles
    plus one band of output, whatever H. ``tiles_per_call`` tiles of a band go through ``fn`` in one batch (stacked
    along dim 0; ``fn`` must treat samples independently).
    """
    height, width = size
    tile_h, tile_w = min(tile, height), min(tile, width)
    tops, lefts = tile_starts(height, tile_h, overlap, align), tile_starts(width, tile_w, overlap, align)
    acc, ratio = None, Fraction(1)
    for index, top in enumerate(tops):
        band = read_rows(top, top + tile_h)
        pieces = _map_batched(fn, [band[..., left : left + tile_w] for left in lefts], max(1, tiles_per_call))
        if acc is None:
            ratio = Fraction(pieces[0].shape[-2], tile_h)
            if Fraction(pieces[0].shape[-1], tile_w) != ratio:
                raise ValueError(f"tile function scaled height and width differently: {tuple(pieces[0].shape)}")
            out_h, out_w, piece_h = _scaled(height, ratio), _scaled(width, ratio), pieces[0].shape[-2]
            row_weight = gaussian_weights(piece_h, _scaled(overlap, ratio), pieces[0].device)
            col_weight = gaussian_weights(pieces[0].shape[-1], _scaled(overlap, ratio), pieces[0].device)
            tile_weight = torch.outer(row_weight, col_weight)  # (h, w), separable
            row_sum = _summed(row_weight, [_scaled(t, ratio) for t in tops], out_h)
            col_sum = _summed(col_weight, [_scaled(left, ratio) for left in lefts], out_w)
            acc = pieces[0].new_zeros(*pieces[0].shape[:-2], piece_h, out_w)  # rows [top_out, top_out + piece_h)
        for piece, left in zip(pieces, lefts):
            left_out = _scaled(left, ratio)
            acc[..., left_out : left_out + piece.shape[-1]] += piece * tile_weight
        del pieces, band
        top_out = _scaled(top, ratio)
        final = (_scaled(tops[index + 1], ratio) if index + 1 < len(tops) else out_h) - top_out
        # The tiles form a grid of one size, so the weights' sum is separable: no image-sized weight buffer.
        yield top_out, acc[..., :final, :].div(row_sum[top_out : top_out + final, None]).div_(col_sum)
        kept = acc[..., final:, :]
        acc = acc.new_zeros(acc.shape)
        acc[..., : kept.shape[-2], :] = kept


def _map_batched(fn: Callable[[Tensor], Tensor], crops: list[Tensor], per_call: int) -> list[Tensor]:
    """``fn`` on each crop, ``per_call`` crops stacked into one call; outputs split back, float32."""
    outputs: list[Tensor] = []
    for start in range(0, len(crops), per_call):
        chunk = crops[start : start + per_call]
        stacked = fn(torch.cat(chunk) if len(chunk) > 1 else chunk[0]).float()
        outputs.extend(stacked.split(chunk[0].shape[0]))
    return outputs


def _summed(weight: Tensor, starts: list[int], length: int) -> Tensor:
    """Sum (length,) of the 1-D ``weight`` placed at each of ``starts``."""
    total = weight.new_zeros(length)
    for start in starts:
        total[start : start + len(weight)] += weight
    return total


def _scaled(value: int, ratio: Fraction) -> int:
    scaled = value * ratio
    if scaled.denominator != 1:
        raise ValueError(f"tile offset {value} does not map to a whole output pixel at ratio {ratio}; raise `align`")
    return int(scaled)
