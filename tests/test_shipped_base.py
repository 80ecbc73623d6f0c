"""The tiny SD base shipped in the package (yonos:tiny-sd) loads and reconstructs as the README states."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from yonos.demo import validation_pairs
from yonos.metrics import psnr_y, ssim_y
from yonos.models import BackboneConfig, build_codec, build_denoiser, resolve_pretrained
from yonos.samples import prepare_samples

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_number(pattern: str) -> re.Match:
    match = re.search(pattern, README.read_text())
    assert match, f"README.md has no line matching {pattern!r}"
    return match


def test_shipped_base_reconstructs_the_validation_crops_as_the_readme_states(tmp_path: Path, one_thread):
    stated = _readme_number(r"on the (\d+) validation crops: PSNR-Y ([\d.]+) dB, SSIM-Y ([\d.]+)")
    prepare_samples(tmp_path)  # the demo's data: default sizes
    hr, _, _ = validation_pairs(tmp_path / "val_crops", scale=4, hr_size=128)
    codec = build_codec(BackboneConfig(pretrained="yonos:tiny-sd")).eval()
    with torch.no_grad():
        rec = codec.decode(codec.encode(hr))
    assert hr.shape[0] == int(stated.group(1))
    assert float(psnr_y(rec, hr).mean()) == pytest.approx(float(stated.group(2)), abs=0.02)
    assert float(ssim_y(rec, hr).mean()) == pytest.approx(float(stated.group(3)), abs=0.002)


def test_shipped_base_is_an_sd_folder_of_the_stated_size():
    stated = _readme_number(r"weights ([\d.]+) MB in all")
    folder = Path(resolve_pretrained("yonos:tiny-sd"))
    weights = sorted(folder.glob("*/diffusion_pytorch_model.safetensors"))
    assert [p.parent.name for p in weights] == ["unet", "vae"]
    assert sum(p.stat().st_size for p in weights) / 1e6 == pytest.approx(float(stated.group(1)), abs=0.05)
    codec, denoiser = build_codec(BackboneConfig(pretrained="yonos:tiny-sd")), build_denoiser(BackboneConfig(pretrained="yonos:tiny-sd"))
    assert codec.downsample_factor == 4 and codec.scaling_factor != 1.0
    assert denoiser.unet.config.in_channels == 8
