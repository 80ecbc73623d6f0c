"""Real-ESRGAN pipeline: ops, pinned branches, sampling statistics, determinism, multi-scale draws, config."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from yonos.degradations.bicubic import bicubic_downsample
from yonos.degradations.config import DegradationStageConfig, RealESRGANConfig
from yonos.degradations.kernels import SINC, bivariate_gaussian, circular_lowpass_kernel, identity_kernel, pad_kernel
from yonos.degradations.ops import add_gaussian_noise, add_poisson_noise, blur, jpeg, usm_sharpen
from yonos.degradations.realesrgan import (
    RealESRGANParams,
    apply_realesrgan,
    realesrgan_target,
    sample_realesrgan_params,
)

B = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small tensors, one thread


def image(batch: int = B, size: int = 64, seed: int = 0, edges: bool = True) -> torch.Tensor:
    """Smooth coloured waves plus (optionally) hard edges and fine texture, (batch, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    freq = torch.rand(batch, 3, 2, 1, 1, generator=g) * 12 + 2
    phase = torch.rand(batch, 3, 2, 1, 1, generator=g) * 6
    img = 0.5 + 0.25 * torch.sin(freq[:, :, 0] * x + phase[:, :, 0]) * torch.cos(freq[:, :, 1] * y + phase[:, :, 1])
    if edges:
        img = img + 0.2 * ((x > 0.5) ^ (y > 0.3)).float() + 0.2 * torch.rand(batch, 1, size, size, generator=g) - 0.1
    return img.clamp(0, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1 / (a - b).pow(2).mean().item())


def detail(x: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels: drops with blur, rises with noise and sharpening."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()).item()


def gaussian_kernel(sigma: float, n: int = B) -> torch.Tensor:
    s = torch.full((n,), sigma, dtype=torch.float64)
    return bivariate_gaussian(21, s, s, 0 * s).float()


def clean_params(n: int = B) -> RealESRGANParams:
    """A sampled draw pinned to do nothing but the final area resize (and JPEG at quality 100)."""
    params = sample_realesrgan_params(RealESRGANConfig(), n, gen(0))
    quiet = dict(
        kernel=identity_kernel(n),
        resize_scale=torch.ones(n),
        resize_mode=torch.zeros(n, dtype=torch.long),
        gaussian_noise=torch.ones(n, dtype=torch.bool),
        noise_sigma=torch.zeros(n),
        jpeg_quality=torch.full((n,), 100.0),
    )
    return replace(
        params,
        stage1=replace(params.stage1, blur=torch.ones(n, dtype=torch.bool), **quiet),
        stage2=replace(params.stage2, blur=torch.zeros(n, dtype=torch.bool), **quiet),
        sinc_first=torch.ones(n, dtype=torch.bool),
        final_resize_mode=torch.zeros(n, dtype=torch.long),
        sinc_kernel=identity_kernel(n),
        no_degradation=torch.zeros(n, dtype=torch.bool),
        use_usm=False,
    )


def pin(params: RealESRGANParams, stage1: dict | None = None, stage2: dict | None = None, **top) -> RealESRGANParams:
    return replace(
        params, stage1=replace(params.stage1, **(stage1 or {})), stage2=replace(params.stage2, **(stage2 or {})), **top
    )


def lr(hr: torch.Tensor, params: RealESRGANParams, scale: int = 2) -> torch.Tensor:
    return apply_realesrgan(hr, params, (scale,))[scale]


# Ops.


def test_jpeg_quality_100_is_near_identity_and_10_is_lossy():
    # Gray: the 4:2:0 chroma loss, which even quality 100 keeps, stays out.
    smooth = image(2, 64, edges=False).mean(1, keepdim=True).expand(-1, 3, -1, -1)
    assert psnr(jpeg(smooth, torch.tensor([100.0, 100.0])), smooth) > 45
    coded = jpeg(smooth, torch.tensor([100.0, 10.0]))  # one quality per sample
    assert psnr(coded[:1], smooth[:1]) > 45
    assert psnr(coded[1:], smooth[1:]) < 35
    # Sizes that are not multiples of 16 are padded and cropped back by the codec.
    odd = smooth[..., :37, :50]
    out = jpeg(odd, torch.tensor([100.0, 10.0]))
    assert out.shape == odd.shape and psnr(out[:1], odd[:1]) > 45 and psnr(out[1:], odd[1:]) < 35
    assert torch.isfinite(jpeg(image(1, 32), torch.tensor([100.0]))).all()  # zero steps: no division by zero


def test_blur_delta_is_identity_and_tiny_images_are_accepted():
    hr = image(2, 32)
    assert torch.allclose(blur(hr, identity_kernel(2)), hr, atol=1e-6)
    small = torch.rand(2, 7, 7, generator=gen(9))
    padded = F.pad(hr, (3, 3, 3, 3), mode="reflect")
    reference = torch.cat([F.conv2d(padded[i : i + 1], small[i].expand(3, 1, 7, 7), groups=3) for i in range(2)])
    torch.testing.assert_close(blur(hr, pad_kernel(small)), reference)  # padded to 21, cropped back to 7
    tiny = image(2, 4)  # too small to reflect-pad a 21-tap kernel
    assert blur(tiny, gaussian_kernel(1.0, 2)).shape == tiny.shape


def test_gaussian_noise_gray_shares_channels_and_depends_only_on_own_generator():
    flat = torch.full((2, 3, 32, 32), 0.5)
    sigma = torch.tensor([10.0, 10.0])
    out = add_gaussian_noise(flat, sigma, torch.tensor([True, False]), [gen(1), gen(2)])
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 0], out[0, 2])
    assert not torch.equal(out[1, 0], out[1, 1])
    assert abs((out[1] - 0.5).std().item() - 10 / 255) < 0.1 * 10 / 255
    alone = add_gaussian_noise(flat[1:], sigma[1:], torch.tensor([False]), [gen(2)])
    assert torch.equal(alone[0], out[1])


def test_poisson_noise_grows_with_intensity_and_vanishes_at_scale_zero():
    img = torch.cat([torch.full((1, 3, 32, 16), 0.1), torch.full((1, 3, 32, 16), 0.8)], dim=-1)
    img = img + torch.linspace(0, 0.05, 32)[:, None] * torch.ones(1, 3, 1, 1)  # a few dozen 8-bit levels
    noisy = add_poisson_noise(img, torch.tensor([1.0]), torch.tensor([False]), [gen(3)])
    residual = noisy - img
    assert residual[..., 16:].std() > 1.5 * residual[..., :16].std()
    gray = add_poisson_noise(img, torch.tensor([1.0]), torch.tensor([True]), [gen(3)]) - img
    assert torch.allclose(gray[0, 0], gray[0, 1], atol=1e-6)
    assert torch.equal(add_poisson_noise(img, torch.tensor([0.0]), torch.tensor([False]), [gen(3)]), img.clamp(0, 1))


def test_usm_matches_basicsr(import_basicsr):
    hr = image(2, 64)
    expected = import_basicsr("basicsr.utils").USMSharp()(hr)
    torch.testing.assert_close(usm_sharpen(hr), expected, atol=2e-5, rtol=0)


# The pipeline.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_output_shapes_dtype_range_and_8bit_levels(dtype):
    hr = image().to(dtype)
    params = sample_realesrgan_params(RealESRGANConfig.from_preset("realesrgan"), B, gen(1))
    out = apply_realesrgan(hr, params, (1, 2, 4))
    for scale, lr_image in out.items():
        assert lr_image.shape == (B, 3, 64 // scale, 64 // scale) and lr_image.dtype == dtype
        assert lr_image.min() >= 0 and lr_image.max() <= 1
        if dtype != torch.bfloat16:  # bfloat16 cannot hold every k / 255
            levels = lr_image.double() * 255
            assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_same_seed_is_bit_identical_and_different_seeds_differ():
    hr, config = image(), RealESRGANConfig.from_preset("realesrgan")
    first = apply_realesrgan(hr, sample_realesrgan_params(config, B, gen(7)), (2, 4))
    again = apply_realesrgan(hr, sample_realesrgan_params(config, B, gen(7)), (2, 4))
    other = apply_realesrgan(hr, sample_realesrgan_params(config, B, gen(8)), (2, 4))
    for scale in (2, 4):
        assert torch.equal(first[scale], again[scale])
        assert (first[scale] - other[scale]).abs().mean() > 1e-2


def test_samples_get_their_own_resize_and_do_not_depend_on_the_batch():
    config = RealESRGANConfig.from_preset("realesrgan")
    sampled = sample_realesrgan_params(config, 8, gen(4))
    assert len(set(sampled.stage1.resize_scale.tolist())) > 1 and len(set(sampled.stage1.resize_mode.tolist())) > 1
    singles = [sample_realesrgan_params(config, 1, gen(seed)) for seed in range(3)]
    singles[0] = pin(singles[0], stage1=dict(resize_scale=torch.tensor([0.3]), resize_mode=torch.tensor([2])))
    singles[1] = pin(singles[1], stage1=dict(resize_scale=torch.tensor([1.4]), resize_mode=torch.tensor([0])))
    batch = RealESRGANParams.cat(singles)
    hr = image(1).expand(3, -1, -1, -1).contiguous()
    together = lr(hr, batch, 4)
    for i, single in enumerate(singles):
        alone = lr(hr[i : i + 1], single, 4)
        assert (together[i] - alone[0]).abs().max() <= 1 / 255 + 1e-6
        assert (together[i] - alone[0]).abs().mean() < 1e-3
    assert (together[0] - together[1]).abs().mean() > 1e-2


def test_scales_share_stage_one():
    """With stage 2 pinned to do nothing, x2 downsampled to the x4 size matches x4 up to rounding and JPEG: the
    scales share stage 1 (its noise included), while an independent draw lands far away. (Stage 2 acts at each
    scale's own LR resolution, with its own noise, so the full pipeline's x2 and x4 differ more than this.)"""
    config = RealESRGANConfig.from_preset("realesrgan", {"no_degradation_prob": 0.0})
    hr = image().mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()  # gray: 4:2:0 chroma loss stays out
    clean = clean_params()

    def stage1_only(params: RealESRGANParams) -> RealESRGANParams:
        return replace(clean, stage1=params.stage1)

    shared = apply_realesrgan(hr, stage1_only(sample_realesrgan_params(config, B, gen(5))), (2, 4))
    independent = lr(hr, stage1_only(sample_realesrgan_params(config, B, gen(6))), 4)
    down = F.interpolate(shared[2], scale_factor=0.5, mode="area")
    assert (down - shared[4]).abs().mean() < 2.5 / 255
    assert (down - independent).abs().mean() > 2.5 * (down - shared[4]).abs().mean()


def test_clean_params_give_the_area_downsample():
    hr = image(edges=False).mean(1, keepdim=True).expand(-1, 3, -1, -1)  # gray: quality 100 keeps the 4:2:0 loss
    assert psnr(lr(hr, clean_params(), 2), F.interpolate(hr, scale_factor=0.5, mode="area")) > 35


def test_pinned_branches_have_their_effect():
    hr, clean = image(), clean_params()
    base, on, off = lr(hr, clean), torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    strong = gaussian_kernel(3.0)
    assert detail(lr(hr, pin(clean, stage1=dict(kernel=strong)))) < 0.6 * detail(base)
    assert torch.equal(lr(hr, pin(clean, stage2=dict(kernel=strong))), base)  # stage-2 blur flag is off
    assert detail(lr(hr, pin(clean, stage2=dict(kernel=strong, blur=on)))) < 0.6 * detail(base)
    sinc = pad_kernel(circular_lowpass_kernel(21, torch.full((B,), math.pi / 3, dtype=torch.float64))).float()
    assert detail(lr(hr, pin(clean, sinc_kernel=sinc))) < 0.7 * detail(base)
    assert detail(lr(hr, pin(clean, use_usm=True))) > 1.15 * detail(base)
    # Resizes: down loses detail; modes differ; stage 2 resizes relative to the LR size and comes back to it.
    assert detail(lr(hr, pin(clean, stage1=dict(resize_scale=torch.full((B,), 0.2))))) < 0.6 * detail(base)
    assert detail(lr(hr, pin(clean, stage2=dict(resize_scale=torch.full((B,), 0.5))))) < 0.8 * detail(base)
    half = torch.full((B,), 0.5)
    area = lr(hr, pin(clean, stage1=dict(resize_scale=half)))
    bicubic = lr(hr, pin(clean, stage1=dict(resize_scale=half, resize_mode=torch.full((B,), 2))))
    assert (area - bicubic).abs().mean() > 1 / 255
    up = dict(resize_scale=torch.full((B,), 1.2))
    assert lr(hr, pin(clean, stage1=up, stage2=up)).shape == base.shape
    # JPEG, and the two orders of the final step.
    low_quality = dict(jpeg_quality=torch.full((B,), 10.0))
    assert psnr(lr(hr, pin(clean, stage2=low_quality)), base) < 30
    assert psnr(lr(hr, pin(clean, stage1=low_quality)), base) < 35
    sinc_then_jpeg = lr(hr, pin(clean, sinc_kernel=sinc, stage2=low_quality))
    jpeg_then_sinc = lr(hr, pin(clean, sinc_kernel=sinc, sinc_first=off, stage2=low_quality))
    assert (sinc_then_jpeg - jpeg_then_sinc).abs().mean() > 2 / 255


def test_pinned_noise_branches():
    flat = torch.full((B, 3, 64, 64), 0.5)
    clean, on = clean_params(), torch.ones(B, dtype=torch.bool)
    sigma = torch.full((B,), 20.0)
    gray = lr(flat, pin(clean, stage2=dict(noise_sigma=sigma, gray_noise=on))) - 0.5
    color = lr(flat, pin(clean, stage2=dict(noise_sigma=sigma, gray_noise=~on))) - 0.5
    assert abs(gray.std().item() - 20 / 255) < 0.2 * 20 / 255
    # Colour noise keeps some correlation: the 4:2:0 JPEG averages its chroma.
    correlation = lambda r: torch.corrcoef(r.transpose(0, 1).reshape(3, -1))[0, 1].item()  # noqa: E731
    assert correlation(gray) > 0.99 and correlation(color) < 0.95
    ramp = image(edges=False)
    poisson = pin(clean, stage2=dict(gaussian_noise=~on, poisson_scale=torch.full((B,), 2.0)))
    assert (lr(ramp, poisson) - lr(ramp, clean)).std() > 10 / 255
    stage1_noise = lr(flat, pin(clean, stage1=dict(noise_sigma=sigma, gray_noise=on))) - 0.5
    assert 5 / 255 < stage1_noise.std() < 15 / 255  # halved by the final x2 area resize


def test_no_degradation_gives_the_bicubic_downsample_of_the_target():
    """StableSR's ``lq = gt``: the sharpened HR with the USM target (the default), the plain HR without it."""
    hr = image()
    params = sample_realesrgan_params(RealESRGANConfig(), B, gen(2))
    flags = torch.tensor([True, False, True, False])
    out = apply_realesrgan(hr, pin(params, no_degradation=flags), (2, 4))
    plain = apply_realesrgan(hr, pin(params, no_degradation=~torch.ones(B, dtype=torch.bool)), (2, 4))
    plain_target = apply_realesrgan(hr, pin(params, no_degradation=flags, usm_target=False), (2,))
    assert params.use_usm and params.usm_target
    for scale in (2, 4):
        assert torch.equal(out[scale][flags], bicubic_downsample(usm_sharpen(hr[flags]), scale))
        assert torch.equal(out[scale][~flags], plain[scale][~flags])
    assert torch.equal(plain_target[2][flags], bicubic_downsample(hr[flags], 2))
    assert not torch.equal(plain_target[2][flags], out[2][flags])


def test_training_target_is_the_sharpened_hr_unless_turned_off():
    hr = image(2)
    assert torch.equal(realesrgan_target(hr, RealESRGANConfig()), usm_sharpen(hr))
    assert torch.equal(realesrgan_target(hr, RealESRGANConfig(usm_target=False)), hr)
    assert torch.equal(realesrgan_target(hr, RealESRGANConfig(use_usm=False)), hr)  # nothing sharpened at all
    assert RealESRGANConfig.from_preset("realesrgan").usm_target and RealESRGANConfig.from_preset("stablesr").usm_target


def test_sampled_params_follow_configured_probabilities_and_ranges():
    config = RealESRGANConfig.from_preset("realesrgan", {"no_degradation_prob": 0.2})
    n = 10000
    params = sample_realesrgan_params(config, n, gen(11))

    def near(flags: torch.Tensor, p: float) -> bool:
        return abs(flags.double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-9

    for stage, cfg in ((params.stage1, config.stage1), (params.stage2, config.stage2)):
        scale = stage.resize_scale
        for flags, p in zip((scale > 1, scale < 1, scale == 1), cfg.resize_prob, strict=True):
            assert near(flags, p)
        assert cfg.resize_range[0] <= scale.min() and scale.max() <= cfg.resize_range[1]
        assert all(near(stage.resize_mode == mode, 1 / 3) for mode in range(3))
        assert near(stage.gaussian_noise, cfg.gaussian_noise_prob) and near(stage.gray_noise, cfg.gray_noise_prob)
        uniforms = [
            (stage.noise_sigma, cfg.noise_range),
            (stage.poisson_scale, cfg.poisson_scale_range),
            (stage.jpeg_quality, cfg.jpeg_range),
        ]
        for values, (low, high) in uniforms:
            assert low <= values.min() and values.max() <= high
            assert abs(values.mean().item() - (low + high) / 2) < 0.02 * (high - low)
        assert near(stage.kernel_type == SINC, cfg.sinc_prob)
    assert params.stage1.blur.all() and near(params.stage2.blur, config.stage2.second_blur_prob)
    assert near(params.sinc_first, 0.5) and near(params.no_degradation, 0.2)
    assert near(params.sinc_kernel[:, 10, 10] < 1, config.final_sinc_prob)
    assert len(set(params.noise_seed.tolist())) == n


# Config.


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stage1": {"blur_sigma": [3.0, 0.2]}}, "degradation.stage1.blur_sigma: low 3.0 > high 0.2"),
        ({"stage2": {"jpeg_range": [95, 30]}}, "degradation.stage2.jpeg_range: low 95 > high 30"),
        ({"stage2": {"jpeg_range": [30, 101]}}, "degradation.stage2.jpeg_range"),
        ({"stage1": {"resize_range": [1.2, 1.5]}}, "degradation.stage1.resize_range"),
        ({"stage1": {"betag_range": [0.0, 4.0]}}, "degradation.stage1.betag_range"),
        ({"stage2": {"second_blur_prob": 1.5}}, "degradation.stage2.second_blur_prob: probability 1.5"),
        ({"stage1": {"gray_noise_prob": -0.1}}, "degradation.stage1.gray_noise_prob"),
        ({"stage1": {"sinc_prob": 2}}, "degradation.stage1.sinc_prob"),
        ({"final_sinc_prob": 1.1}, "degradation.final_sinc_prob"),
        ({"no_degradation_prob": -1}, "degradation.no_degradation_prob"),
        ({"stage1": {"kernel_prob": [0.5, 0.25, 0.12, 0.03, 0.12, 0.03]}}, "degradation.stage1.kernel_prob: prob"),
        ({"stage1": {"kernel_prob": [0.5, 0.5]}}, "degradation.stage1.kernel_prob: 2 probabilities for 6"),
        ({"stage2": {"resize_prob": [0.5, 0.5, 0.5]}}, "degradation.stage2.resize_prob: probabilities sum to"),
        ({"stage2": {"resize_prob": [0.5, 0.5]}}, "degradation.stage2.resize_prob: expected 3"),
        ({"stage1": {"kernel_size_range": [8, 21]}}, "degradation.stage1.kernel_size_range: kernel size 8 must be odd"),
        ({"stage2": {"kernel_size_range": [7, 23]}}, "degradation.stage2.kernel_size_range: kernel size 23 must be"),
        ({"stage1": {"kernel_size_range": [1, 21]}}, "degradation.stage1.kernel_size_range: kernel size 1 must be"),
        ({"stage1": {"kernel_size_range": [21, 7]}}, "degradation.stage1.kernel_size_range: low 21 > high 7"),
        (
            {"stage1": {"kernel_list": ["iso", "box"], "kernel_prob": [0.5, 0.5]}},
            "degradation.stage1.kernel_list: unknown kernel type 'box'",
        ),
        ({"stage1": {"sigma": 1.0}}, "degradation.stage1.sigma: unknown key"),
        ({"resize": 1.0}, "degradation.resize: unknown key"),
    ],
)
def test_invalid_config_names_the_yaml_key(overrides, message):
    with pytest.raises(ValueError) as error:
        RealESRGANConfig.from_preset("stablesr", overrides)
    assert message in str(error.value)


def test_stage_dataclasses_validate_on_construction():
    with pytest.raises(ValueError, match=r"degradation\.stage1\.blur_sigma: low 3.0 > high 0.2"):
        DegradationStageConfig(blur_sigma=(3.0, 0.2))
    with pytest.raises(ValueError, match=r"degradation\.preset: unknown preset 'bsrgan'"):
        RealESRGANConfig.from_preset("bsrgan")


def test_presets_load_by_name_and_overrides_apply():
    assert RealESRGANConfig.from_preset("stablesr") == RealESRGANConfig()
    real = RealESRGANConfig.from_preset("realesrgan")
    assert real.stage1.blur_sigma == (0.2, 3.0) and real.stage1.resize_range == (0.15, 1.5)
    assert real.stage1.jpeg_range == (30.0, 95.0) and real.stage2.second_blur_prob == 0.8
    assert real.stage2.kernel_size_range == (7, 21) and real.no_degradation_prob == 0.0
    stable = RealESRGANConfig()
    assert stable.stage2.kernel_size_range == (7, 11) and stable.stage2.jpeg_range == (60.0, 100.0)
    assert stable.stage2.noise_range == (1.0, 12.0) and stable.no_degradation_prob == 0.01
    custom = RealESRGANConfig.from_preset("realesrgan", {"use_usm": False, "stage2": {"jpeg_range": [50, 90]}})
    assert custom.use_usm is False and custom.stage2.jpeg_range == (50, 90)
    assert custom.stage2.noise_range == real.stage2.noise_range and custom.stage1 == real.stage1


def test_config_parses_as_a_jsonargparse_type():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--degradation", type=RealESRGANConfig, default=RealESRGANConfig())
    parsed = parser.instantiate(parser.parse_object({"degradation": {"stage2": {"jpeg_range": [70, 100]}}}))
    assert parsed.degradation.stage2.jpeg_range == (70, 100)
    assert parsed.degradation.stage2.kernel_size_range == (7, 11)  # the rest keeps the StableSR defaults
