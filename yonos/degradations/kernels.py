"""Batched blur kernels of the Real-ESRGAN degradation: Gaussian family, plateau, circular sinc, and their sampling.

Formulas follow BasicSR's ``basicsr/data/degradations.py`` (tested to 1e-6); every kernel of a batch gets its own
parameters. Pure torch; random draws take a ``torch.Generator`` and are made on its device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from yonos.degradations.config import KERNEL_TYPES, MAX_KERNEL_SIZE, DegradationStageConfig

SINC = len(KERNEL_TYPES)
"""``kernel_type`` code of a circular low-pass (sinc) kernel; codes below it index ``KERNEL_TYPES``."""
FINAL_SINC_SIZE_RANGE = (7, 21)


def mesh_grid(kernel_size: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    """Pixel offsets from the kernel centre, (K, K, 2) with [..., 0] = x (column) and [..., 1] = y (row)."""
    axis = torch.arange(kernel_size, dtype=dtype, device=device) - (kernel_size // 2)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def sigma_matrix(sigma_x: Tensor, sigma_y: Tensor, rotation: Tensor) -> Tensor:
    """Covariance U diag(sigma_x^2, sigma_y^2) U^T with U the rotation by ``rotation`` radians, (B, 2, 2)."""
    cos, sin = torch.cos(rotation), torch.sin(rotation)
    u = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    d = torch.diag_embed(torch.stack([sigma_x**2, sigma_y**2], -1))  # (B, 2, 2)
    return u @ d @ u.transpose(-1, -2)


def _quadratic_form(sigma_x: Tensor, sigma_y: Tensor, rotation: Tensor, kernel_size: int) -> Tensor:
    """x^T Sigma^-1 x over the kernel grid, (B, K, K)."""
    grid = mesh_grid(kernel_size, sigma_x.dtype, sigma_x.device)  # (K, K, 2)
    inverse = torch.linalg.inv(sigma_matrix(sigma_x, sigma_y, rotation))  # (B, 2, 2)
    return torch.einsum("hwi,bij,hwj->bhw", grid, inverse, grid)


def _normalise(kernel: Tensor) -> Tensor:
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def bivariate_gaussian(kernel_size: int, sigma_x: Tensor, sigma_y: Tensor, rotation: Tensor) -> Tensor:
    """Anisotropic Gaussian kernels exp(-x^T Sigma^-1 x / 2), normalised, (B, K, K); isotropic when
    sigma_y = sigma_x and rotation = 0."""
    return _normalise(torch.exp(-0.5 * _quadratic_form(sigma_x, sigma_y, rotation, kernel_size)))


def bivariate_generalized_gaussian(
    kernel_size: int, sigma_x: Tensor, sigma_y: Tensor, rotation: Tensor, beta: Tensor
) -> Tensor:
    """Generalized Gaussian kernels exp(-(x^T Sigma^-1 x)^beta / 2) (Pascal et al. 2013), normalised, (B, K, K)."""
    q = _quadratic_form(sigma_x, sigma_y, rotation, kernel_size)
    return _normalise(torch.exp(-0.5 * q.pow(beta[:, None, None])))


def bivariate_plateau(kernel_size: int, sigma_x: Tensor, sigma_y: Tensor, rotation: Tensor, beta: Tensor) -> Tensor:
    """Plateau kernels 1 / (1 + (x^T Sigma^-1 x)^beta), normalised, (B, K, K)."""
    q = _quadratic_form(sigma_x, sigma_y, rotation, kernel_size)
    return _normalise(1.0 / (q.pow(beta[:, None, None]) + 1.0))


def circular_lowpass_kernel(kernel_size: int, cutoff: Tensor) -> Tensor:
    """2-D circular low-pass (sinc) kernels omega J1(omega r) / (2 pi r), normalised, (B, K, K).

    Args:
        cutoff: (B,) cutoff frequency omega in radians per pixel (pi is Nyquist).
    """
    radius = mesh_grid(kernel_size, cutoff.dtype, cutoff.device).norm(dim=-1)  # (K, K)
    omega = cutoff[:, None, None]
    safe_radius = torch.where(radius > 0, radius, torch.ones_like(radius))
    kernel = omega * torch.special.bessel_j1(omega * safe_radius) / (2 * math.pi * safe_radius)
    # The limit at r = 0 is omega^2 / (4 pi).
    kernel = torch.where(radius > 0, kernel, omega**2 / (4 * math.pi))
    return _normalise(kernel)


def pad_kernel(kernel: Tensor, size: int = MAX_KERNEL_SIZE) -> Tensor:
    """Zero-pad (B, k, k) kernels symmetrically to (B, size, size)."""
    pad = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (pad, pad, pad, pad))


def mixed_kernels(
    kernel_type: Tensor,
    kernel_size: Tensor,
    sigma_x: Tensor,
    sigma_y: Tensor,
    rotation: Tensor,
    beta: Tensor,
    cutoff: Tensor,
    pad_to: int = MAX_KERNEL_SIZE,
) -> Tensor:
    """One kernel per sample, each of its own type and odd size, zero-padded to (B, pad_to, pad_to).

    Every formula is evaluated on the ``pad_to`` grid, cut to the sample's k x k support and normalised there,
    which equals making the k x k kernel and padding it.

    Args:
        kernel_type: (B,) long, index into ``KERNEL_TYPES`` or ``SINC``.
        kernel_size: (B,) long, odd, <= pad_to.
        beta: (B,) shape of generalized Gaussian / plateau kernels (ignored by the others).
        cutoff: (B,) sinc cutoff in radians (ignored by the others).
    """
    q = _quadratic_form(sigma_x, sigma_y, rotation, pad_to)  # (B, K, K)
    beta = beta[:, None, None]
    family = torch.div(kernel_type, 2, rounding_mode="floor")[:, None, None]  # 0 Gaussian, 1 generalized, 2 plateau
    gaussian = torch.exp(-0.5 * q)
    generalized = torch.exp(-0.5 * q.pow(beta))
    plateau = 1.0 / (q.pow(beta) + 1.0)
    kernel = torch.where(family == 0, gaussian, torch.where(family == 1, generalized, plateau))
    is_sinc = (kernel_type == SINC)[:, None, None]
    kernel = torch.where(is_sinc, circular_lowpass_kernel(pad_to, cutoff), kernel)
    half = torch.div(kernel_size, 2, rounding_mode="floor")[:, None, None]
    offsets = mesh_grid(pad_to, torch.long, kernel_size.device).abs()  # (K, K, 2)
    inside = (offsets[..., 0] <= half) & (offsets[..., 1] <= half)  # (B, K, K)
    return _normalise(torch.where(inside, kernel, torch.zeros_like(kernel)))


def identity_kernel(batch_size: int, size: int = MAX_KERNEL_SIZE, device: torch.device | None = None) -> Tensor:
    """Delta kernels (B, size, size): filtering with them changes nothing."""
    kernel = torch.zeros(batch_size, size, size, device=device)
    kernel[:, size // 2, size // 2] = 1.0
    return kernel


@dataclass
class KernelDraw:
    """Per-sample kernel parameters drawn by :func:`sample_blur_kernels`, each (B,), and the kernels."""

    kernel: Tensor  # (B, 21, 21) float32
    kernel_type: Tensor  # long: index into KERNEL_TYPES, or SINC
    kernel_size: Tensor  # long, odd
    sigma_x: Tensor
    sigma_y: Tensor
    rotation: Tensor
    beta: Tensor
    cutoff: Tensor


def uniform(low: float, high: float, n: int, generator: torch.Generator) -> Tensor:
    """(n,) float64 draws from U[low, high] on the generator's device."""
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return low + (high - low) * u


def bernoulli(prob: float, n: int, generator: torch.Generator) -> Tensor:
    """(n,) bool draws that are True with probability ``prob``."""
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64) < prob


def categorical(probs: list[float] | tuple[float, ...], n: int, generator: torch.Generator) -> Tensor:
    """(n,) long indices drawn with the given probabilities."""
    weights = torch.tensor(probs, dtype=torch.float64, device=generator.device)
    return torch.multinomial(weights, n, replacement=True, generator=generator)


def odd_sizes(size_range: tuple[int, int], n: int, generator: torch.Generator) -> Tensor:
    """(n,) odd kernel sizes uniform over {low, low + 2, ..., high}."""
    low, high = size_range
    steps = torch.randint(0, (high - low) // 2 + 1, (n,), generator=generator, device=generator.device)
    return low + 2 * steps


def _split_beta(beta_range: tuple[float, float], n: int, generator: torch.Generator) -> Tensor:
    """BasicSR's beta draw: U[low, 1] or U[1, high] with probability 0.5 each."""
    below = bernoulli(0.5, n, generator)
    return torch.where(below, uniform(beta_range[0], 1.0, n, generator), uniform(1.0, beta_range[1], n, generator))


def sample_blur_kernels(stage: DegradationStageConfig, batch_size: int, generator: torch.Generator) -> KernelDraw:
    """Draw one blur kernel per sample as Real-ESRGAN's dataset does (sinc with ``sinc_prob``, else a mixed
    Gaussian-family kernel), on the generator's device, padded to 21 x 21."""
    n = batch_size
    kernel_size = odd_sizes(stage.kernel_size_range, n, generator)
    is_sinc = bernoulli(stage.sinc_prob, n, generator)
    choice = categorical(stage.kernel_prob, n, generator)
    codes = torch.tensor([KERNEL_TYPES.index(name) for name in stage.kernel_list], device=generator.device)
    kernel_type = torch.where(is_sinc, torch.full_like(choice, SINC), codes[choice])
    sigma_x = uniform(*stage.blur_sigma, n, generator)
    sigma_y = uniform(*stage.blur_sigma, n, generator)
    rotation = uniform(-math.pi, math.pi, n, generator)
    isotropic = kernel_type % 2 == 0  # iso, generalized_iso, plateau_iso
    sigma_y = torch.where(isotropic, sigma_x, sigma_y)
    rotation = torch.where(isotropic, torch.zeros_like(rotation), rotation)
    beta_g = _split_beta(stage.betag_range, n, generator)
    beta_p = _split_beta(stage.betap_range, n, generator)
    family = torch.div(kernel_type, 2, rounding_mode="floor")
    beta = torch.where(family == 1, beta_g, torch.where(family == 2, beta_p, torch.ones_like(beta_g)))
    # BasicSR's sinc cutoff range is tied to its 7..21 sizes: wider for large kernels.
    cutoff = torch.where(
        kernel_size < 13, uniform(math.pi / 3, math.pi, n, generator), uniform(math.pi / 5, math.pi, n, generator)
    )
    kernel = mixed_kernels(kernel_type, kernel_size, sigma_x, sigma_y, rotation, beta, cutoff)
    return KernelDraw(kernel.float(), kernel_type, kernel_size, sigma_x, sigma_y, rotation, beta, cutoff)


def sample_final_sinc_kernels(prob: float, batch_size: int, generator: torch.Generator) -> Tensor:
    """Final sinc kernels (B, 21, 21): with ``prob`` a sinc of size 7..21 and cutoff U[pi/3, pi], else a delta."""
    n = batch_size
    use_sinc = bernoulli(prob, n, generator)
    kernel_size = odd_sizes(FINAL_SINC_SIZE_RANGE, n, generator)
    cutoff = uniform(math.pi / 3, math.pi, n, generator)
    kernel_type = torch.full((n,), SINC, device=generator.device)
    ones = torch.ones_like(cutoff)
    sinc = mixed_kernels(kernel_type, kernel_size, ones, ones, 0 * ones, ones, cutoff).float()
    return torch.where(use_sinc[:, None, None], sinc, identity_kernel(n, device=generator.device))
