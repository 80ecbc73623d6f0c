"""``yonos evaluate`` beside the field's tables: baselines and SR folders as rows, paths checked before any network
loads, MATLAB-bicubic LR, the clean FID resize, and the gray-image PSNR-Y convention. Tiny images, CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import yonos.evaluation.runner as runner
from yonos.degradations import bicubic_matlab_downsample, bicubic_matlab_upsample
from yonos.evaluation import EvalConfig, evaluate
from yonos.evaluation.models import lanczos_upsample
from yonos.images import read_rgb, save_image_atomic
from yonos.metrics import clean_fid_resize, psnr_y, ssim_y

PHOTOS = ("astronaut", "coffee", "chelsea")
SIZE = 32


class MeanStdFeatures(torch.nn.Module):
    """A stand-in for Inception: per-channel mean and spread of the uint8 input (6 features)."""

    num_features = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1).double()


def _crop(name: str, size: int = SIZE) -> torch.Tensor:
    array = getattr(skdata, name)()
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    return torch.from_numpy(array[top : top + size, left : left + size].copy()).permute(2, 0, 1).float() / 255.0


@pytest.fixture()
def paired(tmp_path: Path) -> Path:
    """hr/ + lr/ at x2, the LR made with MATLAB bicubic."""
    for name in PHOTOS:
        hr = _crop(name)
        save_image_atomic(hr, tmp_path / "set" / "hr" / f"{name}.png")
        save_image_atomic(bicubic_matlab_downsample(hr[None], 2)[0], tmp_path / "set" / "lr" / f"{name}.png")
    return tmp_path / "set"


def _config(models: list[str], data: Path, out: Path, **overrides) -> EvalConfig:
    return EvalConfig(**{**dict(models=models, data=str(data), out=str(out), metrics=["psnr", "ssim"], device="cpu"), **overrides})


def test_baselines_and_an_sr_folder_are_rows_beside_the_model(paired: Path, tmp_path: Path, teacher_ckpt: Path):
    # An SR folder made elsewhere, as .jpg files, one of them deliberately bad.
    folder = tmp_path / "peer_sr"
    folder.mkdir()
    for name in PHOTOS:
        image = _crop(name) if name != "coffee" else torch.zeros(3, SIZE, SIZE)
        Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{name}.jpg", quality=100)
    models = [str(teacher_ckpt), "bicubic", "lanczos", str(folder)]
    config = _config(models, paired, tmp_path / "out", steps=[1, 2], metrics=["psnr", "ssim", "fid"], fid_feature=MeanStdFeatures())
    summary = evaluate(config)
    rows = {(run["label"], run["steps"]): run for run in summary["runs"]}
    assert set(rows) == {("teacher", 1), ("teacher", 2), ("bicubic", None), ("lanczos", None), ("peer_sr", None)}
    # The bicubic row is MATLAB imresize of the LR, written out and scored like any model's output.
    hr, lr = _crop("astronaut")[None], read_rgb(paired / "lr" / "astronaut.png")[None]
    sr = read_rgb(Path(rows[("bicubic", None)]["sr_dir"]) / "astronaut.png")[None]
    assert torch.equal(sr, bicubic_matlab_upsample(lr, 2))
    with open(rows[("bicubic", None)]["per_image_csv"]) as handle:
        first = handle.read().splitlines()[1].split(",")
    assert first[0] == "astronaut" and float(first[2]) == pytest.approx(float(psnr_y(sr, hr)), abs=1e-4)
    assert torch.equal(read_rgb(Path(rows[("lanczos", None)]["sr_dir"]) / "astronaut.png")[None], lanczos_upsample(lr, 2))
    # The SR folder is scored as it is: near-perfect images, one black one.
    assert rows[("peer_sr", None)]["sr_dir"] == str(folder) and rows[("peer_sr", None)]["sr_computed_this_run"] == 0
    with open(rows[("peer_sr", None)]["per_image_csv"]) as handle:
        per_image = {line.split(",")[0]: float(line.split(",")[2]) for line in handle.read().splitlines()[1:]}
    assert per_image["astronaut"] > 40 and per_image["coffee"] < 15
    # Rows in the summary, the sweep table and the plot.
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| bicubic | - | 3 |" in markdown and "| peer_sr | - | 3 |" in markdown and "| teacher | 2 | 3 |" in markdown
    assert "| lanczos | - |" in (tmp_path / "out" / "sweep.md").read_text()
    assert "bicubic" in (tmp_path / "out" / "sweep.csv").read_text()
    if summary["sweep"].get("plot"):
        assert Path(summary["sweep"]["plot"]).stat().st_size > 0
    assert {m["kind"] for m in summary["settings"]["models"]} == {"checkpoint", "baseline", "folder"}


def _refuse_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a network was built before the paths were checked")

    monkeypatch.setattr(runner, "build_suite", refuse)
    monkeypatch.setattr(runner, "load_model", refuse)


def test_bad_paths_fail_before_any_network_loads(paired: Path, tmp_path: Path, teacher_ckpt: Path, monkeypatch):
    _refuse_networks(monkeypatch)
    with pytest.raises(FileNotFoundError, match=r"--data: folder .*missing does not exist"):
        evaluate(_config([str(teacher_ckpt)], tmp_path / "missing", tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=r"--model .*nope\.ckpt: no such checkpoint"):
        evaluate(_config([str(teacher_ckpt), str(tmp_path / "nope.ckpt")], paired, tmp_path / "out"))
    partial = tmp_path / "partial_sr"
    save_image_atomic(_crop("coffee"), partial / "coffee.png")
    with pytest.raises(FileNotFoundError, match=r"2 of 3 test image\(s\) have no SR image.*astronaut"):
        evaluate(_config([str(teacher_ckpt), str(partial)], paired, tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        evaluate(_config([str(tmp_path / "empty")], paired, tmp_path / "out"))
    (paired / "lr" / "chelsea.png").unlink()
    with pytest.raises(ValueError, match="no partner"):
        evaluate(_config(["bicubic"], paired, tmp_path / "out"))
    with pytest.raises(ValueError, match="give --scale"):
        evaluate(_config(["bicubic"], paired / "hr", tmp_path / "out"))


def test_hr_only_folder_with_matlab_bicubic_lr(paired: Path, tmp_path: Path):
    config = _config(["bicubic"], paired / "hr", tmp_path / "out", scale=2, degradation="bicubic_matlab")
    summary = evaluate(config)
    lr_cache = Path(summary["settings"]["data"]["lr_cache"])
    assert lr_cache.name.startswith("bicubic_matlab_x2")
    assert torch.equal(read_rgb(lr_cache / "lr" / "coffee.png"), read_rgb(paired / "lr" / "coffee.png"))


def test_summary_names_the_fid_mode(paired: Path, tmp_path: Path):
    clean = evaluate(_config(["bicubic"], paired, tmp_path / "clean", metrics=["fid"], fid_feature=MeanStdFeatures()))
    assert clean["settings"]["fid_mode"] == "clean"
    assert "- fid_mode: clean" in (tmp_path / "clean" / "summary.md").read_text()
    legacy = evaluate(_config(["bicubic"], paired, tmp_path / "legacy", metrics=["fid"], fid_feature=MeanStdFeatures(), fid_mode="legacy"))
    assert legacy["settings"]["fid_mode"] == "legacy"


def clean_fid_reference(image_uint8: np.ndarray) -> np.ndarray:
    """clean-fid's ``make_resizer('PIL', False, 'bicubic', (299, 299))``: each channel as a float 'F' image, PIL
    bicubic to 299 x 299, clipped to [0, 255]; (H, W, 3) uint8 -> (299, 299, 3) float32."""
    channels = []
    for index in range(3):
        image = Image.fromarray(image_uint8[:, :, index].astype(np.float32), mode="F").resize((299, 299), resample=Image.BICUBIC)
        channels.append(np.asarray(image).clip(0, 255).reshape(299, 299, 1))
    return np.concatenate(channels, axis=2).astype(np.float32)


def test_clean_fid_resize_matches_clean_fids_definition():
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.linspace(0, 1, 77), torch.linspace(0, 1, 93), indexing="ij")
    synthetic = torch.stack([0.5 + 0.4 * torch.sin(17 * x * y), (x > 0.4).float(), torch.rand(77, 93, generator=g)])[None]
    ours = clean_fid_resize(synthetic)
    assert ours.dtype == torch.uint8 and ours.shape == (1, 3, 299, 299)
    array = (synthetic[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    expected = clean_fid_reference(array)
    difference = ours[0].permute(1, 2, 0).numpy().astype(np.float64) - expected
    assert np.abs(difference).max() <= 0.5 + 1e-4  # the rounding to uint8 torchmetrics needs, nothing else
    # torch-fidelity's TF1-style bilinear (the legacy mode) is another resize.
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    legacy = interpolate_bilinear_2d_like_tensorflow1x(torch.from_numpy(array).permute(2, 0, 1)[None].float(), size=(299, 299), align_corners=False)
    assert np.abs(legacy[0].permute(1, 2, 0).numpy() - expected).max() > 20


def test_gray_hr_psnr_uses_its_own_values_by_default():
    hr = _crop("astronaut").mean(0, keepdim=True)[None]  # (1, 1, H, W)
    sr = (hr + 0.03 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    sr_rgb = sr.expand(-1, 3, -1, -1)
    levels_hr, levels_sr = (hr * 255).round(), (sr * 255).round()
    expected = 10 * math.log10(255**2 / (levels_hr - levels_sr).pow(2).mean().item())
    assert float(psnr_y(sr_rgb, hr)) == pytest.approx(expected, abs=1e-4)
    # Y of the RGB copy squeezes the range to 219 / 255: about 1.32 dB higher.
    rgb_y = float(psnr_y(sr_rgb, hr, gray="rgb_y"))
    assert rgb_y == pytest.approx(float(psnr_y(sr_rgb, hr.expand(-1, 3, -1, -1))), abs=1e-9)
    assert rgb_y - expected == pytest.approx(20 * math.log10(255 / 219), abs=1e-3)
    assert float(ssim_y(sr_rgb, hr)) != pytest.approx(float(ssim_y(sr_rgb, hr, gray="rgb_y")), abs=1e-6)


def test_evaluate_scores_one_channel_hr_files_by_the_convention(tmp_path: Path):
    root = tmp_path / "gray"
    gray = (_crop("coffee").mean(0) * 255).round().numpy().astype(np.uint8)
    (root / "hr").mkdir(parents=True), (root / "lr").mkdir()
    Image.fromarray(gray, mode="L").save(root / "hr" / "coffee.png")
    lr = bicubic_matlab_downsample(torch.from_numpy(gray)[None, None].float().expand(1, 3, -1, -1) / 255.0, 2)
    save_image_atomic(lr[0], root / "lr" / "coffee.png")
    own = evaluate(_config(["bicubic"], root, tmp_path / "own"))["runs"][0]["metrics"]["psnr"]
    rgb_y = evaluate(_config(["bicubic"], root, tmp_path / "rgb_y", gray_convention="rgb_y"))["runs"][0]["metrics"]["psnr"]
    assert rgb_y - own == pytest.approx(20 * math.log10(255 / 219), abs=0.01)
    summary = json.loads((tmp_path / "own" / "summary.json").read_text())
    assert summary["settings"]["gray_convention"] == "own" and "gray" in summary["metric_definitions"]["psnr"]


def test_cli_options_reach_the_config():
    from yonos.evaluation.command import config_from_args

    config = config_from_args(
        ["--model", "bicubic", "--model", "lanczos", "--data", "d", "--out", "o", "--fid-mode", "legacy",
         "--gray-convention", "rgb_y", "--degradation", "bicubic_matlab", "--scale", "4"]
    )
    assert (config.fid_mode, config.gray_convention, config.degradation) == ("legacy", "rgb_y", "bicubic_matlab")
    assert config.model_labels() == ["bicubic", "lanczos"]
    defaults = config_from_args(["--model", "bicubic", "--data", "d", "--out", "o"])
    assert (defaults.fid_mode, defaults.gray_convention) == ("clean", "own")
    with pytest.raises(SystemExit):
        config_from_args(["--model", "bicubic", "--data", "d", "--out", "o", "--fid-mode", "tf"])
