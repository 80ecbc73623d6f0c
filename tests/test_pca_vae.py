"""The block-PCA codec of the tiny base, and residual diffusion (``model.target: residual``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from yonos.diffusion import make_scheduler, predict_x0, residual_input, residual_output_to_absolute
from yonos.models import LatentCodec, SRDenoiser
from yonos.pca_vae import BlockPCAAutoencoder, fit_block_pca


def _images(count: int = 3, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, size // 4, size // 4, generator=generator)
    smooth = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)  # correlated pixels
    return list(smooth * 2 - 1 + 0.02 * torch.randn(count, 3, size, size, generator=generator))


def test_full_rank_basis_reconstructs_exactly_and_is_orthonormal():
    components, mean = fit_block_pca(_images(), patch_size=2, channels=12)
    torch.testing.assert_close(components @ components.T, torch.eye(12), atol=1e-5, rtol=0)
    vae = BlockPCAAutoencoder(latent_channels=12, patch_size=2, refine_layers=2)
    vae.set_basis(components, mean)
    image = _images(1, seed=1)[0][None]
    torch.testing.assert_close(vae(image).sample, image, atol=1e-5, rtol=0)  # zero-init residual: exactly linear


def test_truncated_basis_is_the_best_linear_code_of_its_rank():
    images = _images(4)
    components, mean = fit_block_pca(images, patch_size=4, channels=4)
    vae = BlockPCAAutoencoder(latent_channels=4, refine_layers=0)
    vae.set_basis(components, mean)
    stacked = torch.stack(images)
    pca_error = (vae(stacked).sample - stacked).pow(2).mean()
    random_basis = torch.linalg.qr(torch.randn(48, 4, generator=torch.Generator().manual_seed(0)))[0].T
    vae.set_basis(random_basis, mean)
    assert pca_error < 0.5 * (vae(stacked).sample - stacked).pow(2).mean()


def test_latents_follow_the_encoder_as_a_linear_map_of_blocks():
    components, mean = fit_block_pca(_images(), patch_size=4, channels=8)
    vae = BlockPCAAutoencoder(latent_channels=8)
    vae.set_basis(components, mean)
    image = _images(1, seed=2)[0][None]
    blocks = F.pixel_unshuffle(image, 4) - mean.repeat_interleave(16).view(1, -1, 1, 1)  # (1, 48, h, w)
    expected = torch.einsum("cd,bdhw->bchw", components, blocks)
    torch.testing.assert_close(vae.encode(image).latent_dist.mode(), expected, atol=1e-5, rtol=0)


def test_saved_codec_loads_back_through_latent_codec(tmp_path):
    components, mean = fit_block_pca(_images(), patch_size=4, channels=8)
    vae = BlockPCAAutoencoder(latent_channels=8, scaling_factor=0.7)
    vae.set_basis(components, mean)
    with torch.no_grad():
        vae.decoder.conv_out.weight.normal_()  # a fine-tuned residual must survive the round trip too
    vae.save_pretrained(tmp_path / "vae")
    codec = LatentCodec.from_pretrained(str(tmp_path))
    assert isinstance(codec.vae, BlockPCAAutoencoder) and codec.downsample_factor == 4 and codec.latent_channels == 8
    image = (_images(1)[0][None] + 1) / 2
    torch.testing.assert_close(codec.decode(codec.encode(image)), LatentCodec(vae).decode(LatentCodec(vae).encode(image)))
    assert codec.encode(image).shape == (1, 8, 8, 8)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon", "sample"])
def test_residual_output_reads_as_x0_equal_to_condition_plus_residual(prediction_type):
    scheduler = make_scheduler(None, prediction_type)
    ac = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(0)
    z_t, z_lr, output = (torch.randn(3, 8, 4, 4, generator=generator) for _ in range(3))
    t = torch.tensor([10, 500, 999])
    r_t = residual_input(z_t, z_lr, t, ac)
    x0_residual = predict_x0(output, r_t, t, ac, prediction_type)
    x0 = predict_x0(residual_output_to_absolute(output, z_lr, t, ac, prediction_type), z_t, t, ac, prediction_type)
    torch.testing.assert_close(x0, z_lr + x0_residual, atol=1e-4, rtol=1e-4)


def test_residual_denoiser_with_zero_output_copies_its_condition(make_tiny_unet):
    unet = make_tiny_unet()
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    from yonos.models import widen_conv_in

    denoiser = SRDenoiser(widen_conv_in(unet), torch.zeros(1, 77, unet.config.cross_attention_dim))
    scheduler = make_scheduler(None, "v_prediction")
    z_t, z_lr = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([999, 999])
    alpha = scheduler.alphas_cumprod[999].sqrt()
    x0 = lambda: predict_x0(denoiser(z_t, z_lr, t), z_t, t, scheduler.alphas_cumprod, "v_prediction")  # noqa: E731
    assert denoiser.target == "x0"
    torch.testing.assert_close(x0(), alpha * z_t)  # a zero v gives x0 = alpha_T z_t: nothing of z_lr
    denoiser.use_target("residual", scheduler.alphas_cumprod, "v_prediction")
    assert denoiser.target == "residual"
    torch.testing.assert_close(x0(), z_lr + alpha * (z_t - alpha * z_lr))  # the condition plus alpha_T r_t
