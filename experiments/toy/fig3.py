"""The paper's Fig. 3 at toy scale: scale-distilled x4 against direct x4, metric versus DDIM steps, several seeds.

YONOS-SR's central claim is that a student distilled from an x2 teacher is a better *one-step* x4 model than the
same network trained at x4 directly. This script asks it on the shipped tiny SD base (``yonos:tiny-sd``), the
bundled sample photos and the CPU, with the project's own commands only:

- ``teacher``: ``yonos fit -c experiments/tiny/teacher_x2.yaml`` for ``--teacher-steps`` steps;
- ``distilled``: ``yonos fit -c experiments/tiny/distill_x2_to_x4.yaml`` from that teacher, ``--student-steps``;
- ``direct, equal total``: ``yonos fit -c experiments/tiny/direct_x4.yaml`` for teacher + student steps (the same
  number of optimizer steps as the distilled model had in all);
- ``direct, equal x4``: the same direct run's checkpoint after ``--student-steps`` steps (the tiny yamls use a
  constant learning rate, so this is the run that trained for that many steps);

then ``yonos evaluate`` scores each on the held-out validation crops (bicubic x4 LR, PSNR-Y / SSIM-Y, no colour
fix) at 1, 2, 4, 8, 16 and 50 DDIM steps, noise seed = training seed. Every seed repeats all of it.
LPIPS needs AlexNet's weights (``--metrics psnr,ssim,lpips`` adds it where they are in the torch cache).

    python experiments/toy/fig3.py --out outputs/toy_fig3 --seeds 0 1 2

Reruns reuse finished trainings and evaluations. Writes ``OUT/sweep.csv`` (one row per seed, model and step
count), ``OUT/summary.md`` (mean and spread across seeds) and ``OUT/fig3.png``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from yonos.files import atomic_write, write_text_atomic

ROOT = Path(__file__).resolve().parents[2]
STEPS = (1, 2, 4, 8, 16, 50)
MODELS = ("distilled", "direct_equal_total", "direct_equal_x4", "bicubic")


def _yonos(*arguments: str) -> None:
    """One yonos command in a fresh process (as a user runs it); raises if it fails."""
    command = [sys.executable, "-m", "yonos", *arguments]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def fit(config: str, folder: Path, steps: int, seed: int, data: Path, *extra: str) -> Path:
    """Train one stage unless ``folder/final.ckpt`` exists; returns the checkpoint folder."""
    final = folder / "final.ckpt"
    if not final.is_file():
        _yonos(
            "fit", "-c", config, f"--seed_everything={seed}", f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
            f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val_crops'}", *extra,
        )
        with atomic_write(final) as partial:  # final.ckpt appears only once the run has finished
            shutil.copyfile(folder / "checkpoints" / "last.ckpt", partial)
    return folder


def run_seed(seed: int, args: argparse.Namespace) -> Path:
    """All trainings and the evaluation of one seed; returns its ``sweep.csv``."""
    out = args.out / f"seed{seed}"
    sweep = out / "eval" / "sweep.csv"
    if sweep.is_file():
        return sweep
    teacher = fit("experiments/tiny/teacher_x2.yaml", out / "teacher_x2", args.teacher_steps, seed, args.data)
    distilled = fit(
        "experiments/tiny/distill_x2_to_x4.yaml", out / "distilled_x4", args.student_steps, seed, args.data,
        f"--model.init_args.teacher_ckpt={teacher / 'final.ckpt'}",
    )
    total = args.teacher_steps + args.student_steps
    direct = fit("experiments/tiny/direct_x4.yaml", out / "direct_x4", total, seed, args.data)
    equal_x4 = direct / "checkpoints" / f"step{args.student_steps:06d}.ckpt"
    if not equal_x4.is_file():
        raise FileNotFoundError(f"{equal_x4}: the direct run saves every 100 steps; --student-steps must be a multiple of 100")
    models = [distilled / "final.ckpt", direct / "final.ckpt", equal_x4, "bicubic"]
    pairs = [item for model, label in zip(models, MODELS) for item in ("--model", str(model), "--label", label)]
    _yonos(
        "evaluate", *pairs, "--data", str(args.data / "val_crops"), "--degradation", "bicubic", "--scale", "4",
        "--steps", ",".join(map(str, STEPS)), "--metrics", args.metrics, "--color-fix", "none",
        "--seed", str(seed), "--out", str(out / "eval"),
    )
    return sweep


def read_sweeps(sweeps: dict[int, Path]) -> list[dict[str, object]]:
    rows = []
    for seed, path in sweeps.items():
        with path.open() as handle:
            for row in csv.DictReader(handle):
                metrics = {key: float(value) for key, value in row.items() if key not in ("label", "steps") and value}
                steps = int(row["steps"]) if row["steps"] else STEPS[0]  # bicubic has no steps: filed under the first
                rows.append({"seed": seed, "model": row["label"], "steps": steps, **metrics})
    return rows


def summarise(rows: list[dict[str, object]], metrics: list[str]) -> dict[tuple[str, int], dict[str, tuple[float, float, list[float]]]]:
    """(model, steps) -> metric -> (mean, sample standard deviation, per-seed values)."""
    table: dict[tuple[str, int], dict[str, tuple[float, float, list[float]]]] = {}
    for model in MODELS:
        for steps in STEPS:
            chosen = [row for row in rows if row["model"] == model and row["steps"] == steps]
            if not chosen:
                continue
            table[(model, steps)] = {}
            for metric in metrics:
                values = [float(row[metric]) for row in sorted(chosen, key=lambda r: r["seed"])]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                table[(model, steps)][metric] = (statistics.mean(values), spread, values)
    return table


def markdown(table, metrics: list[str], seeds: list[int], args: argparse.Namespace) -> str:
    header = (
        f"Toy Fig. 3: x4 on the 14 held-out 128-px crops (bicubic LR), teacher {args.teacher_steps} + student "
        f"{args.student_steps} steps, direct {args.teacher_steps + args.student_steps} (equal total) or "
        f"{args.student_steps} (equal x4) steps; mean ± standard deviation over seeds {seeds}.\n\n"
    )
    lines: list[str] = []
    for metric in metrics:
        digits = 2 if metric == "psnr" else 4
        lines += ["", f"| {metric.upper()}-Y | " + " | ".join(f"{s} step{'s' * (s > 1)}" for s in STEPS) + " |",
                  "|---" * (1 + len(STEPS)) + "|"]
        for model in MODELS:
            cells = []
            for steps in STEPS:
                entry = table.get((model, steps)) or (table.get((model, STEPS[0])) if model == "bicubic" else None)
                cells.append(f"{entry[metric][0]:.{digits}f} ± {entry[metric][1]:.{digits}f}" if entry else "")
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def plot(table, metrics: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6))
    for axis, metric in zip(list(axes) if len(metrics) > 1 else [axes], metrics):
        for model in MODELS:
            points = [(steps, *table[(model, steps)][metric][:2]) for steps in STEPS if (model, steps) in table]
            if model == "bicubic":
                axis.axhline(points[0][1], color="gray", linestyle="--", label="bicubic")
                continue
            xs, means, spreads = zip(*points)
            axis.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, label=model)
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(STEPS), [str(s) for s in STEPS])
        axis.set_xlabel("DDIM steps")
        axis.set_ylabel(f"{metric.upper()}-Y")
        axis.grid(alpha=0.3)
    axes_list = list(axes) if len(metrics) > 1 else [axes]
    axes_list[0].legend(fontsize=8)
    figure.suptitle("x4 on held-out crops: scale-distilled vs direct (tiny SD base, CPU)")
    figure.tight_layout()
    with atomic_write(path) as partial:
        figure.savefig(partial, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/toy_fig3"))
    parser.add_argument("--data", type=Path, default=Path("data/samples"), help="prepare-samples layout (made if absent)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-steps", type=int, default=200)
    parser.add_argument("--student-steps", type=int, default=200)
    parser.add_argument("--metrics", default="psnr,ssim", help="for yonos evaluate; lpips needs AlexNet's weights")
    args = parser.parse_args()
    args.out, args.data = args.out.resolve(), args.data.resolve()
    _yonos("prepare-samples", "--out", str(args.data))
    sweeps = {seed: run_seed(seed, args) for seed in args.seeds}
    rows = read_sweeps(sweeps)
    metrics = [m for m in args.metrics.split(",") if m in rows[0]]
    table = summarise(rows, metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "sweep.csv") as partial, partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["seed", "model", "steps", *metrics])
        writer.writeheader()
        writer.writerows({key: row[key] for key in ["seed", "model", "steps", *metrics]} for row in rows)
    text = markdown(table, metrics, args.seeds, args)
    write_text_atomic(args.out / "summary.md", text)
    plot(table, metrics, args.out / "fig3.png")
    print(text)


if __name__ == "__main__":
    main()
