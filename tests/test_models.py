"""SRDenoiser and LatentCodec: presets, pretrained SD folders, conv_in widening, clear loading errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.testing import assert_close

from yonos.models import (
    UNET_PRESETS,
    BackboneConfig,
    LatentCodec,
    SRDenoiser,
    build_codec,
    build_denoiser,
    scheduler_source,
    widen_conv_in,
)


def test_tiny_preset_shapes_and_prompt_buffer():
    denoiser = SRDenoiser.from_preset("tiny")
    assert denoiser.unet.config.in_channels == 8
    assert denoiser.prompt_embeds.shape == (1, 77, 32)
    assert "prompt_embeds" in denoiser.state_dict()
    z = torch.randn(2, 4, 8, 8)
    out = denoiser(z, torch.randn_like(z), torch.tensor([10, 999]))
    assert out.shape == z.shape and torch.isfinite(out).all()


def test_sd21_base_preset_has_the_real_shapes():
    with torch.device("meta"):
        denoiser = SRDenoiser.from_preset("sd21-base")
        codec = LatentCodec.from_preset("sd21-base")
    n_unet = sum(p.numel() for p in denoiser.unet.parameters())
    # SD 2.1-base UNet: 865,910,724 parameters with 4 input channels; +4*320*9 for the widened conv_in.
    assert n_unet == 865_910_724 + 4 * 320 * 9
    assert denoiser.prompt_embeds.shape == (1, 77, 1024)
    assert sum(p.numel() for p in codec.vae.parameters()) == 83_653_863
    assert codec.downsample_factor == 8


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny"):
        SRDenoiser.from_preset("huge")  # type: ignore[arg-type]


def test_codec_round_trip_shapes_and_range():
    codec = LatentCodec.from_preset("tiny")
    image = torch.rand(2, 3, 32, 48)
    latent = codec.encode(image)
    assert latent.shape == (2, 4, 4, 6)
    decoded = codec.decode(latent)
    assert decoded.shape == image.shape and decoded.min() >= 0 and decoded.max() <= 1
    posterior_mean = codec.vae.encode(image * 2 - 1).latent_dist.mean * codec.scaling_factor
    assert_close(latent, posterior_mean)


def test_widened_conv_in_keeps_the_pretrained_output_for_any_lr(sd_folder: Path):
    pretrained = UNet2DConditionModel.from_pretrained(sd_folder / "unet").eval()
    denoiser = SRDenoiser.from_pretrained(str(sd_folder)).eval()
    weight = denoiser.unet.conv_in.weight
    assert weight.shape[1] == 8
    assert torch.equal(weight[:, :4], pretrained.conv_in.weight)
    assert torch.count_nonzero(weight[:, 4:]) == 0
    g = torch.Generator().manual_seed(0)
    z_t, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0, 500])
    context = torch.zeros(2, 77, 32)
    with torch.no_grad():
        expected = pretrained(z_t, t, encoder_hidden_states=context).sample
        for z_lr in (torch.zeros_like(z_t), 10 * torch.randn(2, 4, 8, 8, generator=g)):
            assert_close(denoiser(z_t, z_lr, t), expected, rtol=0, atol=1e-6)


def test_widen_rejects_an_already_wide_conv(make_tiny_unet):
    with pytest.raises(ValueError, match="already has 8"):
        widen_conv_in(make_tiny_unet(8), 8)


def test_pretrained_folder_builds_both_components(sd_folder: Path):
    config = BackboneConfig(pretrained=str(sd_folder))
    codec = build_codec(config)
    assert_close(codec.vae.decoder.conv_out.weight, LatentCodec.from_pretrained(str(sd_folder)).vae.decoder.conv_out.weight)
    assert scheduler_source(config) == str(sd_folder / "scheduler")
    # No text encoder in a folder of a small test UNet: the stored empty-prompt embedding is zeros of its width.
    assert torch.count_nonzero(build_denoiser(config).prompt_embeds) == 0


def test_a_real_sized_unet_without_text_encoder_is_an_error_unless_zeros_are_chosen(sd_folder: Path, tmp_path: Path):
    """SD's cross-attention was trained on the real empty-prompt embedding: a silent all-zero context is refused."""
    root = _broken_copy(sd_folder, tmp_path)
    shutil.rmtree(root / "unet")
    torch.manual_seed(0)
    UNet2DConditionModel(in_channels=4, out_channels=4, **{**UNET_PRESETS["tiny"], "cross_attention_dim": 1024}).save_pretrained(
        root / "unet"
    )
    with pytest.raises(FileNotFoundError, match=r"text_encoder/config.json.*zero_prompt_embedding: true"):
        build_denoiser(BackboneConfig(pretrained=str(root)))
    denoiser = build_denoiser(BackboneConfig(pretrained=str(root), zero_prompt_embedding=True))
    assert denoiser.prompt_embeds.shape == (1, 77, 1024) and torch.count_nonzero(denoiser.prompt_embeds) == 0
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer/"):
        build_denoiser(BackboneConfig(pretrained=str(root)))


def test_state_dict_round_trip_keeps_the_prompt_embedding(tmp_path: Path):
    denoiser = SRDenoiser.from_preset("tiny")
    denoiser.prompt_embeds.normal_()
    torch.save(denoiser.state_dict(), tmp_path / "d.pt")
    other = SRDenoiser.from_preset("tiny")
    other.load_state_dict(torch.load(tmp_path / "d.pt"))
    assert torch.equal(other.prompt_embeds, denoiser.prompt_embeds)


def _broken_copy(sd_folder: Path, tmp_path: Path) -> Path:
    root = tmp_path / "sd"
    shutil.copytree(sd_folder, root)
    return root


def test_missing_folder_names_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not found: .*nowhere"):
        SRDenoiser.from_pretrained(str(tmp_path / "nowhere"))


def test_missing_config_names_the_file(sd_folder: Path, tmp_path: Path):
    root = _broken_copy(sd_folder, tmp_path)
    (root / "unet" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        SRDenoiser.from_pretrained(str(root))


def test_missing_weights_name_the_file(sd_folder: Path, tmp_path: Path):
    root = _broken_copy(sd_folder, tmp_path)
    for weights in (root / "vae").glob("diffusion_pytorch_model*"):
        weights.unlink()
    with pytest.raises(FileNotFoundError, match="vae/diffusion_pytorch_model.safetensors"):
        LatentCodec.from_pretrained(str(root))


def test_malformed_config_names_the_file(sd_folder: Path, tmp_path: Path):
    root = _broken_copy(sd_folder, tmp_path)
    (root / "vae" / "config.json").write_text("{ broken")
    with pytest.raises(ValueError, match="malformed .*vae/config.json"):
        LatentCodec.from_pretrained(str(root))


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="set backbone.pretrained"):
        SRDenoiser.from_pretrained("someone/not-a-local-folder")


def test_empty_prompt_embedding_from_a_text_encoder(sd_folder: Path, tmp_path: Path):
    transformers = pytest.importorskip("transformers")
    import json

    root = _broken_copy(sd_folder, tmp_path)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(root / "tokenizer")
    config = transformers.CLIPTextConfig(
        vocab_size=4, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(config).eval()
    text_encoder.save_pretrained(root / "text_encoder")

    denoiser = SRDenoiser.from_pretrained(str(root))
    ids = torch.tensor([[0] + [1] * 76])  # <bos> <eos> then <eos> padding: the empty prompt
    with torch.no_grad():
        expected = text_encoder(ids)[0]
    assert_close(denoiser.prompt_embeds, expected)
