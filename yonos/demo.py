"""``yonos demo``: the embedded default run, end to end on the CPU with tiny models and the sample photos.

Prepares the sample images; runs the chain teacher x2 -> student x4 -> decoder fine-tuning (resuming if a
previous demo was interrupted); validates every stage; exports the fine-tuned model as a pipeline; upscales one
validation image with ``yonos upscale``; prints a small table comparing bicubic, one step with the original
decoder and one step with the fine-tuned decoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

from yonos.chain import run_chain
from yonos.data import SRDataModule, lr_key
from yonos.degradations import bicubic_downsample, upsample_to
from yonos.images import read_rgb, save_image_atomic
from yonos.metrics import psnr_y, ssim_y
from yonos.samples import prepare_samples

TINY_CHAIN = (
    "experiments/tiny/teacher_x2.yaml",
    "experiments/tiny/distill_x2_to_x4.yaml",
    "experiments/tiny/decoder_finetune.yaml",
)
INPUT_KEYS = {"student": "teacher_ckpt", "decoder": "denoiser_ckpt"}


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


def _validate_stages(finals: dict[str, Path], configs: tuple[str, ...], out: Path, data: Path, budget: list[str]) -> dict:
    """Each stage's validation metrics on the same validation images."""
    metrics: dict[str, dict[str, float]] = {}
    names = list(finals)
    for position, (name, config) in enumerate(zip(names, configs)):
        arguments = ["validate", "-c", config, *_stage_overrides(out / name, data), *budget, f"--ckpt_path={finals[name]}"]
        kind = name.split("_")[0]
        if kind in INPUT_KEYS:
            arguments.append(f"--model.init_args.{INPUT_KEYS[kind]}={finals[names[position - 1]]}")
        if kind == "decoder":
            arguments.append(f"--data.scales=[{name.rsplit('x', 1)[1]}]")
        metrics[name] = {key: float(value) for key, value in _cli(arguments).trainer.callback_metrics.items()}
    return metrics


def bicubic_baseline(data: Path, scale: int, hr_size: int) -> dict[str, float]:
    """PSNR-Y / SSIM-Y of bicubic upsampling on the validation crops the stages validate on."""
    datamodule = SRDataModule(train_dir=None, val_dir=str(data / "val"), hr_size=hr_size, scales=[scale], num_workers=0)
    datamodule.setup("validate")
    psnr, ssim = [], []
    for batch in datamodule.val_dataloader():
        batch = datamodule.on_after_batch_transfer(batch, 0)
        sr = upsample_to(batch[lr_key(scale)], tuple(batch["hr"].shape[-2:]))
        psnr.append(psnr_y(sr, batch["hr"]))
        ssim.append(ssim_y(sr, batch["hr"]))
    return {"val/psnr": float(torch.cat(psnr).mean()), "val/ssim": float(torch.cat(ssim).mean())}


def run_demo(
    configs: tuple[str, ...] = TINY_CHAIN,
    data_dir: str = "data/samples",
    out_dir: str = "outputs/tiny/chain",
    max_steps: int | None = None,
    hr_size: int | None = None,
) -> dict[str, object]:
    """Run the demo; returns the paths written, each stage's validation metrics and the comparison table."""
    from yonos.export import export_pipeline
    from yonos.upscale import main as upscale

    samples = prepare_samples(data_dir)
    out, data = Path(out_dir), Path(data_dir)
    budget: list[str] = []
    if max_steps is not None:
        budget += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"]
    if hr_size is not None:
        budget.append(f"--data.hr_size={hr_size}")

    # Train: teacher x2, the x4 student distilled from it, then its decoder (finished stages are skipped).
    data_args = [f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val'}"]
    finals = run_chain(list(configs), out, extra=data_args + budget)
    metrics = _validate_stages(finals, configs, out, data, budget)

    # Export the fine-tuned model and upscale one validation image from its bicubic x4 LR.
    model_dir = export_pipeline(list(finals.values())[-1], out / "model", overwrite=True)
    hr = read_rgb(samples["val"][0])
    height, width = (s - s % 4 for s in hr.shape[-2:])
    lr_path = save_image_atomic(bicubic_downsample(hr[None, :, :height, :width], 4)[0], out / "demo_input" / samples["val"][0].name)
    upscaled_dir = out / "upscaled"
    upscale([str(lr_path), "-o", str(upscaled_dir), "--model", str(model_dir), "--steps", "1", "--seed", "0", "--overwrite"])

    # The comparison: bicubic, one step with the original decoder, one step with the fine-tuned decoder.
    decoder = metrics[list(finals)[-1]]
    table = {
        "bicubic": bicubic_baseline(data, 4, hr_size or 128),
        "1 step, original decoder": {k: decoder[f"{k}_original_decoder"] for k in ("val/psnr", "val/ssim")},
        "1 step, fine-tuned decoder": {k: decoder[k] for k in ("val/psnr", "val/ssim")},
    }
    return {
        "checkpoints": finals,
        "model": model_dir,
        "lr_input": lr_path,
        "sr_output": upscaled_dir / f"{lr_path.stem}.png",
        "tensorboard": out,
        "metrics": metrics,
        "table": table,
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
    print(f"  {'pipeline':<14} {result['model']}")
    print(f"  {'lr_input':<14} {result['lr_input']}")
    print(f"  {'sr_output':<14} {result['sr_output']}  (x4, one DDIM step, yonos upscale)")
    print(f"  {'tensorboard':<14} tensorboard --logdir {result['tensorboard']}")
    print("\n  x4 on the validation crops      PSNR-Y    SSIM-Y")
    for row, values in result["table"].items():
        print(f"  {row:<30} {values['val/psnr']:>8.2f} {values['val/ssim']:>9.4f}")
