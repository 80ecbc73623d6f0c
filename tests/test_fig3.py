"""experiments/toy/fig3.py end to end at a toy size (two optimizer steps per run, two crops per set), so the script
that makes the README's Fig. 3 tables cannot rot; and the statistics it reports."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from skimage import data as skdata

from yonos.images import save_image_atomic

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "toy" / "fig3.py"


def _script():
    spec = importlib.util.spec_from_file_location("fig3", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fig3"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _crop(name: str, size: int, top: int, left: int) -> torch.Tensor:
    array = getattr(skdata, name)()
    return torch.from_numpy(array[top : top + size, left : left + size].copy()).permute(2, 0, 1).float() / 255


def test_paired_bootstrap_interval():
    fig3 = _script()
    assert fig3.paired_bootstrap([0.3] * 12) == pytest.approx((0.3, 0.3, 0.3))
    differences = [float(v) for v in torch.randn(40, generator=torch.Generator().manual_seed(0)) + 0.5]
    mean, low, high = fig3.paired_bootstrap(differences)
    assert low < mean < high and mean == pytest.approx(sum(differences) / 40)
    standard_error = float(torch.tensor(differences).std()) / 40**0.5
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.15)  # the normal interval, roughly


@pytest.mark.slow  # about two minutes of CPU: fifteen yonos processes
def test_fig3_runs_every_arm_at_toy_size(tmp_path: Path):
    data = tmp_path / "data"
    for name, folder, size, top, left in [
        ("astronaut", "train", 256, 0, 0), ("coffee", "train", 256, 50, 100),
        ("astronaut", "train_crops", 128, 300, 300), ("coffee", "train_crops", 128, 200, 350),
        ("chelsea", "val_crops", 128, 0, 0), ("chelsea", "val_crops", 128, 128, 128),
        ("chelsea", "val_crops_64", 64, 0, 0), ("chelsea", "val_crops_64", 64, 64, 64),
    ]:
        save_image_atomic(_crop(name, size, top, left), data / folder / f"{name}_{top}_{left}.png")
    out = tmp_path / "fig3"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "YONOS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--out", str(out), "--data", str(data), "--seeds", "0", "--teacher-steps", "2",
               "--arm-steps", "2", "--val-every", "1", "--steps", "1", "2", "--plot", str(out / "plot.png")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]

    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    runs = {(r["scale"], r["crops"], r["arm"], r["steps"]) for r in rows}
    for arm in ("distilled_x4", "gt_x4", "direct_x4", "direct_x4_equal_total"):
        for crops in ("val_crops", "val_crops_64"):
            assert {("4", crops, arm, "1"), ("4", crops, arm, "2")} <= runs
    for arm in ("distilled_x8", "gt_x8", "direct_x8", "direct_x8_equal_total"):
        assert {("8", "val_crops", arm, "1"), ("8", "val_crops", arm, "2")} <= runs
    assert ("2", "val_crops", "teacher_x2", "1") in runs and ("4", "val_crops", "bicubic", "0") in runs
    assert all(float(r["latent_mse"]) > 0 for r in rows if r["arm"] != "bicubic")

    # Each arm trained what it claims: its init, its target, its step count.
    seed = out / "seed0"
    load = lambda path: torch.load(path, map_location="cpu", weights_only=False)  # noqa: E731
    teacher = seed / "teacher_x2" / "final_step000002.ckpt"
    for run, source, gt_mix in [("distilled_x4", teacher, 0.0), ("gt_x4", teacher, 1.0),
                                ("distilled_x8", seed / "distilled_x4" / "final_step000002.ckpt", 0.0),
                                ("gt_x8", seed / "distilled_x4" / "final_step000002.ckpt", 1.0)]:
        hparams = load(seed / run / "final_step000002.ckpt")["hyper_parameters"]
        assert (hparams["teacher_ckpt"], hparams["gt_mix"]) == (str(source), gt_mix)
    for run, scale, total in (("direct_x4", 4, 4), ("direct_x8", 8, 6)):
        for steps in (2, total):
            checkpoint = load(seed / run / f"final_step{steps:06d}.ckpt")
            assert checkpoint["global_step"] == steps and checkpoint["hyper_parameters"]["scale"] == scale
            assert checkpoint["hyper_parameters"]["backbone"]["pretrained"] == "yonos:tiny-sd"  # from the base

    # A rerun finds everything done; a rerun whose teacher differs is refused, not silently reused.
    (seed / "distilled_x4" / "fit_inputs.json").write_text('{"config": "another"}')
    refused = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "trained from other inputs" in refused.stderr

    summary = (out / "summary.md").read_text()
    assert "| teacher_x2 | 0 |" in summary and "| distilled_x4 | 0 |" in summary and "nan" not in summary.split("## x4")[0]
    assert "| distilled_x4 - gt_x4 |" in summary and "| distilled_x8 - direct_x8_equal_total |" in summary
    # The paired difference's sign and size: first minus second, as the crop means of sweep.csv give it.
    psnr = {r["arm"]: float(r["psnr"]) for r in rows if (r["scale"], r["crops"], r["steps"]) == ("4", "val_crops", "1")}
    line = next(line for line in summary.splitlines() if line.startswith("| distilled_x4 - gt_x4 |"))
    assert float(line.split("|")[3].split()[0]) == pytest.approx(psnr["distilled_x4"] - psnr["gt_x4"], abs=0.006)
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
