"""``yonos demo``: the embedded default run, end to end on the CPU with tiny models and the sample photos.

Prepares the sample images, trains the tiny x2 teacher (resuming if a previous demo was interrupted),
validates it, super-resolves one validation image, and prints where everything is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yonos.degradations import bicubic_downsample
from yonos.images import read_rgb, save_image_atomic
from yonos.samples import prepare_samples

TINY_TEACHER = "experiments/tiny/teacher_x2.yaml"


def _cli(arguments: list[str]):
    from unittest import mock

    from yonos.cli import main

    # LightningCLI reads these arguments, not the ones `yonos demo` was started with.
    with mock.patch.object(sys, "argv", sys.argv[:1]):
        return main(arguments)


def run_demo(
    config: str = TINY_TEACHER,
    data_dir: str = "data/samples",
    out_dir: str = "outputs/tiny/teacher_x2",
    max_steps: int | None = None,
    hr_size: int | None = None,
) -> dict[str, object]:
    """Run the demo; returns the paths written and the validation metrics."""
    samples = prepare_samples(data_dir)
    out = Path(out_dir)
    overrides = [
        f"--data.train_dir={Path(data_dir) / 'train'}",
        f"--data.val_dir={Path(data_dir) / 'val'}",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
    ]
    if max_steps is not None:
        overrides += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"]
    if hr_size is not None:
        overrides.append(f"--data.hr_size={hr_size}")

    # Train (resumes from last.ckpt when an earlier demo was interrupted; finishes at once when complete).
    _cli(["fit", "-c", config, *overrides, "--ckpt_path=last"])
    checkpoint = out / "checkpoints" / "last.ckpt"

    # Validate the trained teacher.
    validation = _cli(["validate", "-c", config, *overrides, f"--ckpt_path={checkpoint}"])
    metrics = {key: float(value) for key, value in validation.trainer.callback_metrics.items()}

    # Super-resolve one validation image from its bicubic x2 LR.
    hr = read_rgb(samples["val"][0])
    height, width = (s - s % 2 for s in hr.shape[-2:])
    lr = bicubic_downsample(hr[None, :, :height, :width], 2)[0]
    lr_dir = out / "demo_input"
    lr_path = save_image_atomic(lr, lr_dir / samples["val"][0].name)
    predict_dir = out / "predict"  # SRImageWriter's default: <trainer.default_root_dir>/predict
    (predict_dir / lr_path.name).unlink(missing_ok=True)  # the demo's own output from an earlier run
    _cli(["predict", "-c", config, *overrides, f"--data.predict_dir={lr_dir}", f"--ckpt_path={checkpoint}"])
    result = {
        "checkpoint": checkpoint,
        "lr_input": lr_path,
        "sr_output": predict_dir / lr_path.name,
        "tensorboard": out,
        "metrics": metrics,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="yonos demo", description=__doc__)
    parser.add_argument("--config", default=TINY_TEACHER)
    parser.add_argument("--data-dir", default="data/samples")
    parser.add_argument("--out-dir", default="outputs/tiny/teacher_x2")
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps")
    args = parser.parse_args(argv)
    result = run_demo(args.config, args.data_dir, args.out_dir, args.max_steps)
    print("\nYONOS-SR demo finished (tiny random-init models: the numbers check the pipeline, not the method).")
    for key in ("checkpoint", "lr_input", "sr_output"):
        print(f"  {key:<12} {result[key]}")
    print(f"  {'tensorboard':<12} tensorboard --logdir {result['tensorboard']}")
    for name, value in sorted(result["metrics"].items()):
        print(f"  {name:<12} {value:.4f}")
