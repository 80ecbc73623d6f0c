"""The diffusion core against diffusers' DDIMScheduler maths."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler
from torch.testing import assert_close

from yonos.diffusion import (
    add_noise,
    ddim_sample,
    linear_x0,
    make_scheduler,
    parameterisation_mismatch,
    predict_x0,
    sample_timesteps,
    snr,
    training_target,
    x0_loss_weight,
)
from yonos.losses import denoising_loss, weighted_x0_loss

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")


def _fake_network(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A deterministic stand-in for a UNet whose output depends on both z_t and t."""
    return 0.3 * z_t.flip(1) + torch.sin(t.float() / 100.0).view(-1, 1, 1, 1) * torch.tanh(z_t)


@pytest.fixture()
def latents() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z_0 = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 17, 500, 999])
    return z_0, eps, t


def test_add_noise_matches_diffusers(latents):
    z_0, eps, t = latents
    scheduler = make_scheduler()
    # diffusers takes the square roots in float32 and casts; float32 rounding separates the two.
    assert_close(add_noise(z_0, eps, t, scheduler.alphas_cumprod), scheduler.add_noise(z_0, eps, t), rtol=1e-5, atol=1e-6)


def test_v_target_matches_diffusers_velocity(latents):
    z_0, eps, t = latents
    scheduler = make_scheduler()
    v = training_target(z_0, eps, t, scheduler.alphas_cumprod, "v_prediction")
    assert_close(v, scheduler.get_velocity(z_0, eps, t))
    assert torch.equal(training_target(z_0, eps, t, scheduler.alphas_cumprod, "epsilon"), eps)
    assert torch.equal(training_target(z_0, eps, t, scheduler.alphas_cumprod, "sample"), z_0)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_x0_conversion_round_trips(latents, prediction_type):
    z_0, eps, t = latents
    alphas_cumprod = make_scheduler().alphas_cumprod.double()
    z_t = add_noise(z_0, eps, t, alphas_cumprod)
    target = training_target(z_0, eps, t, alphas_cumprod, prediction_type)
    assert_close(predict_x0(target, z_t, t, alphas_cumprod, prediction_type), z_0)


def test_scheduler_uses_sd_schedule_and_trailing_spacing():
    scheduler = make_scheduler()
    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert_close(scheduler.alphas_cumprod, reference.alphas_cumprod)
    scheduler.set_timesteps(1)
    assert scheduler.timesteps.tolist() == [999]
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]


def test_scheduler_config_from_folder_and_errors(tmp_path):
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}))
    scheduler = make_scheduler(tmp_path)
    assert_close(scheduler.betas[[0, -1]], torch.tensor([0.0001, 0.02]))
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        make_scheduler(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "scheduler_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        make_scheduler(bad)


def test_zero_terminal_snr_option():
    scheduler = make_scheduler(rescale_betas_zero_snr=True)
    assert scheduler.alphas_cumprod[-1].item() == pytest.approx(0.0, abs=1e-12)
    assert make_scheduler().alphas_cumprod[-1].item() > 1e-3
    with pytest.raises(ValueError, match="v_prediction"):
        make_scheduler(prediction_type="epsilon", rescale_betas_zero_snr=True)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_one_step_ddim_is_the_x0_prediction_at_the_last_timestep(prediction_type):
    scheduler = make_scheduler(prediction_type=prediction_type)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []

    def network(z_t, t):
        seen.append(t.clone())
        return _fake_network(z_t, t)

    out = ddim_sample(network, scheduler, noise, num_steps=1)
    t_last = torch.full((2,), 999)
    assert [s.tolist() for s in seen] == [[999, 999]]
    assert_close(out, predict_x0(_fake_network(noise, t_last), noise, t_last, scheduler.alphas_cumprod, prediction_type))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
@pytest.mark.parametrize("num_steps", [1, 4, 10])
def test_n_step_ddim_matches_diffusers_loop(prediction_type, num_steps):
    scheduler = make_scheduler(prediction_type=prediction_type)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = ddim_sample(_fake_network, scheduler, noise, num_steps=num_steps)

    reference = DDIMScheduler.from_config(scheduler.config)  # the network output goes to diffusers as is
    reference.set_timesteps(num_steps)
    sample = noise.clone()
    for timestep in reference.timesteps:
        output = _fake_network(sample, torch.full((2,), int(timestep)))
        sample = reference.step(output, timestep, sample, eta=0.0).prev_sample
    assert_close(ours, sample, rtol=1e-4, atol=1e-4)


def test_one_plus_snr_weighted_x0_loss_equals_v_mse(latents):
    z_0, eps, t = (x.float() if x.is_floating_point() else x for x in latents)
    scheduler = make_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod
    z_lr = torch.zeros_like(z_0)

    def denoiser(z_t, z_lr_, t_):
        return _fake_network(z_t, t_)

    loss = denoising_loss(denoiser, z_0, z_lr, t, eps, alphas_cumprod, "v_prediction", "one_plus_snr")
    z_t = add_noise(z_0, eps, t, alphas_cumprod)
    v_mse = (_fake_network(z_t, t) - training_target(z_0, eps, t, alphas_cumprod, "v_prediction")).pow(2).mean()
    assert_close(loss, v_mse, rtol=1e-4, atol=1e-6)
    weights = x0_loss_weight(alphas_cumprod, t, "constant")
    assert torch.equal(weights, torch.ones(4))
    with pytest.raises(ValueError, match="weighting"):
        x0_loss_weight(alphas_cumprod, t, "nope")  # type: ignore[arg-type]


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean(dim=(1, 2, 3))


def _x0_error_and_output_errors(latents, prediction_type):
    """The x0 prediction of a stand-in network and the per-sample MSE of its raw output against the target."""
    z_0, eps, t = (x.float() if x.is_floating_point() else x for x in latents)
    alphas_cumprod = make_scheduler(prediction_type=prediction_type).alphas_cumprod
    z_t = add_noise(z_0, eps, t, alphas_cumprod)
    output = _fake_network(z_t, t)
    x0_pred = predict_x0(output, z_t, t, alphas_cumprod, prediction_type)
    output_mse = _per_sample_mse(output, training_target(z_0, eps, t, alphas_cumprod, prediction_type))
    return x0_pred, z_0, t, alphas_cumprod, output_mse


def test_snr_weighting_equals_the_mse_on_eps(latents):
    x0_pred, z_0, t, alphas_cumprod, eps_mse = _x0_error_and_output_errors(latents, "epsilon")
    loss = weighted_x0_loss(x0_pred, z_0, t, alphas_cumprod, "snr")
    assert_close(loss, eps_mse.mean(), rtol=1e-3, atol=0)


def test_min_snr_5_is_min_snr_gamma_in_x0_space(latents):
    """Hang et al. 2023: w = min(SNR, gamma) on x0, i.e. min(SNR, gamma) / (SNR + 1) on v."""
    x0_pred, z_0, t, alphas_cumprod, v_mse = _x0_error_and_output_errors(latents, "v_prediction")
    ratio = snr(alphas_cumprod, t)
    assert ratio[0] > 5 > ratio[-1]  # t = 0 is clipped at gamma, t = 999 is not
    weights = x0_loss_weight(alphas_cumprod, t, "min_snr_5")
    assert_close(weights, torch.minimum(ratio, torch.tensor(5.0)))
    assert weights[0].item() == 5.0 and weights[-1].item() == pytest.approx(ratio[-1].item())
    loss = weighted_x0_loss(x0_pred, z_0, t, alphas_cumprod, "min_snr_5")
    assert_close(loss, (torch.minimum(ratio, torch.tensor(5.0)) / (ratio + 1) * v_mse).mean(), rtol=1e-3, atol=0)


def test_last_timestep_prob_trains_the_one_step_timestep_explicitly():
    uniform = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    again = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0), torch.device("cpu"), 0.0)
    assert torch.equal(uniform, again)  # the default draws exactly what it always did
    assert (uniform == 999).float().mean() < 0.005
    biased = sample_timesteps(4000, 1000, torch.Generator().manual_seed(0), torch.device("cpu"), 0.25)
    share = (biased == 999).float().mean().item()
    assert 0.22 < share < 0.28
    others = biased != 999
    assert torch.equal(biased[others], uniform[others])  # the rest stays uniform
    assert torch.equal(sample_timesteps(8, 1000, torch.Generator(), torch.device("cpu"), 1.0), torch.full((8,), 999))
    with pytest.raises(ValueError, match="last_timestep_prob"):
        sample_timesteps(8, 1000, torch.Generator(), torch.device("cpu"), 1.5)


def test_parameterisation_mismatch_with_the_base_model_is_explained():
    assert parameterisation_mismatch({"prediction_type": "v_prediction"}, "v_prediction") is None
    assert parameterisation_mismatch({}, "v_prediction") is None
    message = parameterisation_mismatch({"prediction_type": "epsilon"}, "v_prediction")
    assert "model.prediction_type = 'v_prediction'" in message and "'epsilon'" in message
    # The fact behind the warning: SD 2.1-base's eps network read as v at t = 999 gives x0 ~ -0.93 z_t.
    alphas_cumprod = make_scheduler().alphas_cumprod
    z_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999])
    perfect_eps = z_t  # at t = 999 z_t is almost pure noise: the ideal eps output is ~z_t
    x0_read_as_v = predict_x0(perfect_eps, z_t, t, alphas_cumprod, "v_prediction")
    assert_close(x0_read_as_v, -0.93 * z_t, rtol=0.01, atol=1e-3)


@pytest.mark.parametrize("timestep", [10, 500, 999])
def test_linear_x0_is_the_wiener_estimator_of_gaussian_channels(timestep: int):
    """On Gaussian channels with known statistics the prior's gate reaches the closed-form minimum MSE
    var sigma^2 / (alpha^2 var + sigma^2), below both returning the mean and inverting the noise scaling."""
    alphas_cumprod = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    generator = torch.Generator().manual_seed(0)
    mean, var = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1), torch.tensor([0.2, 2.0]).view(1, 2, 1, 1)
    z_0 = mean + var.sqrt() * torch.randn(20000, 2, 4, 4, generator=generator, dtype=torch.float64)
    eps = torch.randn(z_0.shape, generator=generator, dtype=torch.float64)
    t = torch.full((z_0.shape[0],), timestep)
    z_t = add_noise(z_0, eps, t, alphas_cumprod.double())
    estimate = linear_x0(z_t, t, alphas_cumprod.double(), mean, var)
    alpha2 = alphas_cumprod[timestep].double()
    expected = (var * (1 - alpha2) / (alpha2 * var + 1 - alpha2)).mean()
    mse = (estimate - z_0).pow(2).mean()
    assert mse == pytest.approx(float(expected), rel=0.03)
    assert mse < (mean - z_0).pow(2).mean() and mse < (z_t / alpha2.sqrt() - z_0).pow(2).mean()
