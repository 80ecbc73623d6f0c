"""The shipped full-size recipes say what experiments/README.md says they do (parsed by the real CLI)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yonos.cli import main

ROOT = Path(__file__).resolve().parents[1]
REALESRGAN = ("teacher_x2", "distill_x2_to_x4", "decoder_finetune", "direct_x4")


def _resolved(name: str, capsys) -> dict:
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(ROOT / "experiments" / f"{name}.yaml"), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("stage", REALESRGAN)
def test_realesrgan_recipes_are_the_bicubic_ones_with_the_stablesr_degradation(stage: str, capsys):
    real, bicubic = _resolved(f"{stage}_realesrgan", capsys), _resolved(stage, capsys)
    assert (real["data"]["degradation"], real["data"]["preset"], real["data"]["shared_degradation"]) == (
        "realesrgan", "stablesr", True
    )
    assert bicubic["data"]["degradation"] == "bicubic"
    assert real["data"]["hr_size"] == bicubic["data"]["hr_size"] == 512
    assert real["trainer"]["max_steps"] == bicubic["trainer"]["max_steps"]
    paths = ("teacher_ckpt", "denoiser_ckpt")
    strip = lambda model: {k: v for k, v in model["init_args"].items() if k not in paths}  # noqa: E731
    assert strip(real["model"]) == strip(bicubic["model"])
    assert real["trainer"]["default_root_dir"].startswith("outputs/realesrgan/")


def test_the_sd21_768_teacher_trains_its_native_v_prediction(capsys):
    config = _resolved("teacher_x2_sd21_768", capsys)
    init = config["model"]["init_args"]
    assert init["backbone"]["pretrained"] == "stabilityai/stable-diffusion-2-1"
    assert init["prediction_type"] == "v_prediction"
    assert config["data"]["hr_size"] == 768


def test_the_decoder_recipe_trains_on_vgg_lpips_and_reports_alex(capsys):
    init = _resolved("decoder_finetune", capsys)["model"]["init_args"]
    assert (init["lpips_net"], init["val_lpips_net"], init["lpips_weight"]) == ("vgg", "alex", 1.0)


def test_the_timestep_ablation_script_runs_end_to_end(tmp_path: Path, monkeypatch):
    """README's ablation numbers come from this script: it must run as shipped (two steps, one variant here)."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", [
        "timesteps.py", "--out", str(tmp_path / "out"), "--data", str(tmp_path / "samples"), "--steps", "2",
        "--seeds", "0", "--noise-seeds", "1", "--variants", "last_timestep_prob 0.25",
    ])
    runpy.run_path(str(ROOT / "experiments" / "ablations" / "timesteps.py"), run_name="__main__")
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| last_timestep_prob 0.25 |" in summary and "uniform" not in summary
    import torch

    checkpoint = torch.load(tmp_path / "out" / "last_timestep_prob_0.25" / "seed0" / "final.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["last_timestep_prob"] == 0.25 and checkpoint["global_step"] == 2
