"""MATLAB ``imresize`` bicubic: against the algorithm written out in numpy, and the classic Set5 bicubic row.

The Set5 test reads the Set5 x4 HR images (and MATLAB's LR) from ``$YONOS_SET5_DIR`` or ``../shared/data/set5``
relative to the repository, and is skipped when neither exists: the project does not ship them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from yonos.degradations import bicubic_downsample, upsample_to
from yonos.degradations.matlab import bicubic_matlab_downsample, bicubic_matlab_upsample, imresize
from yonos.metrics import psnr_y, ssim_y

pytestmark = pytest.mark.usefixtures("one_thread")


def photo(height: int = 36, width: int = 28) -> torch.Tensor:
    from skimage import data

    crop = data.chelsea()[100 : 100 + height, 180 : 180 + width]
    return torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].double() / 255.0


def matlab_formula(image: np.ndarray, scale: float) -> np.ndarray:
    """imresize(uint8 image, scale, 'bicubic') written out as MATLAB's contributions() and resizeAlongDim()."""

    def cubic(x):
        ax = np.abs(x)
        return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((1 < ax) & (ax <= 2))

    def along(plane: np.ndarray, axis: int) -> np.ndarray:
        plane = np.moveaxis(plane, axis, 0)
        n_in = plane.shape[0]
        n_out = math.ceil(n_in * scale - 1e-9)
        width = 4 / scale if scale < 1 else 4
        out = np.zeros((n_out, *plane.shape[1:]))
        aux = np.concatenate([np.arange(1, n_in + 1), np.arange(n_in, 0, -1)])
        for i in range(1, n_out + 1):
            u = i / scale + 0.5 * (1 - 1 / scale)
            left = math.floor(u - width / 2)
            index = left + np.arange(math.ceil(width) + 2)
            weights = scale * cubic(scale * (u - index)) if scale < 1 else cubic(u - index)
            weights = weights / weights.sum()
            source = aux[np.mod(index - 1, len(aux))] - 1
            out[i - 1] = np.tensordot(weights, plane[source], axes=1)
        return np.moveaxis(np.floor(np.clip(out, 0, 255) + 0.5), 0, axis)  # uint8 after each dimension

    return along(along(image * 255.0, 0), 1) / 255.0  # rows first


@pytest.mark.parametrize("scale", [1 / 2, 1 / 4, 3.0, 2.0])
def test_imresize_matches_the_matlab_algorithm(scale: float):
    image = photo()
    expected = np.stack([matlab_formula(image[0, c].numpy(), scale) for c in range(3)])
    ours = imresize(image, scale)[0].numpy()
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, atol=1e-9)


def test_matlab_bicubic_is_not_torch_bicubic():
    """Same kernel (a = -0.5 in both), but borders and per-pass rounding differ: the images are not equal."""
    hr = photo(64, 64).float()
    matlab, torch_lr = bicubic_matlab_downsample(hr, 4), bicubic_downsample(hr, 4)
    assert matlab.shape == torch_lr.shape == (1, 3, 16, 16)
    assert (matlab - torch_lr).abs().max() > 2 / 255
    inner = (matlab - torch_lr)[..., 2:-2, 2:-2].abs().mean()
    assert inner < 1 / 255  # away from the borders they almost agree
    with pytest.raises(ValueError, match="not a multiple of scale 4"):
        bicubic_matlab_downsample(hr[..., :30, :], 4)


def test_torch_antialiased_bicubic_uses_a_minus_half():
    """The docstring's claim: torch's antialiased bicubic kernel is Keys' with a = -0.5 (not -0.75) widened by 2."""
    row = torch.rand(1, 1, 1, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = F.interpolate(row.expand(1, 1, 4, 64), size=(4, 32), mode="bicubic", antialias=True)[0, 0, 0]

    def keys(x: torch.Tensor, a: float) -> torch.Tensor:
        ax = x.abs()
        return ((a + 2) * ax**3 - (a + 3) * ax**2 + 1) * (ax <= 1) + (a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax < 2))

    def by_hand(a: float) -> torch.Tensor:
        centre = torch.arange(32, dtype=torch.float64) * 2 + 0.5  # output pixel i covers input 2i, 2i + 1
        taps = torch.arange(64, dtype=torch.float64)
        weights = keys((taps[None] - centre[:, None]) / 2, a)
        return (weights / weights.sum(1, keepdim=True)) @ row[0, 0, 0]

    assert (out - by_hand(-0.5))[3:-3].abs().max() < 1e-6
    assert (out - by_hand(-0.75))[3:-3].abs().max() > 1e-3


def set5_dir() -> Path | None:
    candidates = [os.environ.get("YONOS_SET5_DIR"), Path(__file__).resolve().parents[2] / "shared" / "data" / "set5"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "x4").is_dir():
            return Path(candidate)
    return None


def read(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].double() / 255.0


@pytest.mark.skipif(set5_dir() is None, reason="Set5 not found: set YONOS_SET5_DIR to a folder with x4/*_HR.png")
def test_set5_x4_bicubic_row_from_hr_alone():
    """The classic tables' Set5 x4 bicubic baseline: 28.42 dB / 0.8104, Y channel, 4 px border cropped."""
    folder = set5_dir() / "x4"
    psnrs, ssims, lr_matches = [], [], []
    for hr_path in sorted(folder.glob("*_HR.png")):
        hr = read(hr_path)
        lr = bicubic_matlab_downsample(hr, 4)
        matlab_lr = read(hr_path.with_name(hr_path.name.replace("_HR", "_LR")))
        lr_matches.append(float(((lr - matlab_lr).abs()[..., 2:-2, 2:-2] * 255 < 0.5).double().mean()))
        sr = bicubic_matlab_upsample(lr, 4)
        psnrs.append(float(psnr_y(sr.float(), hr.float(), 4)))
        ssims.append(float(ssim_y(sr.float(), hr.float(), 4)))
    assert len(psnrs) == 5
    assert min(lr_matches) > 0.99  # MATLAB's own LR images, pixel for pixel away from the border
    assert abs(np.mean(psnrs) - 28.42) < 0.03
    assert abs(np.mean(ssims) - 0.8104) < 0.001
    # The torch antialiased bicubic LR (this project's `bicubic`) gives a different, higher row.
    torch_row = np.mean([float(psnr_y(upsample_to(bicubic_downsample(read(p).float(), 4), read(p).shape[-2:]), read(p).float(), 4)) for p in sorted(folder.glob("*_HR.png"))])
    assert torch_row - np.mean(psnrs) > 0.1
