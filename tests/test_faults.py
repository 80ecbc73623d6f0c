"""Fault injection (one test per fault): what a damaged or untrusted input does to a command. Each test reproduces
the fault on the tiny model and asserts the one-line message that names the file, and that nothing is loaded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yonos.export import check_pipeline_folder, load_pipeline_folder
from yonos.images import save_image_atomic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(teacher_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from yonos.export import export_pipeline

    return export_pipeline(teacher_ckpt, tmp_path_factory.mktemp("export") / "model")


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def _run(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "YONOS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "yonos", *arguments], cwd=ROOT, capture_output=True, text=True, env=env)


def test_an_intact_export_passes_the_check_and_loads(exported: Path):
    assert check_pipeline_folder(exported) == exported
    assert load_pipeline_folder(exported).unet is not None


@pytest.mark.parametrize("component", ["unet", "vae", "scheduler", "prompt_embedding"])
def test_a_missing_component_is_named_before_anything_loads(exported: Path, tmp_path: Path, component: str):
    model = _copy(exported, tmp_path)
    shutil.rmtree(model / component)
    with pytest.raises(FileNotFoundError, match=f"component '{component}' .* is missing: no {component}/config.json"):
        check_pipeline_folder(model)


def test_a_component_without_weights_is_named(exported: Path, tmp_path: Path):
    model = _copy(exported, tmp_path)
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"component 'vae' has no weights \(vae/\*\.safetensors\)"):
        check_pipeline_folder(model)


def _pickle_unet(model: Path) -> Path:
    """The UNet's weights as a .bin (a pickle) in place of its safetensors: what an untrusted folder may hold."""
    from safetensors.torch import load_file

    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), model / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    return model


def test_pickle_weights_are_refused_by_name_not_loaded(exported: Path, tmp_path: Path, monkeypatch):
    model = _pickle_unet(_copy(exported, tmp_path))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("a pickle was opened"))
    with pytest.raises(ValueError, match=r"holds only pickle weights \(diffusion_pytorch_model\.bin\)"):
        load_pipeline_folder(model)


@pytest.mark.parametrize("fault", ["no unet", "pickle unet"])
def test_upscale_and_evaluate_say_it_in_one_line(exported: Path, tmp_path: Path, fault: str):
    model = _copy(exported, tmp_path)
    if fault == "no unet":
        shutil.rmtree(model / "unet")
    else:
        _pickle_unet(model)
    image = tmp_path / "hr" / "in.png"
    save_image_atomic(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)), image)
    expected = "no unet/config.json" if fault == "no unet" else "holds only pickle weights"
    for done in (
        _run("upscale", str(image), "--model", str(model), "-o", str(tmp_path / "out")),
        _run("evaluate", "--model", str(model), "--data", str(tmp_path / "hr"), "--scale", "2", "--metrics", "psnr",
             "--out", str(tmp_path / "eval")),
    ):
        assert done.returncode == 2, done.stderr[-2000:]
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert expected in lines[-1] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
