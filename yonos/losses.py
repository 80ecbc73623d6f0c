"""Training objectives as functions that take the networks as arguments (no Lightning, no optimisers).

Every loss compares x0 predictions, obtained through ``yonos.diffusion.predict_x0`` (method.md section 1).
"""

from __future__ import annotations

from torch import Tensor

from yonos.diffusion import LossWeighting, PredictionType, add_noise, predict_x0, x0_loss_weight
from yonos.models import SRDenoiser


def weighted_x0_loss(x0_pred: Tensor, x0_target: Tensor, t: Tensor, alphas_cumprod: Tensor, weighting: LossWeighting) -> Tensor:
    """mean_b w(lambda_t) * mean ||x0_pred - x0_target||^2, computed in float32."""
    per_sample = (x0_pred.float() - x0_target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (x0_loss_weight(alphas_cumprod, t, weighting) * per_sample).mean()


def denoising_loss(
    denoiser: SRDenoiser,
    z_hr: Tensor,
    z_lr: Tensor,
    t: Tensor,
    eps: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: PredictionType,
    weighting: LossWeighting = "one_plus_snr",
) -> Tensor:
    """The teacher objective (YONOS-SR eq. for the base model): w * ||x0(z_t, z_lr, t) - z_hr||^2."""
    z_t = add_noise(z_hr, eps, t, alphas_cumprod)  # (B, 4, h, w)
    x0_pred = predict_x0(denoiser(z_t, z_lr, t), z_t, t, alphas_cumprod, prediction_type)
    return weighted_x0_loss(x0_pred, z_hr, t, alphas_cumprod, weighting)
