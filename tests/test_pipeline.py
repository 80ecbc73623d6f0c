"""YonosSRPipeline: parity with the modules' sampling path, save / load, tiling, sizes, colour fix, precision."""

from __future__ import annotations

import copy
import importlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from PIL import Image

from yonos.colorfix import COLOR_FIX_MODES, adain_color_fix, apply_color_fix, wavelet_color_fix, wavelet_decompose
from yonos.diffusion import make_scheduler
from yonos.models import LatentCodec, SRDenoiser
from yonos.pipeline import NonFiniteOutputError, YonosSRPipeline
from yonos.sampling import sample_with_noise, sample_with_seeds
from yonos.tiling import tiled_map


def tiny_pipeline(scale: int = 2, prediction_type: str = "v_prediction", zero_snr: bool = False) -> YonosSRPipeline:
    torch.manual_seed(0)
    denoiser, codec = SRDenoiser.from_preset("tiny"), LatentCodec.from_preset("tiny")
    with torch.no_grad():  # a non-zero prompt embedding, so that losing it on save / load would show
        denoiser.prompt_embeds.normal_(generator=torch.Generator().manual_seed(9))
    scheduler = make_scheduler(None, prediction_type, zero_snr)
    return YonosSRPipeline.from_models(denoiser.eval(), codec.eval(), scheduler, scale)


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / F.mse_loss(a, b).item())


def lr_batch(batch: int = 1, height: int = 32, width: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipe() -> YonosSRPipeline:
    return tiny_pipeline()


@pytest.fixture(scope="module")
def saved(pipe: YonosSRPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    pipe.save_pretrained(folder)
    return folder


# Parity with the modules' sampling path (yonos.sampling, used by TeacherModule.sample).


@pytest.mark.parametrize(
    ("prediction_type", "zero_snr"), [("v_prediction", False), ("epsilon", False), ("v_prediction", True)]
)
def test_one_step_equals_the_modules_x0_path(prediction_type: str, zero_snr: bool):
    pipe = tiny_pipeline(prediction_type=prediction_type, zero_snr=zero_snr)
    lr = lr_batch(batch=2)

    out = pipe(lr, generator=seeded(3, 5), tile_size=None, output_type="pt").images

    expected = sample_with_seeds(pipe.denoiser, pipe.codec, pipe.scheduler, lr, 2, seeds=[3, 5], num_steps=1)
    assert out.shape == (2, 3, 64, 64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_several_steps_equal_super_resolve_with_the_same_noise(pipe: YonosSRPipeline):
    lr = lr_batch()
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(7))

    out = pipe(lr, num_inference_steps=3, generator=seeded(7), tile_size=None, output_type="pt").images

    expected = sample_with_noise(pipe.denoiser, pipe.codec, pipe.scheduler, lr, 2, noise, num_steps=3)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


# Saving and loading.


def test_save_load_round_trip_is_identical(pipe: YonosSRPipeline, saved: Path):
    loaded = YonosSRPipeline.from_pretrained(saved)
    lr = lr_batch()

    expected = pipe(lr, generator=seeded(2), output_type="pt").images
    assert torch.equal(loaded(lr, generator=seeded(2), output_type="pt").images, expected)  # same seed, same image
    assert not torch.equal(loaded(lr, generator=seeded(3), output_type="pt").images, expected)
    assert torch.equal(loaded.prompt_embedding.prompt_embeds, pipe.prompt_embedding.prompt_embeds)
    weights = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.suffix in (".safetensors", ".bin"))
    assert weights == [
        f"{name}/diffusion_pytorch_model.safetensors" for name in ("prompt_embedding", "unet", "vae")
    ]


def test_saved_scheduler_and_config_hold_the_parameterisation(tmp_path: Path):
    tiny_pipeline(scale=4, prediction_type="v_prediction", zero_snr=True).save_pretrained(tmp_path)
    scheduler = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    loaded = YonosSRPipeline.from_pretrained(tmp_path)

    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"] is True
    assert scheduler["timestep_spacing"] == "trailing"
    assert loaded.config.scale == 4
    reference = make_scheduler(None, "v_prediction", True)
    torch.testing.assert_close(loaded.scheduler.alphas_cumprod, reference.alphas_cumprod, rtol=0, atol=0)


def test_model_index_points_at_importable_classes(saved: Path):
    index = json.loads((saved / "model_index.json").read_text())
    for name in ("unet", "vae", "scheduler", "prompt_embedding"):
        library, class_name = index[name]
        assert hasattr(importlib.import_module(library), class_name), (name, library, class_name)
    assert index["_class_name"] == "YonosSRPipeline"
    assert not list(saved.glob("*.py")), "the folder must hold no code to run"


def test_plain_diffusion_pipeline_loads_the_folder_without_remote_code(pipe: YonosSRPipeline, saved: Path):
    import diffusers

    import yonos

    assert diffusers.YonosSRPipeline is YonosSRPipeline is yonos.YonosSRPipeline  # registered on import

    loaded = DiffusionPipeline.from_pretrained(saved)  # no trust_remote_code, no custom_pipeline

    assert type(loaded) is YonosSRPipeline
    lr = lr_batch()
    expected = pipe(lr, generator=seeded(4), output_type="pt").images
    assert torch.equal(loaded(lr, generator=seeded(4), output_type="pt").images, expected)


# Sizes, input and output types.


@pytest.mark.parametrize(("scale", "tile_size"), [(2, None), (3, 64)])
def test_odd_sizes_come_back_at_exactly_scale_times_the_size(pipe: YonosSRPipeline, scale: int, tile_size: int | None):
    lr = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8))

    out = pipe(lr, scale=scale, generator=seeded(0), tile_size=tile_size, tile_overlap=16).images

    assert len(out) == 1 and out[0].size == (53 * scale, 37 * scale) and out[0].mode == "RGB"


def test_output_types_and_mixed_size_lists(pipe: YonosSRPipeline):
    images = [lr_batch(height=16, width=24)[0], lr_batch(height=32, width=16)[0]]

    mixed = pipe(images, generator=seeded(0, 1), output_type="pt").images
    as_np = pipe(images[1], generator=seeded(1), output_type="np").images

    assert [tuple(image.shape) for image in mixed] == [(3, 32, 48), (3, 64, 32)]
    assert as_np.shape == (1, 64, 32, 3) and as_np.dtype == np.float32 and 0 <= as_np.min() <= as_np.max() <= 1
    # Image i's noise comes from generator i only: alone or second in a list, the same result.
    torch.testing.assert_close(torch.from_numpy(as_np[0]).permute(2, 0, 1), mixed[1], rtol=0, atol=0)


def test_rgba_tensors_are_refused_with_a_hint(pipe: YonosSRPipeline):
    with pytest.raises(ValueError, match="alpha"):
        pipe(torch.rand(1, 4, 16, 16))


# Tiling.


def test_tiled_map_fast_path_and_exact_stitching():
    x = torch.rand(1, 3, 100, 76, generator=torch.Generator().manual_seed(0))
    calls = []

    def identity(tile: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(tile.shape[-2:]))
        return tile

    assert tiled_map(identity, x, 128, 32) is x and calls == [(100, 76)]  # fits: one call, no blending
    torch.testing.assert_close(tiled_map(identity, x, 32, 8), x, rtol=0, atol=1e-6)
    # Tiles whose outputs are 8x smaller (an encoder) or 8x larger (a decoder) land on whole output pixels.
    x8 = torch.rand(1, 3, 96, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(tiled_map(lambda t: F.avg_pool2d(t, 8), x8, 32, 16, align=8), F.avg_pool2d(x8, 8))
    z = torch.rand(1, 4, 12, 8, generator=torch.Generator().manual_seed(2))
    upsample = lambda t: F.interpolate(t, scale_factor=8)
    torch.testing.assert_close(tiled_map(upsample, z, 4, 2), upsample(z))


def test_tiled_map_hides_border_errors_of_a_local_network():
    x = torch.rand(1, 3, 100, 76, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(3, 3, 3, 3, generator=torch.Generator().manual_seed(1)) / 9
    conv = lambda t: torch.sigmoid(F.conv2d(t, weight, padding=1))  # zero padding: wrong at tile borders

    assert psnr(tiled_map(conv, x, 32, 8), conv(x)) > 50  # Gaussian weights hand over inside the overlap
    assert psnr(tiled_map(conv, x, 32, 0), conv(x)) < 40  # without overlap the borders show


def test_tiled_pipeline_agrees_with_untiled_for_local_networks(pipe: YonosSRPipeline, monkeypatch: pytest.MonkeyPatch):
    """Tiled and untiled agree where the networks are local. Random tiny networks are not: their GroupNorms
    normalise by the statistics of whatever they see (a tile or the whole image), the VAE's mid-block and the
    UNet's attention mix all positions, and their receptive fields (about 100 output pixels for the tiny VAE, more
    for the UNet) exceed these tiles; measured on 64-128 px outputs, tiled vs untiled is 14-19 dB for them (see
    benchmarks/inference.py). Trained SD weights are far more local; this test checks the pipeline's own part of
    tiling (tile geometry across encode / UNet / decode, shared noise, blending, padding, crop) with local
    stand-ins of the same interfaces."""
    g = torch.Generator().manual_seed(2)
    w_enc, w_unet = torch.randn(4, 3, 1, 1, generator=g), torch.randn(4, 8, 3, 3, generator=g) / 8
    w_dec = torch.randn(3, 4, 3, 3, generator=g) / 6

    def encode(self: LatentCodec, image: torch.Tensor, **_: object) -> torch.Tensor:
        return F.conv2d(F.avg_pool2d(image * 2 - 1, 8), w_enc)  # each latent pixel sees its own 8 x 8 cell only

    def decode(self: LatentCodec, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.conv2d(F.interpolate(z, scale_factor=8), w_dec, padding=1))

    def forward(self: SRDenoiser, z_t: torch.Tensor, z_lr: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(F.conv2d(torch.cat([z_t, z_lr], 1), w_unet, padding=1))

    monkeypatch.setattr(LatentCodec, "encode", encode)
    monkeypatch.setattr(LatentCodec, "decode", decode)
    monkeypatch.setattr(SRDenoiser, "forward", forward)
    lr = lr_batch(height=48, width=40, seed=3)

    untiled = pipe(lr, generator=seeded(0), tile_size=None, output_type="pt").images
    tiled = pipe(lr, generator=seeded(0), tile_size=48, tile_overlap=32, output_type="pt").images

    assert untiled.std() > 0.05  # a structured image, not a flat one that any stitching would match
    assert psnr(tiled, untiled) >= 40


# Colour fix.


@pytest.mark.parametrize("mode", COLOR_FIX_MODES)
def test_every_colour_fix_keeps_shape_and_range(mode: str):
    g = torch.Generator().manual_seed(0)
    sr, reference = torch.rand(2, 4, 32, 40, generator=g), torch.rand(2, 3, 32, 40, generator=g) * 0.5 + 0.5

    fixed = apply_color_fix(sr, reference, mode)

    assert fixed.shape == sr.shape and 0 <= fixed.min() and fixed.max() <= 1
    assert torch.equal(fixed[:, 3], sr[:, 3])  # alpha passes through untouched


def test_adain_matches_the_reference_channel_statistics():
    g = torch.Generator().manual_seed(0)
    sr = torch.rand(1, 3, 48, 48, generator=g)
    reference = torch.rand(1, 3, 48, 48, generator=g) * torch.tensor([0.2, 0.3, 0.1])[:, None, None] + 0.4

    fixed = adain_color_fix(sr, reference)

    torch.testing.assert_close(fixed.mean((2, 3)), reference.mean((2, 3)), rtol=0, atol=1e-4)
    torch.testing.assert_close(fixed.std((2, 3)), reference.std((2, 3)), rtol=1e-3, atol=1e-4)


def test_wavelet_keeps_the_reference_low_frequencies_and_the_sr_detail():
    g = torch.Generator().manual_seed(0)
    reference = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(64, 64), mode="bicubic").clamp(0.2, 0.8)
    detail = 0.05 * torch.randn(1, 3, 64, 64, generator=g)
    cast = torch.tensor([0.1, -0.05, 0.08])[:, None, None]  # a colour shift of the kind SR models add

    fixed = wavelet_color_fix(reference + detail + cast, reference)

    detail_high, _ = wavelet_decompose(detail)
    torch.testing.assert_close(fixed, reference + detail_high, rtol=0, atol=1e-5)  # the cast is gone, detail kept
    _, low = wavelet_decompose(fixed)
    _, reference_low = wavelet_decompose(reference)
    assert (low - reference_low).abs().max() < 0.01


def test_pipeline_applies_the_colour_fix_against_the_bicubic_lr(pipe: YonosSRPipeline):
    lr = lr_batch()
    plain = pipe(lr, generator=seeded(0), output_type="pt").images
    fixed = pipe(lr, generator=seeded(0), color_fix="adain", output_type="pt")

    reference = F.interpolate(lr, size=(64, 64), mode="bicubic").clamp(0, 1)
    torch.testing.assert_close(fixed.images, adain_color_fix(plain, reference), rtol=0, atol=1e-6)
    assert fixed.metadata["yonos:color_fix"] == "adain"


# Precision and non-finite outputs.


def test_low_precision_pipeline_computes_the_vae_in_float32_without_changing_it(saved: Path):
    pipe = YonosSRPipeline.from_pretrained(saved).to(dtype=torch.bfloat16)  # casts everything, the VAE too
    lr = lr_batch(height=16, width=16)
    vae_weights = {name: p.clone() for name, p in pipe.vae.state_dict().items()}

    result = pipe(lr, generator=seeded(0), output_type="pt")

    # The VAE module is left as the caller set it (diffusers' pipelines do not mutate components on call) ...
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert all(torch.equal(p, vae_weights[name]) for name, p in pipe.vae.state_dict().items())
    # ... and still computes in float32 for the call: the same pixels as a float32 VAE holding the bf16 weights.
    assert result.metadata["yonos:unet_dtype"] == "bfloat16" and result.metadata["yonos:vae_dtype"] == "float32"
    upcast = YonosSRPipeline(**{**pipe.components, "vae": copy.deepcopy(pipe.vae).float()})
    torch.testing.assert_close(upcast(lr, generator=seeded(0), output_type="pt").images, result.images, rtol=0, atol=0)
    bf16_vae = pipe(lr, generator=seeded(0), output_type="pt", vae_dtype=torch.bfloat16)
    assert bf16_vae.metadata["yonos:vae_dtype"] == "bfloat16" and not torch.equal(bf16_vae.images, result.images)
    reference = YonosSRPipeline.from_pretrained(saved)(lr, generator=seeded(0), output_type="pt").images
    assert torch.isfinite(result.images).all() and psnr(result.images, reference) > 25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("unet_dtype", "min_psnr"), [(torch.float32, 40), (torch.bfloat16, 25)])
def test_cuda_output_matches_cpu_with_the_same_generator(unet_dtype: torch.dtype, min_psnr: float):
    lr = lr_batch(batch=2, height=40, width=24)  # tiled: 80 x 48 output in 32 px tiles
    expected = tiny_pipeline()(lr, generator=seeded(3, 5), tile_size=32, tile_overlap=8, output_type="pt").images
    cuda = tiny_pipeline().to("cuda")
    cuda.unet.to(dtype=unet_dtype)

    out = cuda(lr.cuda(), generator=seeded(3, 5), tile_size=32, tile_overlap=8, output_type="pt")

    assert out.images.device.type == "cuda" and out.images.shape == expected.shape  # CPU generators: same noise
    assert out.metadata["yonos:vae_dtype"] == "float32" and psnr(out.images.cpu(), expected) > min_psnr


def test_nan_from_the_decoder_is_an_error_naming_the_image(pipe: YonosSRPipeline, monkeypatch: pytest.MonkeyPatch):
    def second_image_nan(self: LatentCodec, z: torch.Tensor) -> torch.Tensor:
        images = torch.full((z.shape[0], 3, 64, 64), 0.5)
        images[1] = float("nan")
        return images

    monkeypatch.setattr(LatentCodec, "decode", second_image_nan)

    with pytest.raises(NonFiniteOutputError, match="^image 1: the VAE decoder"):  # batched together, named apart
        pipe([lr_batch()[0], lr_batch()[0]], generator=seeded(0, 1), tile_size=None)
