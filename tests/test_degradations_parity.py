"""The Real-ESRGAN pipeline against BasicSR 1.4.2: the whole second-order degradation, the JPEG codec, the resize
semantics and the gray-noise weight.

The whole-pipeline tests run BasicSR's own functions in the order of ``RealESRGANModel.feed_data`` with the same
pinned parameters and the same noise seeds (skipped when BasicSR is not installed; ``make test-parity`` installs it).
The formula tests always run: they restate BasicSR's codec and resize in numpy / plain torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yonos.degradations.config import RealESRGANConfig
from yonos.degradations.jpeg import jpeg_basicsr
from yonos.degradations.kernels import identity_kernel
from yonos.degradations.ops import RESIZE_MODES, add_poisson_noise, resize
from yonos.degradations.realesrgan import (
    RealESRGANParams,
    apply_realesrgan,
    noise_generator_seed,
    sample_realesrgan_params,
)

pytestmark = pytest.mark.usefixtures("one_thread")
PIPELINE_PSNR_DB = 50.0


def photo(size: int = 96, seed: int = 0) -> torch.Tensor:
    """A crop of scikit-image's astronaut photo (offline), (1, 3, size, size) in [0, 1], shifted by ``seed``."""
    from skimage import data

    offset = 140 + 23 * seed
    crop = data.astronaut()[offset : offset + size, offset : offset + size]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# Pinned parameter sets: sampled draws, then the branches each set must take.


def pinned(preset: str, seed: int, **branches) -> RealESRGANParams:
    params = sample_realesrgan_params(RealESRGANConfig.from_preset(preset), 1, torch.Generator().manual_seed(seed))
    one = lambda value, dtype=None: torch.tensor([value], dtype=dtype)  # noqa: E731
    stage1 = {k[3:]: one(v) for k, v in branches.items() if k.startswith("s1_")}
    stage2 = {k[3:]: one(v) for k, v in branches.items() if k.startswith("s2_")}
    top = {k: one(v) for k, v in branches.items() if not k.startswith(("s1_", "s2_"))}
    return replace(
        params,
        stage1=replace(params.stage1, **stage1),
        stage2=replace(params.stage2, **stage2),
        no_degradation=torch.tensor([False]),
        **top,
    )


PARAM_SETS = {
    "up-bicubic_gray-gauss_sinc-first": dict(
        s1_resize_scale=1.37, s1_resize_mode=2, s1_gaussian_noise=True, s1_gray_noise=True, s1_noise_sigma=12.0,
        s2_blur=True, s2_resize_scale=0.71, s2_resize_mode=1, s2_gaussian_noise=True, s2_gray_noise=False,
        sinc_first=True, final_resize_mode=2,
    ),
    "down-bilinear_poisson_jpeg-first": dict(
        s1_resize_scale=0.53, s1_resize_mode=1, s1_gaussian_noise=False, s1_gray_noise=False, s1_poisson_scale=1.5,
        s2_blur=False, s2_resize_scale=1.13, s2_resize_mode=2, s2_gaussian_noise=False, s2_gray_noise=True,
        sinc_first=False, final_resize_mode=0,
    ),
    "down-area_gray-poisson_keep": dict(
        s1_resize_scale=0.41, s1_resize_mode=0, s1_gaussian_noise=False, s1_gray_noise=True, s1_poisson_scale=2.5,
        s2_blur=True, s2_resize_scale=1.0, s2_resize_mode=0, s2_gaussian_noise=True, s2_gray_noise=True,
        sinc_first=True, final_resize_mode=1,
    ),
    "up-bilinear_low-quality": dict(
        s1_resize_scale=1.21, s1_resize_mode=1, s1_gaussian_noise=True, s1_gray_noise=False, s1_jpeg_quality=31.5,
        s2_resize_scale=0.64, s2_resize_mode=0, s2_gaussian_noise=False, s2_gray_noise=False, s2_jpeg_quality=44.0,
        sinc_first=False, final_resize_mode=2,
    ),
}
CASES = [(name, preset, seed) for (name, seed), preset in zip(itertools.product(PARAM_SETS, (1, 2)), itertools.cycle(("realesrgan", "stablesr")))]


def reference_lr(bsr, hr: torch.Tensor, params: RealESRGANParams, scale: int) -> torch.Tensor:
    """BasicSR's ``RealESRGANModel.feed_data`` synthesis for one image with ``params``' draws (no crop, no pool)."""
    jpeger, filter2d, noise = bsr["DiffJPEG"](differentiable=False), bsr["filter2D"], bsr["degradations"]
    height, width = hr.shape[-2:]

    def stage_noise(out: torch.Tensor, stage, stream: int) -> torch.Tensor:
        torch.manual_seed(noise_generator_seed(int(params.noise_seed[0]), stream))  # our noise stream, global RNG
        gray = stage.gray_noise.float()
        if bool(stage.gaussian_noise[0]):
            out = out + noise.generate_gaussian_noise_pt(out, stage.noise_sigma, gray)
        else:
            out = out + noise.generate_poisson_noise_pt(out, stage.poisson_scale, gray)
        return out.clamp(0, 1)

    def jpeg(out: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        return jpeger(out.clamp(0, 1), quality=quality.clone())

    s1, s2 = params.stage1, params.stage2
    out = bsr["USMSharp"]()(hr) if params.use_usm else hr
    out = filter2d(out, s1.kernel)
    out = F.interpolate(out, scale_factor=float(s1.resize_scale[0]), mode=RESIZE_MODES[int(s1.resize_mode[0])])
    out = jpeg(stage_noise(out, s1, 0), s1.jpeg_quality)
    if bool(s2.blur[0]):
        out = filter2d(out, s2.kernel)
    factor, mode = float(s2.resize_scale[0]), RESIZE_MODES[int(s2.resize_mode[0])]
    out = F.interpolate(out, size=(int(height / scale * factor), int(width / scale * factor)), mode=mode)
    out = stage_noise(out, s2, scale)
    final_mode, lr_size = RESIZE_MODES[int(params.final_resize_mode[0])], (height // scale, width // scale)
    if bool(params.sinc_first[0]):
        out = jpeg(filter2d(F.interpolate(out, size=lr_size, mode=final_mode).contiguous(), params.sinc_kernel), s2.jpeg_quality)
    else:
        out = filter2d(F.interpolate(jpeg(out, s2.jpeg_quality), size=lr_size, mode=final_mode).contiguous(), params.sinc_kernel)
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0


@pytest.fixture(scope="module")
def basicsr(import_basicsr):
    utils = import_basicsr("basicsr.utils")
    return {
        "DiffJPEG": utils.DiffJPEG,
        "USMSharp": utils.USMSharp,
        "filter2D": import_basicsr("basicsr.utils.img_process_util").filter2D,
        "degradations": import_basicsr("basicsr.data.degradations"),
    }


@pytest.mark.parametrize("name, preset, seed", CASES)
@pytest.mark.parametrize("scale", [2, 4])
def test_whole_pipeline_matches_basicsr(basicsr, name: str, preset: str, seed: int, scale: int):
    hr = photo(96, seed)
    params = pinned(preset, seed, **PARAM_SETS[name])
    ours = apply_realesrgan(hr, params, (scale,))[scale]
    theirs = reference_lr(basicsr, hr, params, scale)
    assert ours.shape == theirs.shape
    assert psnr(ours, theirs) >= PIPELINE_PSNR_DB, f"{name} x{scale}: {psnr(ours, theirs):.1f} dB"


def test_the_reference_sees_a_changed_draw(basicsr):
    """The comparison above can fail: one changed parameter puts the two LR images far below the bar."""
    hr, params = photo(96, 1), pinned("realesrgan", 1, **PARAM_SETS["up-bilinear_low-quality"])
    moved = replace(params, stage1=replace(params.stage1, resize_scale=torch.tensor([1.25])))
    assert psnr(apply_realesrgan(hr, moved, (4,))[4], reference_lr(basicsr, hr, params, 4)) < 40


def test_jpeg_equals_basicsr_diffjpeg(basicsr):
    hr = torch.cat([photo(64, 0), photo(64, 1), photo(64, 2)])[..., :61, :53]  # padded to 64 x 64 inside
    quality = torch.tensor([12.0, 47.5, 88.0])
    theirs = basicsr["DiffJPEG"](differentiable=False)(hr, quality=quality.clone())
    assert (jpeg_basicsr(hr, quality) - theirs).abs().max() < 1e-3 / 255


def test_gray_poisson_noise_uses_torchvision_luma(basicsr):
    hr = photo(48)
    seed = 1234
    ours = add_poisson_noise(hr, torch.tensor([1.0]), torch.tensor([True]), [torch.Generator().manual_seed(seed)])
    torch.manual_seed(seed)
    noise = basicsr["degradations"].generate_poisson_noise_pt(hr, torch.tensor([1.0]), torch.tensor([1.0]))
    torch.testing.assert_close(ours, (hr + noise).clamp(0, 1), atol=1e-6, rtol=0)


# Formulas (always run).


def numpy_diffjpeg(image: np.ndarray, quality: float) -> np.ndarray:
    """BasicSR's DiffJPEG(differentiable=False) written out per block in float64: (3, H, W) in [0, 1], H, W % 16 == 0."""
    luma = np.array(
        [[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
         [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
         [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=np.float64,
    ).T  # BasicSR transposes the standard's table
    chroma = np.full((8, 8), 99.0)
    chroma[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]
    factor = (5000.0 / quality if quality < 50 else 200.0 - 2 * quality) / 100.0
    r, g, b = image * 255.0
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    pool = lambda c: c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean(axis=(1, 3))  # noqa: E731
    n = np.arange(8)
    alpha = np.where(n == 0, 1 / math.sqrt(2), 1.0)
    basis = np.cos((2 * n[:, None] + 1) * n[None, :] * math.pi / 16)  # [position, frequency]

    def code(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
        out = np.empty_like(plane)
        for i, j in itertools.product(range(0, plane.shape[0], 8), range(0, plane.shape[1], 8)):
            block = plane[i : i + 8, j : j + 8] - 128
            coefficients = 0.25 * np.outer(alpha, alpha) * (basis.T @ block @ basis)
            coefficients = np.round(coefficients / (table * factor)) * (table * factor)
            out[i : i + 8, j : j + 8] = 0.25 * basis @ (np.outer(alpha, alpha) * coefficients) @ basis.T + 128
        return out

    y = code(y, luma)
    cb, cr = (np.kron(code(pool(c), chroma), np.ones((2, 2))) for c in (cb, cr))
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)])
    return np.clip(rgb, 0, 255) / 255.0


@pytest.mark.parametrize("quality", [15.0, 50.0, 83.0])
def test_jpeg_matches_the_diffjpeg_formula(quality: float):
    hr = photo(32)
    expected = numpy_diffjpeg(hr[0].double().numpy(), quality)
    ours = jpeg_basicsr(hr, torch.tensor([quality]))[0].double().numpy()
    # float32 against float64: a coefficient on a rounding edge may land one step apart, nowhere else.
    assert np.mean(np.abs(ours - expected) > 1e-4) < 0.01
    assert psnr(torch.from_numpy(ours), torch.from_numpy(expected)) > 60


def test_jpeg_batches_samples_independently_and_pads_with_zeros():
    hr = torch.cat([photo(40, 0), photo(40, 1)])[..., :37, :29]
    quality = torch.tensor([30.0, 90.0])
    together = jpeg_basicsr(hr, quality)
    alone = torch.cat([jpeg_basicsr(hr[i : i + 1], quality[i : i + 1]) for i in range(2)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    padded = F.pad(hr, (0, 32 - 29, 0, 48 - 37))  # zeros: what BasicSR pads with
    torch.testing.assert_close(together, jpeg_basicsr(padded, quality)[..., :37, :29], atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_stage_one_resize_uses_scale_factor_coordinates(mode: str):
    hr = photo(50)
    scale = 0.73
    size = (math.floor(50 * scale),) * 2
    ours = resize(hr, size, mode, scale)
    torch.testing.assert_close(ours, F.interpolate(hr, scale_factor=scale, mode=mode, align_corners=False))
    by_size = F.interpolate(hr, size=size, mode=mode, align_corners=False)
    assert (ours - by_size).abs().max() > 5 / 255  # content shifts across the image with size= semantics


def test_stage_one_of_the_pipeline_resizes_by_factor():
    hr = photo(64)
    params = pinned("realesrgan", 0, s1_resize_scale=0.77, s1_resize_mode=2, s1_noise_sigma=0.0, s1_gaussian_noise=True)
    params = replace(params, stage1=replace(params.stage1, kernel=identity_kernel(1), jpeg_quality=torch.tensor([100.0])), use_usm=False)
    out = apply_realesrgan(hr, replace(params, stage2=replace(params.stage2, resize_scale=torch.tensor([1.0]))), (1,))
    assert out[1].shape == hr.shape  # stage 2 and the final resize bring it back to the x1 size
    by_factor = F.interpolate(hr, scale_factor=0.77, mode="bicubic", align_corners=False)
    by_size = F.interpolate(hr, size=by_factor.shape[-2:], mode="bicubic", align_corners=False)
    expected_size = by_factor.shape[-2:]
    assert tuple(expected_size) == (49, 49) and (by_factor - by_size).abs().max() > 5 / 255
