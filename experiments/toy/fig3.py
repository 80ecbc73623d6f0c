"""The paper's Fig. 3 at toy scale, with the controls it needs: does scale distillation beat training on the ground
truth when the teacher is good? x4 and x8, on the shipped tiny SD base (``yonos:tiny-sd``), with the project's
own commands only (every network through ``yonos fit``, every score through ``yonos evaluate``).

Per seed (``--teacher-steps`` T, ``--arm-steps`` N):

- ``teacher_x2``: ``experiments/tiny/teacher_x2.yaml`` for T steps from the base, validated on the training
  split's crops (``train_crops``) every 200 steps; its gate: one-step latent MSE far below copying the x4
  student's condition, and a flat curve (both printed, and checked: a failed gate is reported, not hidden);
- x4, all from that teacher, N steps each:
  ``distilled_x4`` (the teacher's x0 as the target, ``distill_x2_to_x4.yaml``),
  ``gt_x4`` (the same module and init, ``gt_mix: 1``: z_hr as the target);
  ``direct_x4``: ``direct_x4.yaml`` from the base, N steps (equal x4 steps), then resumed to T + N (equal
  total optimizer steps, the teacher's counted);
- x8, along x2 -> x4 -> x8 with ``distilled_x4`` as the teacher (its own gate is reported too): ``distilled_x8``,
  ``gt_x8`` (N steps each) and ``direct_x8`` from the base at N and at T + 2N steps.

The recipe is the tiny world's everywhere (docs/method.md, "The tiny world"): every sample at the one-step
timestep T - 1 (``last_timestep_prob: 1``), x0 (sample) parameterisation with a residual target and a zeroed
output layer where a network starts from the base, EMA 0.99 with warm-up, AdamW at a constant 1e-3, batch 4 of
128 px crops. Only the target and the initialisation differ between arms. With the constant learning rate, the
direct run stopped at N and resumed to T + N is one longer run.

Scores: ``yonos evaluate`` on the held-out crops of ``yonos prepare-samples`` (bicubic LR; x4: ``val_crops``,
36 tiles of 128 px, and ``val_crops_64``, 156 of 64 px; x8: ``val_crops``) at 1, 2, 4, 8, 16 and 50 DDIM steps,
noise seed = training seed: latent MSE to E(HR) beside copying the condition, PSNR-Y, SSIM-Y, and the radially
averaged power-spectrum distance. Paired bootstrap intervals over crops, and the spread over seeds.

    python experiments/toy/fig3.py --out outputs/toy_fig3 --seeds 0 1 2

Seeds may run as separate processes into one ``--out`` (``--seeds 0`` and ``--seeds 1`` side by side, then a last
call with all seeds, which finds their work done). Reruns reuse finished trainings and evaluations. Writes
``OUT/sweep.csv`` (seed, scale, crop set, arm, steps, metric means), ``OUT/summary.md`` and ``OUT/fig3.png``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from yonos.files import atomic_write, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
STEPS = (1, 2, 4, 8, 16, 50)
METRICS = ("latent_mse", "latent_mse_copy", "psnr", "ssim", "spectrum")
CROP_SETS = {4: ("val_crops", "val_crops_64"), 8: ("val_crops",)}
GATE_RATIO = 0.25  # a teacher's one-step latent MSE must be below this fraction of copying the student's condition
FLAT = 0.05  # ... and its last validation within this relative change of the one before


@dataclass(frozen=True)
class Arm:
    """One row of the tables: a network read from one checkpoint of one training run."""

    name: str
    scale: int
    run: str  # training folder under the seed's folder
    step: int  # which checkpoint of it
    init: str
    target: str
    total_steps: int  # optimizer steps in all, the teachers' counted


def arms(teacher_steps: int, arm_steps: int) -> list[Arm]:
    t, n = teacher_steps, arm_steps
    return [
        Arm("distilled_x4", 4, "distilled_x4", n, "teacher_x2", "teacher x0 (x2 LR)", t + n),
        Arm("gt_x4", 4, "gt_x4", n, "teacher_x2", "z_hr", t + n),
        Arm("direct_x4", 4, "direct_x4", n, "base", "z_hr", n),
        Arm("direct_x4_equal_total", 4, "direct_x4", t + n, "base", "z_hr", t + n),
        Arm("distilled_x8", 8, "distilled_x8", n, "distilled_x4", "distilled_x4 x0 (x4 LR)", t + 2 * n),
        Arm("gt_x8", 8, "gt_x8", n, "distilled_x4", "z_hr", t + 2 * n),
        Arm("direct_x8", 8, "direct_x8", n, "base", "z_hr", n),
        Arm("direct_x8_equal_total", 8, "direct_x8", t + 2 * n, "base", "z_hr", t + 2 * n),
    ]


def _yonos(*arguments: str) -> None:
    """One yonos command in a fresh process (as a user runs it); raises if it fails."""
    command = [sys.executable, "-m", "yonos", *arguments]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def fit(config: str, folder: Path, steps: int, seed: int, data: Path, *extra: str) -> Path:
    """Train one run to ``steps`` unless ``folder/final_step{steps}.ckpt`` exists; a run that has stopped earlier
    (interrupted, or finished at a smaller ``steps``) resumes from its ``last.ckpt``. Validation runs on the
    training split's crops, so the curve that judges a teacher is never held-out data."""
    final = folder / f"final_step{steps:06d}.ckpt"
    if final.is_file():
        return final
    last = folder / "checkpoints" / "last.ckpt"
    _yonos(
        "fit", "-c", config, f"--seed_everything={seed}", f"--trainer.max_steps={steps}",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={folder}",
        f"--trainer.logger.init_args.save_dir={folder}", f"--data.train_dir={data / 'train'}",
        f"--data.val_dir={data / 'train_crops'}", *extra, *(["--ckpt_path", str(last)] if last.is_file() else []),
    )
    reached = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    if reached != steps:
        raise RuntimeError(f"{last} holds step {reached}, not {steps}: a step count must be a multiple of the save interval")
    with atomic_write(final) as partial:  # final_step*.ckpt appears only once the run has reached that step
        shutil.copyfile(last, partial)
    return final


def checkpoint(seed_dir: Path, arm: Arm) -> Path:
    path = seed_dir / arm.run / f"final_step{arm.step:06d}.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run the trainings first (this script without --only)")
    return path


def train_seed(seed: int, args: argparse.Namespace) -> Path:
    """Every training of one seed; returns its folder."""
    out = args.out / f"seed{seed}"
    t, n, data = args.teacher_steps, args.arm_steps, args.data
    teacher = fit("experiments/tiny/teacher_x2.yaml", out / "teacher_x2", t, seed, data)
    for name, gt_mix in (("distilled_x4", 0.0), ("gt_x4", 1.0)):
        fit(
            "experiments/tiny/distill_x2_to_x4.yaml", out / name, n, seed, data,
            f"--model.init_args.teacher_ckpt={teacher}", f"--model.init_args.gt_mix={gt_mix}",
        )
    for steps in (n, t + n):  # equal x4 steps, then on to equal total steps
        fit("experiments/tiny/direct_x4.yaml", out / "direct_x4", steps, seed, data)
    teacher_x4 = out / "distilled_x4" / f"final_step{n:06d}.ckpt"
    for name, gt_mix in (("distilled_x8", 0.0), ("gt_x8", 1.0)):
        fit(
            "experiments/tiny/distill_x4_to_x8.yaml", out / name, n, seed, data,
            f"--model.init_args.teacher_ckpt={teacher_x4}", f"--model.init_args.gt_mix={gt_mix}",
        )
    for steps in (n, t + 2 * n):
        fit(
            "experiments/tiny/direct_x4.yaml", out / "direct_x8", steps, seed, data,
            "--model.init_args.scale=8", "--data.scales=[8]",
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_fig3"))
    parser.add_argument("--data", type=Path, default=Path("data/samples"), help="prepare-samples layout (made if absent)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-steps", type=int, default=1000, help="T: the x2 teacher's steps")
    parser.add_argument("--arm-steps", type=int, default=1000, help="N: each x4 and x8 arm's steps")
    parser.add_argument("--only", choices=["train", "all"], default="all", help="train: trainings only (no scores)")
    args = parser.parse_args()
    args.out, args.data = args.out.resolve(), args.data.resolve()
    if not (args.data / "train_crops").is_dir():
        _yonos("prepare-samples", "--out", str(args.data))
    for seed in args.seeds:
        train_seed(seed, args)


if __name__ == "__main__":
    main()
