"""Training objectives as functions that take the networks as arguments (no Lightning, no optimisers).

Every loss compares x0 predictions, obtained through ``yonos.diffusion.predict_x0``. Latents, noise, z_t, the x0
conversion, targets and losses are float32 whatever the trainer's precision: under mixed precision only the network
calls run in bf16/fp16 (their outputs are cast back before the conversion). In bf16 the rounding of z_t and of the
target alone puts a floor of about 6e-3 under the loss of a perfect network at t = 0.
"""

from __future__ import annotations

import torch
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
    z_hr = z_hr.float()
    z_t = add_noise(z_hr, eps.float(), t, alphas_cumprod)  # (B, 4, h, w) float32
    x0_pred = predict_x0(denoiser(z_t, z_lr, t).float(), z_t, t, alphas_cumprod, prediction_type)
    return weighted_x0_loss(x0_pred, z_hr, t, alphas_cumprod, weighting)


def distillation_loss(
    student: SRDenoiser,
    teacher: SRDenoiser,
    z_t: Tensor,
    t: Tensor,
    z_lr_student: Tensor,
    z_lr_teacher: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: PredictionType,
    weighting: LossWeighting = "one_plus_snr",
    z_hr: Tensor | None = None,
    gt_mix: float = 0.0,
) -> Tensor:
    """Scale distillation (YONOS-SR section 3.2): w * ||x0_student(z_t, z_lr_N, t) - x0_teacher(z_t, z_lr_N/2, t)||^2.

    The same z_t and t go to both networks; only the LR condition differs. ``gt_mix`` in [0, 1] blends in the
    ground-truth term w * ||x0_student - z_hr||^2 (an experiment, not the paper's recipe).
    """
    z_t = z_t.float()
    with torch.no_grad():
        x0_teacher = predict_x0(teacher(z_t, z_lr_teacher, t).float(), z_t, t, alphas_cumprod, prediction_type)
    x0_student = predict_x0(student(z_t, z_lr_student, t).float(), z_t, t, alphas_cumprod, prediction_type)
    loss = weighted_x0_loss(x0_student, x0_teacher, t, alphas_cumprod, weighting)
    if gt_mix > 0:
        if z_hr is None:
            raise ValueError("gt_mix > 0 needs z_hr")
        loss = (1.0 - gt_mix) * loss + gt_mix * weighted_x0_loss(x0_student, z_hr, t, alphas_cumprod, weighting)
    return loss


def hinge_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Hinge loss of the discriminator: mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), halved."""
    return 0.5 * (torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean())


def hinge_generator_loss(logits_fake: Tensor) -> Tensor:
    """The generator's side of the hinge GAN: -mean(D(fake))."""
    return -logits_fake.mean()


def adaptive_gan_weight(reconstruction: Tensor, adversarial: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """Taming-transformers' adaptive weight: ||grad_last(L_rec)|| / (||grad_last(L_gan)|| + 1e-4), detached.

    Balances the GAN term against the reconstruction term at the decoder's last layer.
    """
    grad_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    grad_gan = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    return (grad_rec.norm() / (grad_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()
