"""Large images: the pipeline streams by tile rows (condition, VAE passes, colour fix, output), tile batching, the
shared GroupNorm statistics of tiled VAE passes, and the one padding rule of validation and the pipeline."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import yonos.sampling
from yonos.colorfix import COLOR_FIX_MODES, ColorFixRows, apply_color_fix
from yonos.diffusion import make_scheduler
from yonos.models import LatentCodec, SRDenoiser
from yonos.pipeline import YonosSRPipeline
from yonos.sampling import sample_with_seeds
from yonos.tile_norm import record_stats, sample_tiles, shared_stats
from yonos.tiling import tile_starts, tiled_map, tiled_rows


@pytest.fixture(scope="module")
def pipe() -> YonosSRPipeline:
    torch.manual_seed(0)
    pipe = YonosSRPipeline.from_models(
        SRDenoiser.from_preset("tiny").eval(), LatentCodec.from_preset("tiny").eval(), make_scheduler(None), 2
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lr_batch(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / max(F.mse_loss(a, b).item(), 1e-20))


def test_tiled_rows_reads_and_yields_bands_in_order_and_equals_tiled_map():
    x = torch.rand(2, 3, 100, 76, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(1)) / 9
    conv = lambda t: torch.sigmoid(F.conv2d(t, weight, padding=1))  # noqa: E731
    reads = []

    def read(top: int, bottom: int) -> torch.Tensor:
        reads.append((top, bottom))
        return x[..., top:bottom, :]

    bands = list(tiled_rows(conv, read, (100, 76), 32, 8, tiles_per_call=3))

    assert all(bottom - top == 32 for top, bottom in reads)  # never more than one band of tile rows
    tops = [top for top, _ in bands]
    assert tops == sorted(tops) and tops[0] == 0 and sum(rows.shape[-2] for _, rows in bands) == 100
    torch.testing.assert_close(torch.cat([rows for _, rows in bands], -2), tiled_map(conv, x, 32, 8), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", COLOR_FIX_MODES)
def test_colour_fix_by_bands_equals_the_whole_image(mode: str):
    g = torch.Generator().manual_seed(0)
    sr, reference = torch.rand(2, 3, 150, 40, generator=g), torch.rand(2, 3, 150, 40, generator=g)
    fixer = ColorFixRows(mode, lambda a, b: reference[..., a:b, :], 150, columns=16)  # chunks of columns too
    out, top = torch.full_like(sr, -1.0), 0
    for rows in (37, 64, 20, 29):
        for band_top, band in fixer.push(top, sr[..., top : top + rows, :]):
            out[..., band_top : band_top + band.shape[-2], :] = band
        top += rows
    for band_top, band in fixer.finish():
        out[..., band_top : band_top + band.shape[-2], :] = band

    tolerance = 2e-5 if mode == "adain" else 1e-6  # adain holds the uncorrected image in 16 bits
    torch.testing.assert_close(out, apply_color_fix(sr, reference, mode), rtol=0, atol=tolerance)


def test_stream_gives_the_call_pixels_band_by_band(pipe: YonosSRPipeline):
    lr = lr_batch(40, 24)
    options = dict(tile_size=32, tile_overlap=16, color_fix="wavelet")
    expected = pipe(lr, generator=torch.Generator().manual_seed(0), output_type="pt", **options).images
    bands = []

    metadata = pipe.stream(lr, lambda top, rows: bands.append((top, rows.clone())),
                           generator=torch.Generator().manual_seed(0), **options)

    assert len(bands) > 2 and [top for top, _ in bands] == sorted(top for top, _ in bands)
    assert max(rows.shape[-2] for _, rows in bands) < 80  # never the whole 80-row image at once
    torch.testing.assert_close(torch.cat([rows for _, rows in bands], -2), expected, rtol=0, atol=1e-6)
    assert metadata["yonos:color_fix"] == "wavelet" and metadata["yonos:tile_size"] == "32"


def test_tiled_call_never_builds_the_full_size_condition(pipe: YonosSRPipeline, monkeypatch: pytest.MonkeyPatch):
    real, sizes = yonos.sampling.upsample_to, []

    def recording(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        sizes.append(tuple(size))
        return real(lr, size)

    monkeypatch.setattr(yonos.sampling, "upsample_to", recording)
    pipe(lr_batch(64, 40), generator=torch.Generator().manual_seed(0), tile_size=32, tile_overlap=16,
         color_fix="wavelet", output_type="pt")

    assert sizes and max(height for height, _ in sizes) <= 32 + 2 * 31 + 2 * 5 * 2  # a band and its margins
    assert max(height for height, _ in sizes) < 128


def test_tiles_per_call_batches_tiles_with_the_same_pixels(pipe: YonosSRPipeline, monkeypatch: pytest.MonkeyPatch):
    lr = lr_batch(40, 40)
    options = dict(generator=torch.Generator().manual_seed(0), tile_size=32, tile_overlap=16, output_type="pt")
    calls = []
    real_forward = type(pipe.unet).forward
    monkeypatch.setattr(type(pipe.unet), "forward", lambda self, x, *a, **k: calls.append(len(x)) or real_forward(self, x, *a, **k))

    one = pipe(lr, **options).images
    single_calls = len(calls)
    calls.clear()
    options["generator"] = torch.Generator().manual_seed(0)
    four = pipe(lr, tiles_per_call=4, **options).images

    assert max(calls) == 4 and len(calls) < single_calls
    torch.testing.assert_close(four, one, rtol=0, atol=1e-5)


def test_shared_group_norm_statistics_remove_the_tone_shift_between_tiles():
    """A local network with a GroupNorm (what makes SD's VAE non-local in tone) on an image whose brightness varies
    across tiles: per-tile statistics shift each tile's tone; statistics pooled over the tiles do not."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 1), nn.GroupNorm(8, 32), nn.SiLU(), nn.Conv2d(32, 3, 1)).eval()
    ramp = torch.linspace(0, 1, 96)
    x = (0.8 * ramp[None, :] * ramp[:, None] + 0.05 * torch.rand(96, 96, generator=torch.Generator().manual_seed(1)))
    x = x.expand(1, 3, 96, 96).contiguous()

    with torch.no_grad():
        whole = net(x)
        per_tile = tiled_map(net, x, 32, 8)
        starts = (tile_starts(96, 32, 8), tile_starts(96, 32, 8))
        tiles = [x[..., t : t + 32, left : left + 32] for t, left in sample_tiles(starts, 100)]
        stats = record_stats(net, net, tiles)
        with shared_stats(net, stats):
            shared = tiled_map(net, x, 32, 8)

    assert psnr(per_tile, whole) < 25  # measured 16 dB
    assert psnr(shared, whole) > 35  # measured 38 dB: pooled over overlapping tiles, close to the whole image's
    assert len(sample_tiles(starts, 4)) == 4


def test_validation_and_pipeline_pad_by_one_rule(pipe: YonosSRPipeline):
    """35 x 21 at x2 is 70 x 42: padding to the VAE factor (72) and to the pipeline's multiple (80) differ."""
    lr = torch.rand(1, 3, 35, 21, generator=torch.Generator().manual_seed(3))

    out = pipe(lr, generator=[torch.Generator().manual_seed(5)], tile_size=None, output_type="pt").images

    expected = sample_with_seeds(pipe.denoiser, pipe.codec, pipe.scheduler, lr, 2, seeds=[5])
    assert out.shape == (1, 3, 70, 42) and pipe.size_multiple == 16
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
