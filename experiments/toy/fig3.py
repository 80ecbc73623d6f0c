"""The paper's Fig. 3 at toy scale, with the controls it needs: does scale distillation beat training on the ground
truth when the teacher is good? x4 and x8, on the shipped tiny SD base (``yonos:tiny-sd``), with the project's
own commands only (every network through ``yonos fit``, every score through ``yonos evaluate``).

Per seed (``--teacher-steps`` T, ``--arm-steps`` N):

- ``teacher_x2``: ``experiments/tiny/teacher_x2.yaml`` for T steps from the base, validated on the training
  split's crops (``train_crops``) every 200 steps; its gate: one-step latent MSE at most ``GATE_RATIO`` (0.25) x
  copying the x4 student's condition, and a flat curve, the last validation within ``FLAT`` (5 %) of the one
  before (both printed, and checked: a failed gate is reported, not hidden);
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
128 px crops. Only the target and the initialisation differ between arms. The direct run stopped at N is resumed to
T + N (optimizer, EMA, learning rate, which is constant, and noise stream restored; the crop order restarts).

Scores: ``yonos evaluate`` on the held-out crops of ``yonos prepare-samples`` (bicubic LR; x4: ``val_crops``,
36 tiles of 128 px, and ``val_crops_64``, 156 of 64 px; x8: ``val_crops``) at 1, 2, 4, 8, 16 and 50 DDIM steps,
noise seed = training seed: latent MSE to E(HR) beside copying the condition, PSNR-Y, SSIM-Y, and the radially
averaged power-spectrum distance. Paired bootstrap intervals over crops, and the spread over seeds.

    python experiments/toy/fig3.py --out outputs/toy_fig3 --seeds 0 1 2

Seeds may run as separate processes into one ``--out`` (``--seeds 0 --only scores`` and ``--seeds 1 --only
scores`` side by side, then a last call with all seeds, which finds their work done and writes the report; ``make
fig3`` does that). Reruns reuse finished trainings and evaluations. Writes
``OUT/sweep.csv`` (seed, scale, crop set, arm, steps, metric means), ``OUT/summary.md`` and ``OUT/fig3.png``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import re
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


def fit_run(
    config: str, folder: Path, steps: int, seed: int, data: Path, *extra: str, val_every: int | None = None,
    accelerator: str = "auto",
) -> Path:
    """Train one run to ``steps`` unless ``folder/final_step{steps}.ckpt`` exists; a run that has stopped earlier
    (interrupted, or finished at a smaller ``steps``) resumes from its ``last.ckpt``. Validation runs on the
    training split's crops, so the curve that judges a teacher is never held-out data."""
    inputs = {"config": config, "seed": seed, "data": str(data), "extra": list(extra)}
    recorded = folder / "fit_inputs.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != inputs:
        raise ValueError(
            f"{folder} was trained from other inputs ({recorded}: another teacher, seed, data or config); "
            "give another --out or delete that folder"
        )
    final = folder / f"final_step{steps:06d}.ckpt"
    if not recorded.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(recorded, json.dumps(inputs, indent=1))
    if final.is_file():
        return final
    last = folder / "checkpoints" / "last.ckpt"
    _yonos(
        "fit", "-c", config, f"--seed_everything={seed}", f"--trainer.max_steps={steps}",
        "--trainer.enable_progress_bar=false", f"--trainer.accelerator={accelerator}", f"--trainer.default_root_dir={folder}",
        f"--trainer.logger.init_args.save_dir={folder}", f"--data.train_dir={data / 'train'}",
        f"--data.val_dir={data / 'train_crops'}", *extra,
        *([f"--trainer.val_check_interval={val_every}"] if val_every else []), *(["--ckpt_path", str(last)] if last.is_file() else []),
    )
    reached = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    if reached != steps:
        raise RuntimeError(
            f"{last} holds step {reached}, not {steps}: every step count must be a multiple of the yaml's "
            "checkpoint interval (every_n_train_steps: 200 for teacher/direct runs, 250 for distillation) or below it"
        )
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
    fit = functools.partial(fit_run, val_every=args.val_every, accelerator=args.accelerator)
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


def evaluate_seed(seed: int, args: argparse.Namespace) -> list[Path]:
    """``yonos evaluate`` of every arm of one seed (and of the x2 teacher at x2, for its held-out gate); returns the
    evaluation folders (one per scale and crop set), each holding ``<arm>/steps_<n>/per_image.csv``."""
    out = args.out / f"seed{seed}"
    metrics = "psnr,ssim,spectrum,latent_mse"
    folders = []
    teacher = out / "teacher_x2" / f"final_step{args.teacher_steps:06d}.ckpt"
    gate = out / "eval" / "x2_val_crops"
    _yonos(
        "evaluate", "--model", str(teacher), "--label", "teacher_x2", "--data", str(args.data / "val_crops"),
        "--scale", "2", "--steps", "1", "--metrics", metrics, "--seed", str(seed), "--out", str(gate),
    )
    folders.append(gate)
    for scale, crop_sets in CROP_SETS.items():
        chosen = [arm for arm in arms(args.teacher_steps, args.arm_steps) if arm.scale == scale]
        models = [item for arm in chosen for item in ("--model", str(checkpoint(out, arm)), "--label", arm.name)]
        for crop_set in crop_sets:
            if crop_set not in args.crop_sets:
                continue
            folder = out / "eval" / f"x{scale}_{crop_set}"
            _yonos(
                "evaluate", *models, "--model", "bicubic", "--label", "bicubic", "--data", str(args.data / crop_set),
                "--scale", str(scale), "--steps", ",".join(map(str, args.steps)), "--metrics", metrics,
                "--seed", str(seed), "--out", str(folder),
            )
            folders.append(folder)
    return folders


# Reading the results.


def read_per_image(folder: Path, seed: int) -> list[dict[str, object]]:
    """Every per-image row of one evaluation folder, with its seed, scale, crop set, arm and steps."""
    scale, crop_set = folder.name.split("_", 1)
    rows = []
    for path in sorted(folder.glob("*/*/per_image.csv")):
        arm, run = path.parent.parent.name, path.parent.name
        steps = int(run.removeprefix("steps_")) if run.startswith("steps_") else 0  # 0: a baseline, no steps
        with path.open() as handle:
            for row in csv.DictReader(handle):
                values = {m: float(row[m]) if row.get(m) not in (None, "") else math.nan for m in METRICS}
                rows.append({"seed": seed, "scale": int(scale[1:]), "crops": crop_set, "arm": arm, "steps": steps,
                             "name": row["name"], **values})
    return rows


def scalar_curve(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one logged scalar of a training run (TensorBoard events; resumed runs' files together)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted(run.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            # A validation after n optimizer steps is logged at step n - 1 (Lightning's step of the last batch).
            points.update({event.step + 1: event.value for event in accumulator.Scalars(tag)})
    return sorted(points.items())


@dataclass
class Gate:
    """A teacher judged on the training split's crops: its one-step latent MSE at the end of training, copying the
    condition of the student it teaches, the relative change over its last validation interval."""

    teacher: str
    student_condition: str
    latent_mse: float
    copy_student: float
    change: float

    @property
    def passed(self) -> bool:
        return self.latent_mse <= GATE_RATIO * self.copy_student and abs(self.change) <= FLAT


def teacher_gate(seed_dir: Path, teacher: str, student: str) -> Gate:
    curve = scalar_curve(seed_dir / teacher, "val/latent_mse")
    copy = scalar_curve(seed_dir / student, "val/latent_mse_copy")
    if len(curve) < 2 or not copy:
        return Gate(teacher, student, math.nan, math.nan, math.nan)
    change = curve[-1][1] / curve[-2][1] - 1.0
    return Gate(teacher, student, curve[-1][1], copy[-1][1], change)


def paired_bootstrap(differences: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of paired per-crop differences and its 95 % percentile bootstrap interval (crops resampled)."""
    import numpy as np

    values = np.asarray(differences, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _values(rows, scale: int, crops: str, arm: str, steps: int, metric: str) -> dict[tuple[str, int], float]:
    """(crop name, seed) -> the metric of one arm at one step count (baselines: ``steps`` 0)."""
    return {
        (str(row["name"]), int(row["seed"])): float(row[metric])
        for row in rows
        if (row["scale"], row["crops"], row["arm"], row["steps"]) == (scale, crops, arm, steps)
    }


def seed_means(rows, scale: int, crops: str, arm: str, steps: int, metric: str) -> dict[int, float]:
    """seed -> the metric's mean over crops (the unit of the seed spread)."""
    by_seed: dict[int, list[float]] = {}
    for (_, seed), value in _values(rows, scale, crops, arm, steps, metric).items():
        by_seed.setdefault(seed, []).append(value)
    return {seed: statistics.mean(v) for seed, v in sorted(by_seed.items())}


def photo_of(crop: str) -> str:
    """The photo a tile of ``yonos prepare-samples`` comes from (``chelsea_r0c1`` -> ``chelsea``)."""
    return re.sub(r"_r\d+c\d+$", "", crop)


def paired_differences(rows, scale: int, crops: str, first: str, second: str, steps: int, metric: str) -> dict[str, float]:
    """crop -> (first - second) averaged over the seeds both arms have for that crop: the same crop, seed and noise
    on both sides of every difference (the bootstrap's unit)."""
    a = _values(rows, scale, crops, first, steps, metric)
    b = _values(rows, scale, crops, second, 0 if second == "bicubic" else steps, metric)
    by_crop: dict[str, list[float]] = {}
    for crop, seed in sorted(a):
        if second == "bicubic":  # a baseline has one value per crop whatever the seed
            other = next((value for (name, _), value in b.items() if name == crop), None)
        else:
            other = b.get((crop, seed))
        if other is not None:
            by_crop.setdefault(crop, []).append(a[(crop, seed)] - other)
    return {crop: statistics.mean(v) for crop, v in by_crop.items()}


def mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


DIGITS = {"latent_mse": 5, "latent_mse_copy": 5, "psnr": 2, "ssim": 4, "spectrum": 3}


def _cell(values: dict[int, float] | list[float], metric: str) -> str:
    values = list(values.values()) if isinstance(values, dict) else values
    if not values or any(math.isnan(v) for v in values):
        return "n/a"
    mean, spread = mean_spread(values)
    return f"{mean:.{DIGITS[metric]}f} ± {spread:.{DIGITS[metric]}f}"


def arm_table(rows, scale: int, crops: str, names: list[str], steps: int, by_name: dict[str, Arm]) -> list[str]:
    """One row per arm at ``steps`` DDIM steps: mean ± standard deviation over seeds of the per-seed crop means."""
    shown = ("latent_mse", "latent_mse_copy", "psnr", "ssim", "spectrum")
    lines = ["| arm | init | target | optimizer steps (all) | latent MSE ↓ | copy z_lr ↓ | PSNR-Y ↑ | SSIM-Y ↑ | spectrum ↓ |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        arm = by_name.get(name)
        at = 0 if name == "bicubic" else steps
        cells = [_cell(seed_means(rows, scale, crops, name, at, m), m) for m in shown]
        about = (arm.init, arm.target, f"{arm.step} ({arm.total_steps})") if arm else ("-", "-", "-")
        lines.append(f"| {name} | {' | '.join(about)} | {' | '.join(cells)} |")
    return lines


def difference_table(rows, scale: int, crops: str, pairs: list[tuple[str, str]], steps: int) -> list[str]:
    """Paired differences (first arm - second) over the same crops, seeds and noise: the mean over crops of the
    per-crop difference (itself averaged over seeds), its 95 % bootstrap interval over crops, and on how many photos
    and seeds the first arm had the higher PSNR-Y. Tiles of one photo are correlated: the interval is a statement
    about these crops, the photo and seed counts are the coarser check."""
    lines = ["| comparison (first - second) | Δ latent MSE [95 % CI] (< 0: first better) | Δ PSNR-Y dB [95 % CI] | "
             "Δ SSIM-Y [95 % CI] | Δ spectrum [95 % CI] (< 0: first better) | photos better (PSNR) | seeds better (PSNR) |",
             "|---|---|---|---|---|---|---|"]
    for first, second in pairs:
        cells = []
        for metric in ("latent_mse", "psnr", "ssim", "spectrum"):
            differences = paired_differences(rows, scale, crops, first, second, steps, metric)
            if not differences or any(math.isnan(v) for v in differences.values()):
                cells.append("n/a")
                continue
            mean, low, high = paired_bootstrap(list(differences.values()))
            d = DIGITS[metric] + (1 if metric != "psnr" else 0)
            cells.append(f"{mean:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]")
        psnr = paired_differences(rows, scale, crops, first, second, steps, "psnr")
        photos: dict[str, list[float]] = {}
        for crop, value in psnr.items():
            photos.setdefault(photo_of(crop), []).append(value)
        cells.append(f"{sum(statistics.mean(v) > 0 for v in photos.values())} of {len(photos)}")
        mine = seed_means(rows, scale, crops, first, steps, "psnr")
        theirs = seed_means(rows, scale, crops, second, 0 if second == "bicubic" else steps, "psnr")
        seeds = [seed for seed in mine if seed in theirs or second == "bicubic"]
        base = lambda seed: theirs.get(seed, next(iter(theirs.values()), math.nan))  # noqa: E731
        cells.append(f"{sum(mine[seed] > base(seed) for seed in seeds)} of {len(seeds)}")
        lines.append(f"| {first} - {second} | {' | '.join(cells)} |")
    return lines


def steps_table(rows, scale: int, crops: str, names: list[str], metric: str, steps: tuple[int, ...]) -> list[str]:
    lines = [f"| {metric} | " + " | ".join(f"{n} step{'s' * (n > 1)}" for n in steps) + " |", "|---" * (1 + len(steps)) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(_cell(seed_means(rows, scale, crops, name, n, metric), metric) for n in steps) + " |")
    return lines


def gate_lines(gates: list[tuple[int, Gate]], held_out: dict[tuple[int, str], tuple[float, float]]) -> list[str]:
    lines = ["| teacher | seed | one-step latent MSE (train crops) | copying the student's condition | ratio | "
             "change over the last validation interval | gate | held-out latent MSE | held-out copy (student's condition) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, gate in gates:
        mine, copy = held_out.get((seed, gate.teacher), (math.nan, math.nan))
        lines.append(
            f"| {gate.teacher} | {seed} | {gate.latent_mse:.5f} | {gate.copy_student:.5f} ({gate.student_condition}) | "
            f"{gate.latent_mse / gate.copy_student:.2f} | {gate.change:+.1%} | {'passed' if gate.passed else 'FAILED'} | "
            f"{mine:.5f} | {copy:.5f} |"
        )
    return lines


def summarise(rows: list[dict[str, object]], gates, held_out, args: argparse.Namespace) -> str:
    t, n = args.teacher_steps, args.arm_steps
    by_name = {arm.name: arm for arm in arms(t, n)}
    x4 = ["distilled_x4", "gt_x4", "direct_x4", "direct_x4_equal_total", "bicubic"]
    x8 = ["distilled_x8", "gt_x8", "direct_x8", "direct_x8_equal_total", "bicubic"]
    seeds = sorted({int(r["seed"]) for r in rows})
    text = [
        f"# Toy Fig. 3 (tiny SD base, bicubic LR), seeds {seeds}: teacher x2 {t} steps, every arm {n} steps",
        "",
        f"Recipe of every run: last_timestep_prob 1 (every sample at t = T - 1), x0 parameterisation, EMA 0.99 with "
        f"warm-up, AdamW 1e-3 constant, batch 4 of 128 px crops. Cells: mean ± standard deviation over seeds of the "
        f"mean over crops; Δ: paired per crop (same noise), averaged over seeds, 95 % bootstrap interval over crops.",
        "",
        "## Teachers' gates (training split's crops; held-out: val_crops)",
        "",
        f"Gate: one-step latent MSE at most {GATE_RATIO} x copying the student's condition, and within {FLAT:.0%} of "
        "the validation before (a flat curve).",
        "",
        *gate_lines(gates, held_out),
    ]
    for scale, names, crop_sets in ((4, x4, CROP_SETS[4]), (8, x8, CROP_SETS[8])):
        d, g, direct, total = names[:4]
        for crops in crop_sets:
            if not any(r["scale"] == scale and r["crops"] == crops for r in rows):
                continue
            count = len({r["name"] for r in rows if r["scale"] == scale and r["crops"] == crops})
            text += ["", f"## x{scale}, {crops} ({count} held-out crops), 1 DDIM step", "", *arm_table(rows, scale, crops, names, 1, by_name)]
            text += ["", *difference_table(rows, scale, crops, [(d, g), (d, direct), (d, total), (g, direct), (d, "bicubic")], 1)]
            for metric in ("psnr", "latent_mse", "spectrum"):
                text += ["", *steps_table(rows, scale, crops, names[:4], metric, tuple(args.steps))]
    return "\n".join(text) + "\n"


def plot(rows: list[dict[str, object]], path: Path, steps: tuple[int, ...]) -> None:
    """PSNR-Y, latent MSE and spectrum distance against DDIM steps; x4 (128 px crops) above x8; error bars: seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("psnr", "PSNR-Y (dB) ↑"), ("latent_mse", "latent MSE to E(HR) ↓"), ("spectrum", "spectrum distance ↓"))
    figure, axes = plt.subplots(2, 3, figsize=(14, 7.5), squeeze=False)
    for row_axes, scale in zip(axes, (4, 8)):
        names = [a.name for a in arms(1, 1) if a.scale == scale]
        for axis, (metric, title) in zip(row_axes, panels):
            for name in names:
                points = [(n, *mean_spread(list(v.values()))) for n in steps if (v := seed_means(rows, scale, "val_crops", name, n, metric))]
                if points:
                    xs, means, spreads = zip(*points)
                    axis.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=name)
            if metric == "latent_mse":
                copy = seed_means(rows, scale, "val_crops", names[0], steps[0], "latent_mse_copy")
                if copy:
                    axis.axhline(statistics.mean(copy.values()), color="gray", linestyle=":", label="copy z_lr")
            else:
                base = seed_means(rows, scale, "val_crops", "bicubic", 0, metric)
                if base:
                    axis.axhline(statistics.mean(base.values()), color="gray", linestyle="--", label="bicubic")
            axis.set_xscale("log", base=2)
            axis.set_xticks(list(steps), [str(n) for n in steps])
            axis.set_title(f"x{scale}: {title}", fontsize=10)
            axis.set_xlabel("DDIM steps")
            axis.grid(alpha=0.3)
        row_axes[0].legend(fontsize=7)
        row_axes[1].legend(fontsize=7)
    figure.suptitle("Toy Fig. 3: scale-distilled vs ground-truth fine-tuned vs direct (tiny SD base, held-out 128 px crops)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=110)
    plt.close(figure)


def report(args: argparse.Namespace) -> str:
    """sweep.csv, summary.md and the plot from every seed's evaluation folders."""
    rows, gates, held_out = [], [], {}
    for seed in args.seeds:
        seed_dir = args.out / f"seed{seed}"
        for folder in sorted((seed_dir / "eval").iterdir()):
            rows += read_per_image(folder, seed)
        gates += [(seed, teacher_gate(seed_dir, "teacher_x2", "distilled_x4")),
                  (seed, teacher_gate(seed_dir, "distilled_x4", "distilled_x8"))]
        for teacher, student, scale in (("teacher_x2", "distilled_x4", 2), ("distilled_x4", "distilled_x8", 4)):
            mine = [r["latent_mse"] for r in rows if (r["seed"], r["arm"], r["scale"], r["crops"], r["steps"]) == (seed, teacher, scale, "val_crops", 1)]
            copy = [r["latent_mse_copy"] for r in rows if (r["seed"], r["arm"], r["scale"], r["crops"], r["steps"]) == (seed, student, scale * 2, "val_crops", 1)]
            held_out[(seed, teacher)] = (statistics.mean(mine) if mine else math.nan, statistics.mean(copy) if copy else math.nan)
    keys = ("seed", "scale", "crops", "arm", "steps")
    groups: dict[tuple, list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    with atomic_write(args.out / "sweep.csv") as partial, partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*keys, "crops_count", *METRICS])
        writer.writeheader()
        for key, group in sorted(groups.items(), key=lambda item: tuple(str(v) for v in item[0])):
            writer.writerow({**dict(zip(keys, key)), "crops_count": len(group),
                             **{m: f"{statistics.mean(float(r[m]) for r in group):.6g}" for m in METRICS}})
    text = summarise(rows, gates, held_out, args)
    write_text_atomic(args.out / "summary.md", text)
    plot(rows, args.plot or args.out / "fig3.png", tuple(args.steps))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_fig3"))
    parser.add_argument("--data", type=Path, default=Path("data/samples"), help="prepare-samples layout (made if absent)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-steps", type=int, default=1000, help="T: the x2 teacher's steps")
    parser.add_argument("--arm-steps", type=int, default=1000, help="N: each x4 and x8 arm's steps")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="DDIM step counts scored")
    parser.add_argument("--crop-sets", nargs="+", default=["val_crops", "val_crops_64"], help="held-out crop folders under --data")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator of every fit (auto: a GPU when one is visible)")
    parser.add_argument("--val-every", type=int, default=None, help="validation interval (default: the yamls', 200 / 250)")
    parser.add_argument("--plot", type=Path, default=None, help="where the figure goes (default OUT/fig3.png)")
    parser.add_argument(
        "--only", choices=["train", "scores", "all"], default="all",
        help="train: the trainings; scores: trainings and evaluations (one seed of several running side by side); all: and the report",
    )
    args = parser.parse_args()
    args.out, args.data = args.out.resolve(), args.data.resolve()
    if not (args.data / "train_crops").is_dir():
        _yonos("prepare-samples", "--out", str(args.data))
    for seed in args.seeds:
        train_seed(seed, args)
        if args.only != "train":
            evaluate_seed(seed, args)
    if args.only == "all":
        print(report(args))


if __name__ == "__main__":
    main()
