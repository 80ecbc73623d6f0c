"""Blur kernels: parity with BasicSR's formulas (numpy re-statements here, and BasicSR itself when installed),
and the statistics of the sampled kernel parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

from yonos.degradations.config import KERNEL_TYPES, DegradationStageConfig, RealESRGANConfig
from yonos.degradations.kernels import (
    SINC,
    bivariate_gaussian,
    bivariate_generalized_gaussian,
    bivariate_plateau,
    circular_lowpass_kernel,
    mixed_kernels,
    pad_kernel,
    sample_blur_kernels,
    sample_final_sinc_kernels,
)

# (kernel_size, sigma_x, sigma_y, rotation, beta)
CASES = [(7, 0.2, 0.2, 0.0, 0.5), (13, 1.7, 0.6, 0.9, 1.0), (21, 3.0, 1.1, -2.5, 3.7), (11, 0.8, 2.4, math.pi, 1.4)]
SINC_CASES = [(7, math.pi / 3), (13, math.pi / 5), (21, 2.2), (9, math.pi)]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors, one thread


# BasicSR's definitions (basicsr/data/degradations.py), restated in numpy.
def np_mesh_grid(size: int) -> np.ndarray:
    ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def np_sigma_matrix2(sx: float, sy: float, theta: float) -> np.ndarray:
    d = np.array([[sx**2, 0], [0, sy**2]])
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return u @ d @ u.T


def np_quadratic(size: int, sx: float, sy: float, theta: float) -> np.ndarray:
    grid = np_mesh_grid(size)
    inverse = np.linalg.inv(np_sigma_matrix2(sx, sy, theta))
    return np.sum(np.dot(grid, inverse) * grid, 2)


def np_gaussian(size, sx, sy, theta):
    k = np.exp(-0.5 * np_quadratic(size, sx, sy, theta))
    return k / k.sum()


def np_generalized(size, sx, sy, theta, beta):
    k = np.exp(-0.5 * np.power(np_quadratic(size, sx, sy, theta), beta))
    return k / k.sum()


def np_plateau(size, sx, sy, theta, beta):
    k = np.reciprocal(np.power(np_quadratic(size, sx, sy, theta), beta) + 1)
    return k / k.sum()


def np_sinc(cutoff: float, size: int) -> np.ndarray:
    c = (size - 1) / 2
    x, y = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    r = np.sqrt((x - c) ** 2 + (y - c) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * scipy.special.j1(cutoff * r) / (2 * np.pi * r)
    k[int(c), int(c)] = cutoff**2 / (4 * np.pi)
    return k / k.sum()


def t64(*values: float) -> list[torch.Tensor]:
    return [torch.tensor([v], dtype=torch.float64) for v in values]


@pytest.mark.parametrize("size, sx, sy, theta, beta", CASES)
def test_gaussian_family_matches_basicsr_formulas(size, sx, sy, theta, beta):
    sigma_x, sigma_y, rotation, b = t64(sx, sy, theta, beta)
    expected = {
        "gaussian": np_gaussian(size, sx, sy, theta),
        "iso": np_gaussian(size, sx, sx, 0.0),
        "generalized": np_generalized(size, sx, sy, theta, beta),
        "plateau": np_plateau(size, sx, sy, theta, beta),
    }
    actual = {
        "gaussian": bivariate_gaussian(size, sigma_x, sigma_y, rotation),
        "iso": bivariate_gaussian(size, sigma_x, sigma_x, 0 * rotation),
        "generalized": bivariate_generalized_gaussian(size, sigma_x, sigma_y, rotation, b),
        "plateau": bivariate_plateau(size, sigma_x, sigma_y, rotation, b),
    }
    for name, kernel in actual.items():
        assert kernel.shape == (1, size, size)
        np.testing.assert_allclose(kernel[0].numpy(), expected[name], atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.parametrize("size, cutoff", SINC_CASES)
def test_sinc_matches_basicsr_formula(size, cutoff):
    kernel = circular_lowpass_kernel(size, torch.tensor([cutoff], dtype=torch.float64))
    np.testing.assert_allclose(kernel[0].numpy(), np_sinc(cutoff, size), atol=1e-6, rtol=0)


def test_mixed_kernels_equal_per_type_kernels_padded_to_21():
    rows, expected = [], []
    for code in range(len(KERNEL_TYPES)):
        size, sx, sy, theta, beta = CASES[code % len(CASES)]
        if code % 2 == 0:  # iso, generalized_iso, plateau_iso
            sy, theta = sx, 0.0
        family = [
            np_gaussian(size, sx, sy, theta),
            np_generalized(size, sx, sy, theta, beta),
            np_plateau(size, sx, sy, theta, beta),
        ]
        rows.append((code, size, sx, sy, theta, beta, 1.0))
        expected.append(family[code // 2])
    for size, cutoff in SINC_CASES:
        rows.append((SINC, size, 1.0, 1.0, 0.0, 1.0, cutoff))
        expected.append(np_sinc(cutoff, size))
    columns = list(zip(*rows, strict=True))
    kernel_type, kernel_size = (torch.tensor(c) for c in columns[:2])
    floats = [torch.tensor(c, dtype=torch.float64) for c in columns[2:]]
    kernels = mixed_kernels(kernel_type, kernel_size, *floats)
    for kernel, reference in zip(kernels, expected, strict=True):
        pad = (21 - reference.shape[0]) // 2
        np.testing.assert_allclose(kernel.numpy(), np.pad(reference, pad), atol=1e-6, rtol=0)
    assert torch.equal(pad_kernel(torch.ones(1, 7, 7))[0, 7:14, 7:14], torch.ones(7, 7))


def test_kernels_match_basicsr_functions(import_basicsr):
    basicsr = import_basicsr("basicsr.data.degradations")
    for size, sx, sy, theta, beta in CASES:
        sigma_x, sigma_y, rotation, b = t64(sx, sy, theta, beta)
        pairs = [
            (
                bivariate_gaussian(size, sigma_x, sigma_y, rotation),
                basicsr.bivariate_Gaussian(size, sx, sy, theta, isotropic=False),
            ),
            (
                bivariate_gaussian(size, sigma_x, sigma_x, 0 * rotation),
                basicsr.bivariate_Gaussian(size, sx, sy, theta, isotropic=True),
            ),
            (
                bivariate_generalized_gaussian(size, sigma_x, sigma_y, rotation, b),
                basicsr.bivariate_generalized_Gaussian(size, sx, sy, theta, beta, isotropic=False),
            ),
            (
                bivariate_plateau(size, sigma_x, sigma_y, rotation, b),
                basicsr.bivariate_plateau(size, sx, sy, theta, beta, isotropic=False),
            ),
        ]
        for ours, theirs in pairs:
            np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-6, rtol=0)
    for size, cutoff in SINC_CASES:
        ours = pad_kernel(circular_lowpass_kernel(size, torch.tensor([cutoff], dtype=torch.float64)))
        theirs = basicsr.circular_lowpass_kernel(cutoff, size, pad_to=21)
        np.testing.assert_allclose(ours[0].numpy(), theirs, atol=1e-6, rtol=0)


def test_sampled_kernels_follow_config_probabilities_and_ranges():
    stage = RealESRGANConfig.from_preset("realesrgan").stage1
    n = 10000
    draw = sample_blur_kernels(stage, n, torch.Generator().manual_seed(0))
    assert draw.kernel.shape == (n, 21, 21) and draw.kernel.dtype == torch.float32
    torch.testing.assert_close(draw.kernel.sum((-2, -1)), torch.ones(n), atol=1e-5, rtol=0)
    expected = [p * (1 - stage.sinc_prob) for p in stage.kernel_prob] + [stage.sinc_prob]
    frequency = torch.bincount(draw.kernel_type, minlength=SINC + 1).double() / n
    for observed, p in zip(frequency.tolist(), expected, strict=True):
        assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n)
    sizes = draw.kernel_size
    assert set(sizes.tolist()) == set(range(7, 22, 2))
    # Support: zero outside the sample's k x k square.
    for size in (7, 13):
        outside = draw.kernel[sizes == size].clone()
        outside[:, 10 - size // 2 : 11 + size // 2, 10 - size // 2 : 11 + size // 2] = 0
        assert outside.abs().max() == 0
    gaussian = draw.kernel_type < SINC
    low, high = stage.blur_sigma
    assert low <= draw.sigma_x[gaussian].min() and draw.sigma_x[gaussian].max() <= high
    iso = gaussian & (draw.kernel_type % 2 == 0)
    assert torch.equal(draw.sigma_y[iso], draw.sigma_x[iso]) and draw.rotation[iso].abs().max() == 0
    assert draw.rotation.min() >= -math.pi and draw.rotation.max() <= math.pi
    generalized = (draw.kernel_type == 2) | (draw.kernel_type == 3)
    beta = draw.beta[generalized]
    assert stage.betag_range[0] <= beta.min() and beta.max() <= stage.betag_range[1]
    assert abs((beta < 1).double().mean().item() - 0.5) < 0.05
    plateau = (draw.kernel_type == 4) | (draw.kernel_type == 5)
    assert stage.betap_range[0] <= draw.beta[plateau].min() and draw.beta[plateau].max() <= stage.betap_range[1]
    cutoff, small = draw.cutoff[~gaussian], sizes[~gaussian] < 13
    assert cutoff[small].min() >= math.pi / 3 and cutoff[~small].min() >= math.pi / 5 and cutoff.max() <= math.pi
    assert cutoff[~small].min() < math.pi / 3  # large sinc kernels reach the lower cutoff


def test_kernel_list_subset_and_size_range():
    stage = DegradationStageConfig(
        kernel_list=["plateau_aniso", "iso"], kernel_prob=[0.25, 0.75], kernel_size_range=(9, 11), sinc_prob=0.0
    )
    draw = sample_blur_kernels(stage, 4000, torch.Generator().manual_seed(1))
    assert set(draw.kernel_type.tolist()) == {0, 5}
    assert abs((draw.kernel_type == 5).double().mean().item() - 0.25) < 0.04
    assert set(draw.kernel_size.tolist()) == {9, 11}


def test_final_sinc_kernels_are_sinc_with_probability_else_delta():
    n = 4000
    kernels = sample_final_sinc_kernels(0.8, n, torch.Generator().manual_seed(2))
    delta = kernels[:, 10, 10] == 1
    assert abs(delta.double().mean().item() - 0.2) < 0.03
    assert kernels[delta].sum() == delta.sum()  # nothing but the centre tap
    torch.testing.assert_close(kernels.sum((-2, -1)), torch.ones(n), atol=1e-5, rtol=0)
