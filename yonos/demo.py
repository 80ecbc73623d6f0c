"""``yonos demo``: the embedded default run, end to end on the CPU with tiny models and the sample photos.

Prepares the sample images, runs the chain teacher x2 -> student x4 (resuming if a previous demo was
interrupted), validates both stages, super-resolves one validation image at x4 with the student, and prints
where everything is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

from yonos.chain import run_chain
from yonos.degradations import bicubic_downsample
from yonos.images import read_rgb, save_image_atomic
from yonos.samples import prepare_samples

TINY_CHAIN = ("experiments/tiny/teacher_x2.yaml", "experiments/tiny/distill_x2_to_x4.yaml")


def _cli(arguments: list[str]):
    from yonos.cli import run

    # LightningCLI reads these arguments, not the ones `yonos demo` was started with.
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        return run(arguments)


def _stage_overrides(stage_dir: Path, data_dir: Path) -> list[str]:
    return [
        f"--data.train_dir={data_dir / 'train'}",
        f"--data.val_dir={data_dir / 'val'}",
        f"--trainer.default_root_dir={stage_dir}",
        f"--trainer.logger.init_args.save_dir={stage_dir}",
    ]


def run_demo(
    configs: tuple[str, ...] = TINY_CHAIN,
    data_dir: str = "data/samples",
    out_dir: str = "outputs/tiny/chain",
    max_steps: int | None = None,
    hr_size: int | None = None,
) -> dict[str, object]:
    """Run the demo; returns the paths written and each stage's validation metrics."""
    samples = prepare_samples(data_dir)
    out, data = Path(out_dir), Path(data_dir)
    budget: list[str] = []
    if max_steps is not None:
        budget += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"]
    if hr_size is not None:
        budget.append(f"--data.hr_size={hr_size}")

    # Train: teacher x2, then the x4 student distilled from it (finished stages are skipped on a rerun).
    data_args = [f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val'}"]
    finals = run_chain(list(configs), out, extra=data_args + budget)

    # Validate every stage on the same validation images.
    metrics: dict[str, dict[str, float]] = {}
    for (name, checkpoint), config in zip(finals.items(), configs):
        arguments = ["validate", "-c", config, *_stage_overrides(out / name, data), *budget, f"--ckpt_path={checkpoint}"]
        if name.startswith("student"):
            arguments.append(f"--model.init_args.teacher_ckpt={list(finals.values())[0]}")
        trainer = _cli(arguments).trainer
        metrics[name] = {key: float(value) for key, value in trainer.callback_metrics.items()}

    # Super-resolve one validation image x4 with the student, from its bicubic x4 LR.
    student, student_ckpt = list(finals.items())[-1]
    hr = read_rgb(samples["val"][0])
    height, width = (s - s % 4 for s in hr.shape[-2:])
    lr = bicubic_downsample(hr[None, :, :height, :width], 4)[0]
    lr_path = save_image_atomic(lr, out / "demo_input" / samples["val"][0].name)
    predict_dir = out / student / "predict"  # SRImageWriter's default: <trainer.default_root_dir>/predict
    (predict_dir / lr_path.name).unlink(missing_ok=True)  # the demo's own output from an earlier run
    _cli(
        [
            "predict", "-c", configs[-1], *_stage_overrides(out / student, data), *budget, f"--data.predict_dir={lr_path.parent}",
            f"--model.init_args.teacher_ckpt={list(finals.values())[-2]}", f"--ckpt_path={student_ckpt}",
        ]
    )
    return {
        "checkpoints": finals,
        "lr_input": lr_path,
        "sr_output": predict_dir / lr_path.name,
        "tensorboard": out,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yonos demo", description=__doc__)
    parser.add_argument("--data-dir", default="data/samples")
    parser.add_argument("--out-dir", default="outputs/tiny/chain")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps of every stage")
    args = parser.parse_args(argv)
    result = run_demo(data_dir=args.data_dir, out_dir=args.out_dir, max_steps=args.max_steps)
    print("\nYONOS-SR demo finished (tiny random-init models: the numbers check the pipeline, not the method).")
    for name, path in result["checkpoints"].items():
        print(f"  {name:<14} {path}")
    print(f"  {'lr_input':<14} {result['lr_input']}")
    print(f"  {'sr_output':<14} {result['sr_output']}  (x4, one DDIM step)")
    print(f"  {'tensorboard':<14} tensorboard --logdir {result['tensorboard']}")
    for stage, values in result["metrics"].items():
        shown = ", ".join(f"{key} {value:.4f}" for key, value in sorted(values.items()))
        print(f"  {stage:<14} {shown}")
