"""``yonos evaluate``: layouts (paired, HR-only with a cached synthetic LR), reports, resumability, the steps sweep,
FID folder against folder, and the offline behaviour of missing metric weights. Tiny models, tiny images, CPU."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from skimage import data as skdata

import yonos.evaluation.models as eval_models
from yonos.cli import main as cli_main
from yonos.degradations import bicubic_downsample
from yonos.evaluation import EvalConfig, evaluate
from yonos.evaluation.data import load_eval_set
from yonos.evaluation.scoring import folder_fid
from yonos.images import read_rgb, save_image_atomic
from yonos.metrics import MissingWeightsError, build_fid, build_iqa_metric
from yonos.seeds import validation_seed

PHOTOS = ("astronaut", "coffee", "chelsea")


class TinyFeatureExtractorForTests(torch.nn.Module):
    """A stand-in for Inception in FID tests: per-channel mean, spread and mean absolute gradients (12 features)."""

    num_features = 12

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0  # torchmetrics hands uint8 images to custom feature extractors
        dx, dy = (x[..., 1:] - x[..., :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), dx.mean((2, 3)), dy.mean((2, 3))], dim=1).double()


def _photo_crop(name: str, size: int, offset: int = 0) -> torch.Tensor:
    array = getattr(skdata, name)()
    top, left = (array.shape[0] - size) // 2 + offset, (array.shape[1] - size) // 2 - offset
    return torch.from_numpy(array[top : top + size, left : left + size].copy()).permute(2, 0, 1).float() / 255.0


SIZE = 32  # HR side: tiny models, tiny images (SSIM needs >= 11 pixels after the crop)


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 32x32 real-photo crops, HR only."""
    root = tmp_path_factory.mktemp("hr_only")
    for name in PHOTOS:
        save_image_atomic(_photo_crop(name, SIZE), root / f"{name}.png")
    return root


def _spy_on_sampler(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Spy on the checkpoint branch's sampler: one entry (the step count) per SR image computed."""
    calls: list[int] = []
    original = eval_models.super_resolve

    def spy(lr, scale, encode, denoise, decode, scheduler, noise, num_steps):
        calls.append(num_steps)
        return original(lr, scale, encode, denoise, decode, scheduler, noise, num_steps)

    monkeypatch.setattr(eval_models, "super_resolve", spy)
    return calls


@pytest.fixture(scope="module")
def base_run(teacher_ckpt: Path, hr_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[EvalConfig, dict, list[int]]:
    """One evaluation shared by several tests: HR only, PSNR / SSIM / random-backbone LPIPS / FID on injected features."""
    out = tmp_path_factory.mktemp("base_run")
    config = _config(
        teacher_ckpt,
        hr_folder,
        out,
        metrics=["psnr", "ssim", "lpips", "fid"],
        random_lpips_backbone=True,
        fid_feature=TinyFeatureExtractorForTests(),
        crop_border=2,
    )
    with pytest.MonkeyPatch.context() as patch:
        calls = _spy_on_sampler(patch)
        summary = evaluate(config)
    return config, summary, calls


def _paired_folder(root: Path, hr_name: str = "gt", lr_name: str = "lq", lr_names: tuple[str, ...] = PHOTOS) -> Path:
    for name in PHOTOS:
        save_image_atomic(_photo_crop(name, SIZE), root / hr_name / f"{name}.png")
    for name in lr_names:
        source = _photo_crop(name if name in PHOTOS else PHOTOS[0], SIZE)
        save_image_atomic(bicubic_downsample(source[None], 2)[0], root / lr_name / f"{name}.png")
    return root


def _config(model: Path, data: Path, out: Path, **overrides) -> EvalConfig:
    options = dict(models=[str(model)], data=str(data), out=str(out), metrics=["psnr", "ssim"], device="cpu")
    return EvalConfig(**{**options, **overrides})


@pytest.fixture()
def sampler_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return _spy_on_sampler(monkeypatch)


def test_hr_only_run_writes_images_csv_and_a_summary_with_its_settings(base_run):
    config, summary, calls = base_run
    run = summary["runs"][0]
    assert calls == [1, 1, 1] and run["images"] == 3
    assert sorted(p.name for p in Path(run["sr_dir"]).iterdir()) == [f"{n}.png" for n in sorted(PHOTOS)]
    assert read_rgb(Path(run["sr_dir"]) / "coffee.png").shape == (3, SIZE, SIZE)
    # Random-backbone LPIPS and the injected FID features are reported under names that say so.
    assert list(run["metrics"]) == ["psnr", "ssim", "lpips_alex_random_backbone", "fid_custom_features"]
    with open(run["per_image_csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [row["name"] for row in rows] == sorted(PHOTOS)
    assert [int(row["seed"]) for row in rows] == [validation_seed(42, i) for i in range(3)]
    assert sum(float(row["psnr"]) for row in rows) / 3 == pytest.approx(run["metrics"]["psnr"], abs=1e-4)
    settings = summary["settings"]
    assert (settings["seed"], settings["steps"], settings["color_fix"], settings["crop_border"], settings["scale"]) == (
        42,
        [1],
        "none",
        2,
        2,
    )
    assert (
        settings["data"]["degradation"] == "bicubic"
        and Path(settings["data"]["lr_cache"]).parent == Path(config.out) / "lr_cache"
    )
    definitions = summary["metric_definitions"]
    assert "BT.601" in definitions["psnr"] and "crop_border 2" in definitions["ssim"]
    assert (
        "RANDOM" in definitions["lpips_alex_random_backbone"]
        and "TinyFeatureExtractorForTests" in definitions["fid_custom_features"]
    )
    assert summary["versions"]["torchmetrics"] != "not installed"
    markdown = (Path(config.out) / "summary.md").read_text()
    assert "## Metric definitions" in markdown and "## Versions" in markdown and "| 1 | 3 |" in markdown
    assert json.loads((Path(config.out) / "summary.json").read_text())["runs"][0]["metrics"] == run["metrics"]


def test_paired_folders_in_both_layouts(teacher_ckpt: Path, tmp_path: Path):
    hr_lr = load_eval_set(_paired_folder(tmp_path / "pairs_hr", "hr", "lr"), None, tmp_path / "cache")
    assert hr_lr.scale == 2 and hr_lr.source["layout"].startswith("paired (hr/") and len(hr_lr.pairs) == 3
    summary = evaluate(_config(teacher_ckpt, _paired_folder(tmp_path / "pairs_gt"), tmp_path / "out"))
    assert summary["settings"]["scale"] == 2 and summary["settings"]["data"]["layout"].startswith("paired (gt/")
    assert summary["runs"][0]["images"] == 3 and not (tmp_path / "out" / "lr_cache").exists()


def test_mismatched_names_between_gt_and_lq_are_listed(tmp_path: Path):
    data = _paired_folder(tmp_path / "pairs", lr_names=("astronaut", "coffee", "rocket"))
    with pytest.raises(ValueError) as error:
        load_eval_set(data, None, tmp_path / "cache")
    assert "chelsea" in str(error.value) and "rocket" in str(error.value)


def test_mismatched_names_fail_the_command_with_a_message(teacher_ckpt: Path, tmp_path: Path, capsys):
    data = _paired_folder(tmp_path / "pairs", lr_names=("astronaut", "coffee", "rocket"))
    with pytest.raises(SystemExit) as stop:
        cli_main(
            ["evaluate", "--model", str(teacher_ckpt), "--data", str(data), "--out", str(tmp_path / "o"), "--metrics", "psnr"]
        )
    assert stop.value.code == 2 and "rocket" in capsys.readouterr().err


def test_synthetic_lr_is_cached_and_identical_across_runs(hr_folder: Path, tmp_path: Path):
    first = load_eval_set(hr_folder, 2, tmp_path / "cache", degradation="realesrgan", seed=3)
    stamps = {p.name: p.lr_path.stat().st_mtime_ns for p in first.pairs}
    again = load_eval_set(hr_folder, 2, tmp_path / "cache", degradation="realesrgan", seed=3)
    assert {p.name: p.lr_path.stat().st_mtime_ns for p in again.pairs} == stamps  # reused, not rewritten
    fresh = load_eval_set(hr_folder, 2, tmp_path / "other_cache", degradation="realesrgan", seed=3)
    for a, b in zip(first.pairs, fresh.pairs):
        assert a.lr_path.read_bytes() == b.lr_path.read_bytes()  # the same LR from the same seed, from scratch
    local = Path(shutil.copytree(hr_folder, tmp_path / "hr"))
    load_eval_set(local, 2, local / "cache")  # a cache inside the data folder ...
    assert [p.name for p in load_eval_set(local, 2, local / "cache").pairs] == sorted(PHOTOS)  # ... adds no test images
    other_seed = load_eval_set(hr_folder, 2, tmp_path / "cache", degradation="realesrgan", seed=4)
    assert other_seed.pairs[0].lr_path.parent != first.pairs[0].lr_path.parent
    assert read_rgb(first.pairs[0].lr_path).shape == (3, SIZE // 2, SIZE // 2)


def test_second_run_recomputes_no_sr_image_but_recomputes_metrics(base_run, sampler_calls):
    config, first, _ = base_run
    csv_path = Path(first["runs"][0]["per_image_csv"])
    csv_path.unlink()
    second = evaluate(config)
    assert sampler_calls == [] and second["runs"][0]["sr_computed_this_run"] == 0
    assert csv_path.is_file() and second["runs"][0]["metrics"] == first["runs"][0]["metrics"]
    # Other settings must not reuse those images.
    with pytest.raises(ValueError, match="seed"):
        evaluate(EvalConfig(**{**config.__dict__, "seed": 7}))


def test_sr_of_an_image_does_not_depend_on_the_other_images(base_run, tmp_path: Path):
    config, both, _ = base_run
    save_image_atomic(read_rgb(Path(config.data) / "astronaut.png"), tmp_path / "alone" / "astronaut.png")  # sorts first
    alone = evaluate(_config(Path(config.models[0]), tmp_path / "alone", tmp_path / "one"))
    image = "astronaut.png"
    assert torch.equal(read_rgb(Path(both["runs"][0]["sr_dir"]) / image), read_rgb(Path(alone["runs"][0]["sr_dir"]) / image))


def test_steps_sweep_of_two_models_writes_a_table_and_a_plot(teacher_ckpt: Path, hr_folder: Path, tmp_path: Path, sampler_calls):
    pytest.importorskip("matplotlib")
    two_images = tmp_path / "two"
    for name in PHOTOS[:2]:
        save_image_atomic(read_rgb(hr_folder / f"{name}.png"), two_images / f"{name}.png")
    out = tmp_path / "sweep"
    config = _config(teacher_ckpt, two_images, out, models=[str(teacher_ckpt)] * 2, labels=["distilled", "direct"], steps=[1, 2])
    summary = evaluate(config)
    assert sorted(sampler_calls) == [1] * 4 + [2] * 4
    with open(out / "sweep.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["label"], r["steps"]) for r in rows] == [("distilled", "1"), ("distilled", "2"), ("direct", "1"), ("direct", "2")]
    assert list(rows[0]) == ["label", "steps", "psnr", "ssim"]
    assert "| distilled | 2 | 2 |" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["sweep"]["plot"] == str(out / "sweep.png")


def test_fid_of_a_folder_against_itself_is_zero_and_grows_with_noise(tmp_path: Path):
    crops = [_photo_crop(name, 32, offset) for name in PHOTOS for offset in range(0, 64, 8)]  # 24 real-photo crops
    for i, crop in enumerate(crops):
        save_image_atomic(crop, tmp_path / "folder" / f"{i:02d}.png")
    images = [read_rgb(p)[None] for p in sorted((tmp_path / "folder").iterdir())]
    generator = torch.Generator().manual_seed(0)

    def fid_with_noise(sigma: float) -> float:
        noisy = [(x + sigma * torch.randn(x.shape, generator=generator)).clamp(0, 1) for x in images]
        return folder_fid(build_fid(TinyFeatureExtractorForTests()), zip(noisy, images))

    same, small, large = fid_with_noise(0.0), fid_with_noise(0.03), fid_with_noise(0.1)
    assert abs(same) < 1e-6 and 0 < small < large


def test_missing_weights_name_the_file_or_are_skipped_and_reported(base_run, tmp_path: Path, monkeypatch, sampler_calls):
    config, _, _ = base_run
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("YONOS_OFFLINE", "1")
    strict = EvalConfig(
        **{**config.__dict__, "metrics": ["psnr", "fid", "lpips"], "fid_feature": None, "random_lpips_backbone": False}
    )
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05-6726825d.pth"):
        evaluate(strict)
    summary = evaluate(EvalConfig(**{**strict.__dict__, "skip_unavailable": True}))  # resumes the base run's images
    assert sampler_calls == [] and set(summary["skipped_metrics"]) == {"fid", "lpips"}
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in summary["skipped_metrics"]["lpips"]
    assert "alexnet-owt-7be5be79.pth" in summary["skipped_metrics"]["lpips"]
    assert list(summary["runs"][0]["metrics"]) == ["psnr"]
    assert "## Skipped metrics" in (Path(config.out) / "summary.md").read_text()


def test_iqa_metrics_without_pyiqa_point_to_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # import pyiqa -> ImportError, as on a machine without it
    with pytest.raises(ImportError, match=r"yonos\[iqa\]"):
        build_iqa_metric("dists")


def test_iqa_weights_missing_offline_name_every_file(pyiqa, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("YONOS_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as error:
        build_iqa_metric("dists")
    assert "DISTS_weights-f5e65c96.pth" in str(error.value) and "vgg16-397923af.pth" in str(error.value)
    assert str(tmp_path / "hub" / "pyiqa") in str(error.value)


def test_cli_runs_end_to_end_and_prints_the_table(base_run, capsys):
    config, _, _ = base_run
    cli_main(
        [
            "evaluate",
            "--model",
            config.models[0],
            "--data",
            config.data,
            "--out",
            config.out,
            "--metrics",
            "psnr,ssim",
            "--crop-border",
            "2",
            "--device",
            "cpu",
            "--ssim-convention",
            "pyiqa",
        ]
    )
    printed = capsys.readouterr().out
    assert "| 1 | 3 |" in printed and "summary.md" in printed
    assert json.loads((Path(config.out) / "summary.json").read_text())["settings"]["ssim_convention"] == "pyiqa"


def test_colour_fix_of_checkpoints_is_applied_and_reported(base_run, tmp_path: Path):
    config, plain, _ = base_run
    fixed = evaluate(_config(Path(config.models[0]), Path(config.data), tmp_path / "wavelet", color_fix="wavelet"))
    assert fixed["settings"]["color_fix"] == "wavelet" and fixed["settings"]["models"][0]["color_fix"] == "wavelet"
    image = "coffee.png"
    assert not torch.equal(read_rgb(Path(plain["runs"][0]["sr_dir"]) / image), read_rgb(Path(fixed["runs"][0]["sr_dir"]) / image))


def test_pipeline_folder_gives_the_checkpoints_images(base_run, tmp_path: Path):
    from yonos.checkpoints import load_stage_checkpoint
    from yonos.pipeline import YonosSRPipeline

    config, from_checkpoint, _ = base_run
    stage = load_stage_checkpoint(config.models[0])
    YonosSRPipeline.from_models(stage.denoiser, stage.codec, stage.scheduler(), stage.scale).save_pretrained(tmp_path / "pipe")
    from_pipeline = evaluate(_config(tmp_path / "pipe", Path(config.data), tmp_path / "p", labels=["pipe"]))
    assert from_pipeline["settings"]["scale"] == 2 and from_pipeline["settings"]["models"][0]["kind"] == "pipeline"
    for name in PHOTOS:  # same networks, same seeds, same noise: the same images up to 8-bit rounding
        a = read_rgb(Path(from_pipeline["runs"][0]["sr_dir"]) / f"{name}.png")
        b = read_rgb(Path(from_checkpoint["runs"][0]["sr_dir"]) / f"{name}.png")
        assert (a - b).abs().max() <= 1.0 / 255.0 + 1e-6


def _untrained_zero_head_checkpoint(root: Path) -> Path:
    """A tiny x2 stage whose output layer is zeroed and never trained (lr 0): its one-step latent IS its condition."""
    import lightning.pytorch as pl

    from yonos.models import BackboneConfig
    from yonos.modules import TeacherModule

    module = TeacherModule(
        backbone=BackboneConfig(preset="tiny"), scale=2, prediction_type="sample", target="residual",
        zero_output_init=True, lpips_net="none", log_images=0, optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
    )
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batches = [{"hr": images, "lr_x2": bicubic_downsample(images, 2)}]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(root / "copying.ckpt")
    return root / "copying.ckpt"


def test_latent_mse_of_a_stage_that_copies_its_condition_equals_the_copy_column(hr_folder: Path, tmp_path: Path):
    model = _untrained_zero_head_checkpoint(tmp_path)
    summary = evaluate(_config(model, hr_folder, tmp_path / "out", metrics=["psnr", "latent_mse"], scale=2))
    metrics = summary["runs"][0]["metrics"]
    assert summary["metric_columns"] == ["psnr", "latent_mse", "latent_mse_copy"]
    assert metrics["latent_mse_copy"] > 1e-5
    assert metrics["latent_mse"] == pytest.approx(metrics["latent_mse_copy"], rel=1e-5)
    assert "E(HR)" in summary["metric_definitions"]["latent_mse"]


def test_latent_mse_scores_the_saved_latent_against_the_hr_latent_and_the_image_is_its_decoding(
    teacher_ckpt: Path, hr_folder: Path, tmp_path: Path
):
    from yonos.checkpoints import load_stage_checkpoint
    from yonos.degradations import upsample_to
    from yonos.sampling import sample_with_seeds

    summary = evaluate(
        _config(teacher_ckpt, hr_folder, tmp_path / "out", models=[str(teacher_ckpt), "bicubic"], labels=["stage", "bicubic"],
                metrics=["psnr", "latent_mse"])
    )
    stage_run, bicubic_run = summary["runs"]
    stage = load_stage_checkpoint(teacher_ckpt)
    eval_set = load_eval_set(str(hr_folder), 2, tmp_path / "out" / "lr_cache", "bicubic", "stablesr", 0)
    with open(stage_run["per_image_csv"]) as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    for index, pair in enumerate(eval_set.pairs):
        z_0 = torch.load(Path(stage_run["sr_dir"]).parent / "latents" / f"{pair.name}.pt", weights_only=True)
        hr, lr = read_rgb(pair.hr_path)[None], read_rgb(pair.lr_path)[None]
        with torch.no_grad():
            z_hr, z_lr = stage.codec.encode(hr), stage.codec.encode(upsample_to(lr, tuple(hr.shape[-2:])))
            expected_sr = sample_with_seeds(stage.denoiser, stage.codec, stage.scheduler(), lr, 2, [validation_seed(42, index)], 1)
            decoded = stage.codec.decode(z_0)
        assert float(rows[pair.name]["latent_mse"]) == pytest.approx(float((z_0 - z_hr).pow(2).mean()), rel=1e-4)
        assert float(rows[pair.name]["latent_mse_copy"]) == pytest.approx(float((z_lr - z_hr).pow(2).mean()), rel=1e-4)
        # The image written is the saved latent decoded, and the same as the sampler's own output.
        written = read_rgb(Path(stage_run["sr_dir"]) / f"{pair.name}.png")
        assert torch.equal(written, (expected_sr[0].clamp(0, 1) * 255).round() / 255)
        assert torch.equal(written, (decoded[0].clamp(0, 1) * 255).round() / 255)
    # Baselines have no latents: their latent columns are n/a, not zero.
    assert all(value != value for key, value in bicubic_run["metrics"].items() if key.startswith("latent"))
