"""PSNR / SSIM parity with the field's references on real photos (scikit-image's astronaut, coffee, chelsea) under a
known degradation (bicubic x4 down and up, and Gaussian noise).

The formula tests always run: they write out BasicSR's and pyiqa's definitions in numpy/scipy. The package tests
compare against BasicSR 1.4.2 and pyiqa themselves when they are installed (skipped otherwise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d
from skimage import data as skdata

from yonos.degradations import bicubic_downsample, quantize_8bit, upsample_to
from yonos.metrics import psnr_y, ssim_y

PSNR_TOLERANCE_DB = 0.01
SSIM_TOLERANCE = 0.001
PHOTOS = ("astronaut", "coffee", "chelsea")


def _photo(name: str, size: int = 160) -> torch.Tensor:
    """A centre crop of a scikit-image photo, (1, 3, size, size) in [0, 1] on 8-bit levels."""
    array = getattr(skdata, name)()
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    crop = array[top : top + size, left : left + size].copy()
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0


def _degraded(hr: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bicubic_x4":
        return quantize_8bit(upsample_to(bicubic_downsample(hr, 4), tuple(hr.shape[-2:])))
    noise = 0.04 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))
    return quantize_8bit(hr + noise)


def _cases():
    return [(name, kind, crop) for name in PHOTOS for kind in ("bicubic_x4", "noise") for crop in (0, 4)]


def _uint8_hwc(image: torch.Tensor) -> np.ndarray:
    return np.round(image[0].permute(1, 2, 0).numpy() * 255.0).astype(np.float64)


# The published definitions, written out.


def _reference_y(rgb255: np.ndarray, round_y: bool = False) -> np.ndarray:
    """MATLAB rgb2ycbcr luma (BasicSR ``to_y_channel``; pyiqa ``rgb2ycbcr`` then x255, rounded when ``round_y``)."""
    y = 16.0 + rgb255 @ np.array([65.481, 128.553, 24.966]) / 255.0
    return np.round(y) if round_y else y


def _reference_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10.0 * np.log10(255.0**2 / np.mean((a - b) ** 2)))


def _reference_ssim(a: np.ndarray, b: np.ndarray, clip_contrast: bool = False) -> float:
    """Wang et al. 2004 with an 11x11 Gaussian (sigma 1.5), valid region, C1 = (0.01 L)^2, C2 = (0.03 L)^2, L = 255."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    blur = lambda x: convolve2d(x, window, mode="valid")  # noqa: E731 - symmetric window: convolution = correlation
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    if clip_contrast:
        cs = np.maximum(cs, 0.0)
    return float(np.mean((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs))


def _crop(x: np.ndarray, border: int) -> np.ndarray:
    return x[border:-border, border:-border] if border else x


@pytest.mark.parametrize("name,kind,crop", _cases())
def test_psnr_and_ssim_match_the_basicsr_formulas(name: str, kind: str, crop: int):
    hr = _photo(name)
    sr = _degraded(hr, kind)
    y_sr, y_hr = _crop(_reference_y(_uint8_hwc(sr)), crop), _crop(_reference_y(_uint8_hwc(hr)), crop)
    assert float(psnr_y(sr, hr, crop)) == pytest.approx(_reference_psnr(y_sr, y_hr), abs=PSNR_TOLERANCE_DB)
    assert float(ssim_y(sr, hr, crop)) == pytest.approx(_reference_ssim(y_sr, y_hr), abs=SSIM_TOLERANCE)
    # Much tighter in practice: the same maths in float64.
    assert float(ssim_y(sr, hr, crop)) == pytest.approx(_reference_ssim(y_sr, y_hr), abs=1e-5)


@pytest.mark.parametrize("name,kind,crop", _cases())
def test_ssim_pyiqa_convention_matches_its_formula(name: str, kind: str, crop: int):
    hr = _photo(name)
    sr = _degraded(hr, kind)
    y_sr = _crop(_reference_y(_uint8_hwc(sr), round_y=True), crop)
    y_hr = _crop(_reference_y(_uint8_hwc(hr), round_y=True), crop)
    expected = _reference_ssim(y_sr, y_hr, clip_contrast=True)
    assert float(ssim_y(sr, hr, crop, convention="pyiqa")) == pytest.approx(expected, abs=1e-5)


def test_ssim_is_symmetric_and_one_on_identity():
    hr = _photo("coffee")
    sr = _degraded(hr, "noise")
    assert float(ssim_y(hr, hr)) == pytest.approx(1.0, abs=1e-12)
    assert float(ssim_y(sr, hr)) == pytest.approx(float(ssim_y(hr, sr)), abs=1e-9)


# The packages themselves, when installed.


@pytest.fixture(scope="module")
def basicsr_metrics(import_basicsr):
    """BasicSR 1.4.2's metric functions (skipped when BasicSR is not installed)."""
    return import_basicsr("basicsr.metrics.psnr_ssim")


@pytest.mark.parametrize("name,kind,crop", _cases()[::3])
def test_matches_basicsr_package(basicsr_metrics, name: str, kind: str, crop: int):
    hr = _photo(name)
    sr = _degraded(hr, kind)
    bgr_sr, bgr_hr = _uint8_hwc(sr)[..., ::-1], _uint8_hwc(hr)[..., ::-1]  # BasicSR reads images as BGR
    expected_psnr = basicsr_metrics.calculate_psnr(bgr_sr, bgr_hr, crop, input_order="HWC", test_y_channel=True)
    expected_ssim = basicsr_metrics.calculate_ssim(bgr_sr, bgr_hr, crop, input_order="HWC", test_y_channel=True)
    assert float(psnr_y(sr, hr, crop)) == pytest.approx(expected_psnr, abs=PSNR_TOLERANCE_DB)
    assert float(ssim_y(sr, hr, crop)) == pytest.approx(expected_ssim, abs=SSIM_TOLERANCE)


@pytest.mark.parametrize("name,kind,crop", _cases()[::3])
def test_matches_pyiqa_package(pyiqa, name: str, kind: str, crop: int):
    hr = _photo(name, size=96)
    sr = _degraded(hr, kind)
    options = dict(test_y_channel=True, color_space="ycbcr", crop_border=crop, device="cpu")
    expected_psnr = float(pyiqa.create_metric("psnr", **options)(sr, hr))
    expected_ssim = float(pyiqa.create_metric("ssim", **options)(sr, hr))
    assert float(psnr_y(sr, hr, crop)) == pytest.approx(expected_psnr, abs=PSNR_TOLERANCE_DB)
    assert float(ssim_y(sr, hr, crop, convention="pyiqa")) == pytest.approx(expected_ssim, abs=SSIM_TOLERANCE)


def test_clean_fid_resize_matches_the_clean_fid_package(import_reference):
    """The FID input of ``--fid-mode clean`` against clean-fid's own resizer (the one pyiqa's default mode uses)."""
    from yonos.metrics import clean_fid_resize

    resizer = import_reference("cleanfid.resize").make_resizer("PIL", False, "bicubic", (299, 299))
    image = _photo("astronaut", size=96)  # (1, 3, 96, 96) on 8-bit levels
    array = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = resizer(array)  # (299, 299, 3) float32
    ours = clean_fid_resize(image)[0].permute(1, 2, 0).numpy().astype(np.float64)
    assert np.abs(ours - expected).max() <= 0.5 + 1e-4
