"""diffusers' pipeline conventions, checked on YonosSRPipeline with tiny components.

Written against the documented behaviour of diffusers' common pipeline tests (``PipelineTesterMixin``,
``PipelineLatentTesterMixin``): input formats, output types, the return tuple, components, batching, latents,
several images per input, step callbacks, interrupt, the progress bar, CPU offload (which the mixins run on
accelerators only; here on the CPU through accelerate) and swapping in another SD-latent autoencoder.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image

from yonos.diffusion import make_scheduler
from yonos.models import LatentCodec, SRDenoiser
from yonos.pipeline import YonosSRPipeline
from yonos.sampling import sample_with_seeds


def tiny_pipeline(scale: int = 2) -> YonosSRPipeline:
    torch.manual_seed(0)
    denoiser, codec = SRDenoiser.from_preset("tiny"), LatentCodec.from_preset("tiny")
    with torch.no_grad():
        denoiser.prompt_embeds.normal_(generator=torch.Generator().manual_seed(9))
    pipe = YonosSRPipeline.from_models(denoiser.eval(), codec.eval(), make_scheduler(None), scale)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def lr_batch(batch: int = 1, height: int = 16, width: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / max(F.mse_loss(a, b).item(), 1e-20))


@pytest.fixture(scope="module")
def pipe() -> YonosSRPipeline:
    return tiny_pipeline()


def run(pipe: YonosSRPipeline, image, seed: int = 0, **kwargs) -> torch.Tensor:
    kwargs.setdefault("output_type", "pt")
    return pipe(image, generator=torch.Generator().manual_seed(seed), tile_size=None, **kwargs).images


# Inputs: what PipelineImageInput holds, with VaeImageProcessor's value conventions.


def test_numpy_uint8_pil_and_minus_one_one_inputs_give_the_same_image(pipe: YonosSRPipeline):
    levels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    unit = torch.from_numpy(levels).permute(2, 0, 1).float() / 255  # (3, h, w) in [0, 1]
    expected = run(pipe, unit)

    inputs = {
        "PIL": Image.fromarray(levels),
        "numpy uint8 (h, w, 3)": levels,
        "numpy float (h, w, 3)": levels.astype(np.float32) / 255,
        "numpy float (1, h, w, 3)": levels[None].astype(np.float32) / 255,
        "tensor uint8": torch.from_numpy(levels).permute(2, 0, 1).contiguous(),
        "tensor in [-1, 1]": unit * 2 - 1,
    }
    for name, image in inputs.items():
        torch.testing.assert_close(run(pipe, image), expected, rtol=0, atol=1e-5, msg=name)
    as_list = run(pipe, [levels, levels], output_type="np")  # a list of arrays: a batch
    assert as_list.shape == (2, 32, 32, 3)


def test_out_of_range_and_alpha_inputs_are_refused_clearly(pipe: YonosSRPipeline):
    with pytest.raises(ValueError, match="divide 0-255 data by 255"):
        pipe(np.full((8, 8, 3), 200.0, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        pipe(torch.full((3, 8, 8), -3.0))
    with pytest.raises(ValueError, match="alpha"):
        pipe(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(TypeError, match="PIL image, a numpy array or a tensor"):
        pipe("photo.png")


# Outputs.


def test_pt_np_pil_outputs_agree_and_return_dict_false_is_a_one_tuple(pipe: YonosSRPipeline):
    lr = lr_batch()
    as_pt, as_np = run(pipe, lr), run(pipe, lr, output_type="np")
    result = pipe(lr, generator=torch.Generator().manual_seed(0), tile_size=None)
    as_tuple = pipe(lr, generator=torch.Generator().manual_seed(0), tile_size=None, return_dict=False)

    assert isinstance(result, ImagePipelineOutput) and result.metadata["yonos:scale"] == "2"
    torch.testing.assert_close(torch.from_numpy(as_np).permute(0, 3, 1, 2), as_pt, rtol=0, atol=0)
    pil = np.asarray(result.images[0]).astype(np.float32) / 255
    assert np.abs(pil - as_np[0]).max() <= 0.5 / 255 + 1e-6
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1
    assert np.array_equal(np.asarray(as_tuple[0][0]), np.asarray(result.images[0]))
    assert np.array_equal(np.asarray(result[0][0]), np.asarray(result.images[0]))  # output[0] is images


def test_latent_output_decodes_to_the_image(pipe: YonosSRPipeline):
    lr = lr_batch(height=12, width=20)  # 24 x 40 output, padded to 32 x 48 (multiple 16)

    latents = run(pipe, lr, output_type="latent")
    image = run(pipe, lr)

    assert latents.shape == (1, 4, 4, 6)
    torch.testing.assert_close(pipe.codec.decode(latents)[..., :24, :40], image, rtol=0, atol=1e-6)


def test_call_signature_has_the_generic_arguments(pipe: YonosSRPipeline):
    names = set(inspect.signature(pipe.__call__).parameters)
    generic = {"image", "num_inference_steps", "generator", "latents", "output_type", "return_dict",
               "num_images_per_prompt", "callback_on_step_end", "callback_on_step_end_tensor_inputs"}
    assert generic <= names


# Components, batching, noise.


def test_components_round_trip_keeps_the_scale():
    pipe = tiny_pipeline(scale=3)
    again = YonosSRPipeline(**pipe.components)
    again.set_progress_bar_config(disable=True)

    assert again.config.scale == 3
    torch.testing.assert_close(run(again, lr_batch()), run(pipe, lr_batch()), rtol=0, atol=0)
    assert run(again, lr_batch()).shape[-1] == 48


def test_same_size_list_is_batched_and_matches_single_calls(pipe: YonosSRPipeline, monkeypatch: pytest.MonkeyPatch):
    images = [lr_batch(seed=s)[0] for s in range(5)]
    singles = [pipe(image, generator=seeded(s), tile_size=None, output_type="pt").images[0] for s, image in enumerate(images)]
    calls = []
    real_forward = type(pipe.unet).forward
    monkeypatch.setattr(type(pipe.unet), "forward", lambda self, x, *a, **k: calls.append(len(x)) or real_forward(self, x, *a, **k))

    batched = pipe(images, generator=seeded(*range(5)), tile_size=None, output_type="pt").images
    assert calls == [5]  # one UNet call for the five images
    calls.clear()
    chunked = pipe(images, generator=seeded(*range(5)), tile_size=None, output_type="pt", batch_size=2).images
    assert calls == [2, 2, 1]

    for index, single in enumerate(singles):
        torch.testing.assert_close(batched[index], single, rtol=0, atol=1e-5)
        torch.testing.assert_close(chunked[index], single, rtol=0, atol=1e-5)


def test_latents_argument_is_the_starting_noise(pipe: YonosSRPipeline):
    lr = lr_batch()
    noise = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))

    from_latents = pipe(lr, latents=noise, tile_size=None, output_type="pt").images

    torch.testing.assert_close(from_latents, run(pipe, lr, seed=5), rtol=0, atol=0)
    assert not torch.equal(pipe(lr, latents=-noise, tile_size=None, output_type="pt").images, from_latents)
    with pytest.raises(ValueError, match="latents of shape"):
        pipe(lr, latents=torch.randn(1, 4, 8, 8))


def test_num_images_per_prompt_gives_different_samples_in_order(pipe: YonosSRPipeline):
    lr = lr_batch(batch=2)

    out = pipe(lr, num_images_per_prompt=3, generator=seeded(*range(6)), tile_size=None, output_type="pt").images

    assert out.shape == (6, 3, 32, 32)
    assert not torch.equal(out[0], out[1])  # several samples of one input differ
    for j in range(6):  # sample j of input j // 3, from generator j alone
        alone = pipe(lr[j // 3], generator=seeded(j), tile_size=None, output_type="pt").images[0]
        torch.testing.assert_close(out[j], alone, rtol=0, atol=1e-5)


# Step callbacks, interrupt, number of timesteps, progress bar.


def test_callback_on_step_end_sees_and_replaces_the_latents(pipe: YonosSRPipeline):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, int(timestep), sorted(tensors)))
        return {"latents": torch.zeros_like(tensors["latents"])} if step == pipeline.num_timesteps - 1 else {}

    latents = pipe(lr_batch(), num_inference_steps=3, callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", "image_latents"], output_type="latent").images

    assert [s[0] for s in seen] == [0, 1, 2] and pipe.num_timesteps == 3
    assert seen[0][1] > seen[1][1] > seen[2][1] and seen[0][2] == ["image_latents", "latents"]
    assert torch.equal(latents, torch.zeros_like(latents))  # the returned latents replaced the result
    with pytest.raises(ValueError, match="not in"):
        pipe(lr_batch(), callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_interrupt_stops_at_the_step_and_returns_its_latents(pipe: YonosSRPipeline):
    captured = {}

    def capture(pipeline, step, timestep, tensors):
        captured[step] = tensors["latents"].clone()
        return {}

    def interrupt_after_first(pipeline, step, timestep, tensors):
        pipeline._interrupt = step == 0 or pipeline.interrupt
        return {}

    run(pipe, lr_batch(), num_inference_steps=3, callback_on_step_end=capture, output_type="latent")
    stopped = run(pipe, lr_batch(), num_inference_steps=3, callback_on_step_end=interrupt_after_first,
                  output_type="latent")

    torch.testing.assert_close(stopped, captured[0], rtol=0, atol=0)
    assert not torch.equal(stopped, captured[2])


def test_progress_bar_follows_set_progress_bar_config(capsys: pytest.CaptureFixture):
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=False)
    run(pipe, lr_batch(), num_inference_steps=2)
    assert "2/2" in capsys.readouterr().err
    pipe.set_progress_bar_config(disable=True)
    run(pipe, lr_batch(), num_inference_steps=2)
    assert capsys.readouterr().err == ""


# Execution device, offload, layerwise casting (CPU; the mixins run these on accelerators only).


def sequential_offload_on_cpu(pipe: YonosSRPipeline) -> None:
    """What ``enable_sequential_cpu_offload`` does, with the execution device named ``cpu``: diffusers names it
    ``cpu:0``, and accelerate 1.15's hooks fail on that name (``new() received an invalid combination``) for any
    module, a plain ``nn.Linear`` too; on an accelerator the diffusers method itself applies."""
    from accelerate import cpu_offload

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and name not in pipe._exclude_from_cpu_offload:
            cpu_offload(component, execution_device="cpu", offload_buffers=len(component._parameters) > 0)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_cpu_offload_gives_the_same_images(offload: str):
    pytest.importorskip("accelerate")
    lr = lr_batch(height=24, width=24)
    norm = "tile" if offload == "sequential" else "shared"  # what the offloaded pipeline can do (see below)
    expected = tiny_pipeline()(lr, generator=seeded(0), tile_size=32, tile_overlap=8, tile_norm=norm, output_type="pt")
    pipe = tiny_pipeline()
    if offload == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    else:
        sequential_offload_on_cpu(pipe)

    out = pipe(lr, generator=seeded(0), tile_size=32, tile_overlap=8, output_type="pt")

    torch.testing.assert_close(out.images, expected.images, rtol=0, atol=1e-5)
    if offload == "sequential":
        assert next(pipe.unet.parameters()).device.type == "meta"  # the weights really were offloaded
        assert out.metadata["yonos:tile_norm"] == "tile"  # GroupNorm weights live inside the hooks


def test_layerwise_casting_of_the_unet_runs_in_its_compute_dtype():
    pipe = tiny_pipeline()
    lr = lr_batch()
    reference = run(pipe, lr)
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)

    result = pipe(lr, generator=seeded(0), tile_size=None, output_type="pt")

    assert result.metadata["yonos:unet_dtype"] == "bfloat16" and psnr(result.images, reference) > 20


# Another SD-latent autoencoder.


def test_autoencoder_tiny_swaps_in_for_the_vae(pipe: YonosSRPipeline):
    torch.manual_seed(0)
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).eval()
    fast = YonosSRPipeline(**{**pipe.components, "vae": taesd})
    fast.set_progress_bar_config(disable=True)
    lr = lr_batch(height=20, width=12)

    out = fast(lr, generator=seeded(3), tile_size=None, output_type="pt").images
    tiled = fast(lr, generator=seeded(3), tile_size=32, tile_overlap=16, output_type="pt").images

    expected = sample_with_seeds(fast.denoiser, fast.codec, fast.scheduler, lr, 2, seeds=[3])
    assert out.shape == (1, 3, 40, 24) and tiled.shape == out.shape
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_consistency_decoder_vae_swaps_in_and_decodes_deterministically(pipe: YonosSRPipeline):
    from diffusers import ConsistencyDecoderVAE

    blocks = [8, 8, 8, 8]  # four levels: the factor 8 its decoder assumes
    torch.manual_seed(0)
    vae = ConsistencyDecoderVAE(
        encoder_block_out_channels=blocks, encoder_in_channels=3, encoder_out_channels=4,
        encoder_down_block_types=["DownEncoderBlock2D"] * 4, decoder_add_attention=False,
        decoder_block_out_channels=blocks, decoder_down_block_types=["ResnetDownsampleBlock2D"] * 4,
        decoder_downsample_padding=1, decoder_in_channels=7, decoder_layers_per_block=1, decoder_norm_eps=1e-5,
        decoder_norm_num_groups=2, encoder_norm_num_groups=2, decoder_num_train_timesteps=1024,
        decoder_out_channels=6, decoder_resnet_time_scale_shift="scale_shift", decoder_time_embedding_type="learned",
        decoder_up_block_types=["ResnetUpsampleBlock2D"] * 4, scaling_factor=1, latent_channels=4,
    ).eval()
    swapped = YonosSRPipeline(**{**pipe.components, "vae": vae})
    swapped.set_progress_bar_config(disable=True)
    lr = lr_batch(height=20, width=12)

    first, again = run(swapped, lr), run(swapped, lr)
    tiled = swapped(lr, generator=seeded(0), tile_size=32, tile_overlap=16, output_type="pt").images

    assert first.shape == (1, 3, 40, 24) and tiled.shape == first.shape and torch.isfinite(tiled).all()
    assert torch.equal(first, again)  # its sampling decoder is seeded per call


# Loading without yonos, the model card.


def test_saved_folder_has_a_model_card_and_says_what_loading_needs(pipe: YonosSRPipeline, tmp_path: Path):
    pipe.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    index = json.loads((tmp_path / "model_index.json").read_text())

    assert card.startswith("---\nlibrary_name: diffusers\n") and "- yonos" in card and "x2" in card
    assert "import yonos" in card and "pip install yonos" in index["_yonos"]
    script = f"import diffusers; diffusers.DiffusionPipeline.from_pretrained({str(tmp_path)!r})"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    failed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert failed.returncode != 0 and "YonosSRPipeline" in failed.stderr  # diffusers alone cannot resolve it
    assert type(YonosSRPipeline.from_pretrained(tmp_path)) is YonosSRPipeline  # the hint key does not hurt
