"""Metric definitions (Y-channel PSNR/SSIM) and the offline behaviour of the pretrained metric networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata

from yonos import metrics
from yonos.metrics import MissingWeightsError, build_fid, build_lpips, lpips_distance, psnr_y, rgb_to_y, ssim_y


def _photo() -> torch.Tensor:
    array = skdata.astronaut()[:96, 160:256]  # (96, 96, 3) uint8, a real photo
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0


def _basicsr_y(image: np.ndarray) -> np.ndarray:
    """BasicSR's bgr2ycbcr(y_only=True) on an RGB float image in [0, 255] (its formula, written out)."""
    return np.dot(image / 255.0, [65.481, 128.553, 24.966]) + 16.0


def test_y_channel_is_bt601():
    image = torch.tensor([[[[1.0]], [[1.0]], [[1.0]]], [[[0.0]], [[0.0]], [[0.0]]]])
    assert rgb_to_y(image).flatten().tolist() == pytest.approx([235.0, 16.0])


def test_psnr_matches_the_basicsr_definition():
    hr = _photo()
    noisy = (hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    hr8 = np.round(hr[0].permute(1, 2, 0).numpy() * 255.0)
    sr8 = np.round(noisy[0].permute(1, 2, 0).numpy() * 255.0)
    for crop in (0, 4):
        y_hr, y_sr = _basicsr_y(hr8), _basicsr_y(sr8)
        if crop:
            y_hr, y_sr = y_hr[crop:-crop, crop:-crop], y_sr[crop:-crop, crop:-crop]
        expected = 10 * math.log10(255.0**2 / np.mean((y_hr - y_sr) ** 2))
        assert float(psnr_y(noisy, hr, crop_border=crop)) == pytest.approx(expected, abs=1e-4)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    hr = _photo()
    assert float(ssim_y(hr, hr)) == pytest.approx(1.0, abs=1e-6)
    noisy = (hr + 0.1 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert 0.0 < float(ssim_y(noisy, hr)) < 0.9


def test_metrics_are_per_image():
    hr = _photo().repeat(2, 1, 1, 1)
    sr = hr.clone()
    sr[1] = (sr[1] + 0.1).clamp(0, 1)
    values = psnr_y(sr, hr)
    assert values.shape == (2,) and values[0] > 80 and values[1] < 40


def test_lpips_with_a_random_backbone_runs_offline():
    model = build_lpips("alex", random_backbone=True)
    hr = _photo()
    assert float(lpips_distance(model, hr, hr)) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips_distance(model, hr.flip(-1), hr)) > 0.0


def test_missing_lpips_weights_name_the_file_and_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("YONOS_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as error:
        build_lpips("alex")
    message = str(error.value)
    assert "alexnet-owt-7be5be79.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        build_lpips("vgg")


def test_failed_download_is_reported_as_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("YONOS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(MissingWeightsError, match="download failed"):
        build_lpips("alex")


def test_missing_fid_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("YONOS_OFFLINE", "1")
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05-6726825d.pth"):
        build_fid()
    assert metrics.weights_path("fid-inception").parent == tmp_path / "hub" / "checkpoints"


def test_fid_with_a_custom_feature_network_works_offline():
    class Features(torch.nn.Module):
        num_features = 8

        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x.float(), 2).flatten(1)[:, :8]

    fid = build_fid(Features())
    g = torch.Generator().manual_seed(0)
    fid.update(torch.rand(16, 3, 32, 32, generator=g), real=True)
    fid.update(torch.rand(16, 3, 32, 32, generator=g) * 0.5, real=False)
    assert float(fid.compute()) > 0


# The weight-free detail measure: radially averaged power spectrum distance.


def test_ring_spectrum_of_a_cosine_peaks_on_its_frequency_ring():
    size, cycles = 64, 9
    x = torch.arange(size, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * cycles * x / size).expand(size, size)[None, None]
    spectrum = metrics.radial_power_spectrum(wave)
    assert spectrum.shape == (1, size // 2)
    assert int(spectrum[0].argmax()) + 1 == cycles  # ring r sits at index r - 1
    # A rectangle of the same wave: rings are measured in units of 1 / min(H, W) on both axes.
    assert int(metrics.radial_power_spectrum(wave[..., :48, :])[0].argmax()) + 1 == round(cycles * 48 / size)


def test_spectrum_distance_is_zero_for_the_hr_and_grows_with_blur_where_psnr_rewards_it():
    hr = torch.from_numpy(skdata.astronaut()[100:228, 150:278].copy()).permute(2, 0, 1)[None].float() / 255
    assert float(metrics.spectrum_distance(hr, hr)) == 0.0
    blurs = [torch.nn.functional.avg_pool2d(hr, k, 1, k // 2, count_include_pad=False) for k in (3, 5, 9)]
    distances = [float(metrics.spectrum_distance(b, hr)) for b in blurs]
    assert 0 < distances[0] < distances[1] < distances[2]
    # Noise of the blur's PSNR keeps the spectrum's shape far better: the measure separates detail from blur.
    y_error = float((rgb_to_y(blurs[1]) - rgb_to_y(hr)).pow(2).mean().sqrt()) / 255  # RMS error of the blur in Y
    gray_noise = torch.randn(1, 1, *hr.shape[-2:], generator=torch.Generator().manual_seed(0))
    noisy = (hr + y_error * 255 / 219 * gray_noise).clamp(0, 1)  # the same RMS error in Y, spread over all frequencies
    assert float(psnr_y(noisy, hr)) == pytest.approx(float(psnr_y(blurs[1], hr)), abs=1.5)
    assert float(metrics.spectrum_distance(noisy, hr)) < distances[1]
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.spectrum_distance(hr[..., :64], hr)
