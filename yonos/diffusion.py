"""The diffusion maths: schedule access, forward noising, training targets, the x0 conversion, DDIM sampling.

Pure torch + diffusers' DDIMScheduler; no Lightning, no networks (the denoiser is passed in as a callable).
Notation: z_t = alpha_t * z_0 + sigma_t * eps, alpha_t = sqrt(alphas_cumprod[t]), sigma_t = sqrt(1 - alphas_cumprod[t]).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler
from torch import Tensor

PredictionType = Literal["v_prediction", "epsilon", "sample"]
LossWeighting = Literal["one_plus_snr", "snr", "min_snr_5", "constant"]

# SD 2.1-base's scheduler (scheduler/scheduler_config.json), used when no pretrained folder is given.
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""The network as the sampler sees it: (z_t (B, 4, h, w), t (B,) long) -> raw model output (B, 4, h, w)."""


def load_scheduler_config(config: Mapping[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """A scheduler config as a dict: ``config`` itself, a ``scheduler_config.json`` file, a folder holding one, or
    SD 2.1-base's schedule when None."""
    if config is None:
        return dict(SD_SCHEDULER_CONFIG)
    if not isinstance(config, (str, Path)):
        return dict(config)
    path = Path(config)
    if path.suffix != ".json":
        path = path / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"scheduler config not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"scheduler config {path} is not valid JSON: {err}") from err


def parameterisation_mismatch(base_config: Mapping[str, Any], prediction_type: PredictionType) -> str | None:
    """Why training ``prediction_type`` on a base model trained with another parameterisation costs budget, or
    None when they agree (or the base config does not say).

    A network trained for eps read as v gives x0 = alpha*z_t - sigma*eps_pred; at t = T - 1 of SD's schedule
    (alpha = 0.068, sigma = 0.998) that is about -0.93 z_t, so the pretrained prior is wrong exactly at the one
    timestep the one-step sampler uses until fine-tuning re-learns the output.
    """
    base = base_config.get("prediction_type")
    if base is None or base == prediction_type:
        return None
    return (
        f"model.prediction_type = {prediction_type!r} but the base model's scheduler says it was trained with "
        f"{base!r}: its pretrained output is read in another parameterisation, so the step-0 x0 prediction is not "
        "the pretrained model's (the switch is learnable but costs training steps). Set model.init_args."
        f"prediction_type: {base} to keep the prior, or use a base trained with {prediction_type!r} "
        "(experiments/teacher_x2_sd21_768.yaml: SD 2.1 768, v-prediction)."
    )


def make_scheduler(
    config: Mapping[str, Any] | str | Path | None = None,
    prediction_type: PredictionType = "v_prediction",
    rescale_betas_zero_snr: bool = False,
) -> DDIMScheduler:
    """Build the DDIM scheduler that defines the noise schedule for training and sampling.

    The betas come from ``config`` (see :func:`load_scheduler_config`); the base's own ``prediction_type`` is not
    copied (see :func:`parameterisation_mismatch`). Sampling settings are this project's: trailing timestep spacing
    (one step starts at t = T - 1), no clipping, and ``set_alpha_to_one`` so that the last DDIM update returns the
    x0 prediction.
    """
    config = load_scheduler_config(config)
    if rescale_betas_zero_snr and prediction_type == "epsilon":
        raise ValueError(
            "rescale_betas_zero_snr with prediction_type='epsilon' cannot recover x0 at the last timestep "
            "(alpha_T = 0); use 'v_prediction'"
        )
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    schedule = {key: config[key] for key in keys if key in config}
    return DDIMScheduler(
        **schedule,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
    )


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """alpha_t and sigma_t for integer timesteps ``t`` (B,), shaped (B, 1, 1, 1) to broadcast over latents."""
    alphas_cumprod = alphas_cumprod.to(device=t.device)
    abar = alphas_cumprod[t].view(-1, 1, 1, 1)
    return abar.sqrt(), (1.0 - abar).sqrt()


def add_noise(z_0: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Forward process: z_t = alpha_t * z_0 + sigma_t * eps."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t)
    return alpha.to(z_0.dtype) * z_0 + sigma.to(z_0.dtype) * eps


def linear_x0(z_t: Tensor, t: Tensor, alphas_cumprod: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """The best per-channel linear denoiser (Wiener shrinkage) of z_0 with channel ``mean`` and ``var``
    (broadcast to z_t): mean + alpha var / (alpha^2 var + sigma^2) * (z_t - alpha mean). What a denoiser that
    learned nothing about images beyond their channel statistics scores: the prior's gate."""
    alpha, sigma = alpha_sigma(alphas_cumprod, t)
    return mean + alpha * var / (alpha**2 * var + sigma**2) * (z_t - alpha * mean)


def training_target(
    z_0: Tensor, eps: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: PredictionType
) -> Tensor:
    """What the network regresses for a parameterisation: v = alpha*eps - sigma*z_0, eps, or z_0."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return z_0
    if prediction_type == "v_prediction":
        alpha, sigma = alpha_sigma(alphas_cumprod, t)
        return alpha.to(z_0.dtype) * eps - sigma.to(z_0.dtype) * z_0
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def predict_x0(
    model_output: Tensor, z_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: PredictionType
) -> Tensor:
    """THE conversion from network output to the clean-latent prediction (used by every loss and sampler).

    v: x0 = alpha*z_t - sigma*v;  epsilon: x0 = (z_t - sigma*eps) / alpha;  sample: x0 = output.
    """
    if prediction_type == "sample":
        return model_output
    alpha, sigma = alpha_sigma(alphas_cumprod, t)
    alpha, sigma = alpha.to(z_t.dtype), sigma.to(z_t.dtype)
    if prediction_type == "v_prediction":
        return alpha * z_t - sigma * model_output
    if prediction_type == "epsilon":
        return (z_t - sigma * model_output) / alpha
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def residual_input(z_t: Tensor, z_lr: Tensor, t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Residual diffusion (``target: residual``): the noisy latent of r = z_0 - z_lr, i.e. z_t - alpha_t * z_lr.

    The network then denoises r (ResShift-style SR diffuses such a residual); its x0 is z_lr + x0_r. A deviation
    from YONOS-SR, which diffuses z_0 itself: the tiny world uses it, the SD yamls keep ``target: x0``.
    """
    alpha, _ = alpha_sigma(alphas_cumprod, t)
    return z_t - alpha.to(z_t.dtype) * z_lr


def residual_output_to_absolute(
    model_output: Tensor, z_lr: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: PredictionType
) -> Tensor:
    """The output of a residual network (for r = z_0 - z_lr) as the output of the same parameterisation for z_0,
    so that :func:`predict_x0` of it on z_t is z_lr + x0_r:
    v: v - sigma_t * z_lr;  epsilon: unchanged;  sample: z_lr + output."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return z_lr + model_output
    if prediction_type == "v_prediction":
        _, sigma = alpha_sigma(alphas_cumprod, t)
        return model_output - sigma.to(model_output.dtype) * z_lr
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def snr(alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha_t^2 / sigma_t^2 at timesteps ``t``, shape (B,)."""
    abar = alphas_cumprod.to(t.device)[t].float()
    return abar / (1.0 - abar).clamp_min(1e-12)


def x0_loss_weight(alphas_cumprod: Tensor, t: Tensor, weighting: LossWeighting) -> Tensor:
    """Weight w(lambda_t) of the x0-space loss w * ||x0_pred - z_0||^2, shape (B,).

    Since ||x0 error||^2 = ||eps error||^2 / SNR = ||v error||^2 / (1 + SNR):
    ``one_plus_snr`` (default) equals the MSE on v; ``snr`` equals the MSE on eps; ``min_snr_5`` is
    Min-SNR-gamma (Hang et al. 2023, gamma = 5): min(SNR, 5) on x0, i.e. min(SNR, 5) / (SNR + 1) on v and
    min(SNR, 5) / SNR on eps; ``constant`` is plain x0 MSE.
    """
    ratio = snr(alphas_cumprod, t)
    if weighting == "one_plus_snr":
        return 1.0 + ratio
    if weighting == "snr":
        return ratio
    if weighting == "min_snr_5":
        return ratio.clamp_max(5.0)
    if weighting == "constant":
        return torch.ones_like(ratio)
    raise ValueError(f"unknown loss weighting {weighting!r}")


def sample_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    generator: torch.Generator,
    device: torch.device,
    last_timestep_prob: float = 0.0,
) -> Tensor:
    """Training timesteps, shape (B,) long: t ~ U{0, ..., T-1} (the paper), each replaced by the one-step
    sampler's timestep T - 1 with probability ``last_timestep_prob``.

    Uniform sampling gives t = T - 1, the only timestep a one-step model is used at, 1/T of the samples;
    ``last_timestep_prob`` trains it explicitly. At 0 no extra random numbers are drawn (the stream is unchanged).
    """
    if not 0.0 <= last_timestep_prob <= 1.0:
        raise ValueError(f"model.last_timestep_prob must be in [0, 1], got {last_timestep_prob}")
    t = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device)
    if last_timestep_prob > 0:
        last = torch.rand(batch_size, generator=generator, device=device) < last_timestep_prob
        t = torch.where(last, torch.full_like(t, num_train_timesteps - 1), t)
    return t


StepCallback = Callable[[int, Tensor, Tensor], Tensor]
"""Called after each DDIM step as ``callback(step, timestep, z_t)``; returns the z_t to continue from."""


@torch.no_grad()
def ddim_sample(
    denoise: DenoiseFn,
    scheduler: DDIMScheduler,
    z_T: Tensor,
    num_steps: int = 1,
    callback: StepCallback | None = None,
    progress: Callable[[Iterable[Tensor]], Iterable[Tensor]] | None = None,
) -> Tensor:
    """Deterministic DDIM (eta = 0) from the starting latent ``z_T`` (B, 4, h, w) at the last timestep; returns the
    clean latent. The caller draws ``z_T`` (as k-diffusion's samplers take ``x``): see yonos.sampling.randn.

    The network output goes through :func:`predict_x0` and diffusers' DDIM update is then taken on that x0 (a copy
    of the scheduler with ``prediction_type="sample"``), so one conversion serves training and sampling. With one
    step (the YONOS-SR setting) the result is exactly the x0 prediction at t = T - 1.

    Args:
        callback: see :data:`StepCallback` (diffusers' ``callback_on_step_end``, without the pipeline).
        progress: wraps the iterable of timesteps (a progress bar; one that stops yielding ends sampling early).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    prediction_type = scheduler.config.prediction_type
    stepper = copy.deepcopy(scheduler)  # same schedule; a copy, not from_config (which re-parses: ms per call)
    stepper.register_to_config(prediction_type="sample")
    stepper.set_timesteps(num_steps, device=z_T.device)
    alphas_cumprod = stepper.alphas_cumprod
    z_t = z_T * stepper.init_noise_sigma  # (B, 4, h, w)
    timesteps = stepper.timesteps if progress is None else progress(stepper.timesteps)
    for step, timestep in enumerate(timesteps):
        t = torch.full((z_t.shape[0],), int(timestep), device=z_t.device, dtype=torch.long)
        x0_pred = predict_x0(denoise(z_t, t), z_t, t, alphas_cumprod, prediction_type)
        z_t = stepper.step(x0_pred, timestep, z_t, eta=0.0).prev_sample
        if callback is not None:
            z_t = callback(step, timestep, z_t)
    return z_t
