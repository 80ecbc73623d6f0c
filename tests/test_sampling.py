"""yonos.sampling: the noise helper, the DDIM sampler's starting latent and step hooks, and the one SR function."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from yonos.diffusion import ddim_sample, make_scheduler
from yonos.models import LatentCodec, SRDenoiser
from yonos.sampling import randn, sample_with_noise, sample_with_seeds, seeded_noise, super_resolve


def _fake_network(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * z_t.flip(1) + torch.sin(t.float() / 100.0).view(-1, 1, 1, 1) * torch.tanh(z_t)


def test_per_sample_generators_make_noise_independent_of_the_batch():
    shape = (3, 4, 5, 6)
    batch = seeded_noise(shape, [7, 8, 9], "cpu")
    alone = seeded_noise((1, *shape[1:]), [8], "cpu")

    assert torch.equal(batch[1:2], alone)  # sample 1 depends on its own seed only
    assert torch.equal(batch[0:1], torch.randn((1, *shape[1:]), generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(batch[0], batch[2])
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        randn(shape, [torch.Generator(), torch.Generator()], "cpu")


def test_one_generator_draws_the_whole_shape_on_its_own_device():
    generator = torch.Generator().manual_seed(3)
    noise = randn((2, 4, 3, 3), generator, "cpu", torch.float64)

    assert noise.dtype == torch.float64
    assert torch.equal(noise, torch.randn((2, 4, 3, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64))


def test_ddim_starts_from_the_given_latent_and_the_callback_steers_it():
    scheduler = make_scheduler()
    z_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    steps: list[int] = []

    def callback(step: int, timestep: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        steps.append(step)
        return z_t * 0.5

    plain = ddim_sample(_fake_network, scheduler, z_T, 3)
    steered = ddim_sample(_fake_network, scheduler, z_T, 3, callback=callback)

    assert steps == [0, 1, 2]
    assert not torch.allclose(plain, steered)
    assert torch.equal(ddim_sample(_fake_network, scheduler, z_T.clone(), 3), plain)  # the result depends on z_T only
    assert not torch.equal(ddim_sample(_fake_network, scheduler, z_T + 0.1, 3), plain)


def test_a_progress_wrapper_that_stops_yielding_ends_sampling_early():
    scheduler = make_scheduler()
    z_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    after: list[torch.Tensor] = []

    full = ddim_sample(_fake_network, scheduler, z_T, 4, callback=lambda s, t, z: after.append(z) or z)
    stopped = ddim_sample(_fake_network, scheduler, z_T, 4, progress=lambda timesteps: list(timesteps)[:2])

    assert torch.equal(stopped, after[1]) and not torch.equal(stopped, full)


def test_super_resolve_draws_noise_for_the_latents_the_codec_gives():
    """No latent channel count is assumed: the noise is drawn for the condition latents' shape (3 channels here)."""
    lr = torch.rand(2, 3, 4, 6)
    seen: dict[str, tuple[int, ...]] = {}

    def encode(lr: torch.Tensor, scale: int) -> torch.Tensor:
        return torch.zeros(lr.shape[0], 3, lr.shape[-2] * scale // 2, lr.shape[-1] * scale // 2)

    def noise(z_lr: torch.Tensor) -> torch.Tensor:
        seen["noise"] = tuple(z_lr.shape)
        return seeded_noise(tuple(z_lr.shape), [1, 2], "cpu")

    def decode(z_0: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        seen["size"] = size
        return z_0

    out = super_resolve(lr, 4, encode, lambda z_t, z_lr, t: z_t * 0.0, decode, make_scheduler(), noise)

    assert seen == {"noise": (2, 3, 8, 12), "size": (16, 24)}
    assert out.shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="noise shape"):
        super_resolve(lr, 4, encode, lambda z_t, z_lr, t: z_t, None, make_scheduler(), torch.zeros(2, 4, 8, 12))


def test_seeded_whole_image_sampling_is_sampling_with_that_noise():
    torch.manual_seed(0)
    denoiser, codec = SRDenoiser.from_preset("tiny").eval(), LatentCodec.from_preset("tiny").eval()
    scheduler = make_scheduler()
    lr = torch.rand(2, 3, 10, 12, generator=torch.Generator().manual_seed(1))  # padded: 20 x 24 -> 32 x 32

    out = sample_with_seeds(denoiser, codec, scheduler, lr, 2, [3, 4])
    noise = seeded_noise((2, 4, 4, 4), [3, 4], "cpu")

    assert out.shape == (2, 3, 20, 24)
    assert torch.equal(out, sample_with_noise(denoiser, codec, scheduler, lr, 2, noise))
    assert_close(out[1:], sample_with_seeds(denoiser, codec, scheduler, lr[1:], 2, [4]), rtol=0, atol=1e-5)
