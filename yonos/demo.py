"""``yonos demo``: the embedded default run, end to end on the CPU with the shipped tiny base and the sample photos.

Prepares the sample images and the held-out crops (128 px and 64 px tiles of the validation photos); runs the chain
teacher x2 -> student x4 -> decoder fine-tuning from the shipped base ``yonos:tiny-sd`` (resuming if a previous demo
was interrupted), every stage seeded by ``--seed``; validates every stage; exports the fine-tuned model as a
pipeline; upscales one validation image with ``yonos upscale`` and writes it side by side with its bicubic
upsampling and the HR image; prints each SR stage's gate (its one-step latent MSE beside that of copying its
condition) and a table on the held-out crops: bicubic, the codec's ceiling, copying the condition, one step with the
original and with the fine-tuned decoder, each with and without colour fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from yonos.batch import lr_key
from yonos.chain import run_chain
from yonos.cli import run
from yonos.commands import command_parser, parse
from yonos.data import SRDataModule
from yonos.degradations import bicubic_downsample, upsample_to
from yonos.images import read_rgb, save_image_atomic
from yonos.metrics import psnr_y, ssim_y
from yonos.samples import VAL_TILE_SIZES, prepare_samples
from yonos.seeds import validation_seed

SCALE = 4

TINY_CHAIN = (
    "experiments/tiny/teacher_x2.yaml",
    "experiments/tiny/distill_x2_to_x4.yaml",
    "experiments/tiny/decoder_finetune.yaml",
)
INPUT_KEYS = {"student": "teacher_ckpt", "decoder": "denoiser_ckpt"}


def _stage_overrides(stage_dir: Path, data_dir: Path) -> list[str]:
    return [
        f"--data.train_dir={data_dir / 'train'}",
        f"--data.val_dir={data_dir / 'val_crops'}",
        f"--trainer.default_root_dir={stage_dir}",
        f"--trainer.logger.init_args.save_dir={stage_dir}",
    ]


def _validate_stages(finals: dict[str, Path], configs: tuple[str, ...], out: Path, data: Path, budget: list[str]) -> dict:
    """Each stage's validation metrics on the same validation images."""
    metrics: dict[str, dict[str, float]] = {}
    names = list(finals)
    gate_log = logging.getLogger("yonos")  # each stage said its gate verdict while training; failures still show
    level = gate_log.level
    gate_log.setLevel(logging.WARNING)
    try:
        for position, (name, config) in enumerate(zip(names, configs)):
            arguments = [
                "validate", "-c", config, *_stage_overrides(out / name, data), *budget, f"--ckpt_path={finals[name]}",
                "--verbose=false", "--trainer.enable_progress_bar=false",  # the console shows the table at the end
            ]
            kind = name.split("_")[0]
            if kind in INPUT_KEYS:
                arguments.append(f"--model.init_args.{INPUT_KEYS[kind]}={finals[names[position - 1]]}")
            if kind == "decoder":
                arguments.append(f"--data.scales=[{name.rsplit('x', 1)[1]}]")
            metrics[name] = {key: float(value) for key, value in run(arguments).trainer.callback_metrics.items()}
    finally:
        gate_log.setLevel(level)
    return metrics


def validation_pairs(val_dir: Path, scale: int, hr_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HR crops, their LR (made exactly as the stages' validation makes them) and dataset indices."""
    datamodule = SRDataModule(train_dir=None, val_dir=str(val_dir), hr_size=hr_size, scales=[scale], num_workers=0)
    datamodule.setup("validate")
    batches = [datamodule.on_after_batch_transfer(batch, 0) for batch in datamodule.val_dataloader()]
    return tuple(torch.cat([b[key] for b in batches]) for key in ("hr", lr_key(scale), "index"))  # type: ignore[return-value]


def _score(sr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    return {"val/psnr": float(psnr_y(sr, hr).mean()), "val/ssim": float(ssim_y(sr, hr).mean())}


def comparison_table(student_ckpt: Path, decoder_ckpt: Path, val_dir: Path, hr_size: int, seed: int = 0) -> dict:
    """PSNR-Y / SSIM-Y (and latent MSE to z_hr = E(HR) where a latent exists) on the validation crops: bicubic, the
    codec's ceiling decode(E(HR)), copying the condition decode(z_lr) (what a stage that learned nothing scores), and
    one DDIM step with the original and the fine-tuned decoder, each without and with the wavelet colour fix. Crop
    i's noise is seeded from its index, as in the stages' validation."""
    from yonos.export import pipeline_from_checkpoint
    from yonos.modules.validation import gate_latents

    hr, lr, index = validation_pairs(val_dir, SCALE, hr_size)
    bicubic = upsample_to(lr, tuple(hr.shape[-2:]))
    original, tuned = pipeline_from_checkpoint(student_ckpt), pipeline_from_checkpoint(decoder_ckpt)
    codec = original.codec  # the shipped base's codec: the stages before decoder fine-tuning never change it
    seeds = [validation_seed(seed, int(i)) for i in index]
    with torch.no_grad():
        z_0, z_lr, z_hr, copy = gate_latents(original.denoiser, codec, original.scheduler, hr, lr, SCALE, seeds)
        latent_mse = lambda z: float((z - z_hr).pow(2).mean())  # noqa: E731
        table = {
            "bicubic": _score(bicubic, hr),
            "codec ceiling: decode(E(HR))": {**_score(codec.decode(z_hr), hr), "latent_mse": 0.0},
            "copying the condition: decode(z_lr)": {**_score(copy, hr), "latent_mse": latent_mse(z_lr)},
        }
    for name, pipeline in (("original decoder", original), ("fine-tuned decoder", tuned)):
        pipeline.set_progress_bar_config(disable=True)
        for color_fix in ("none", "wavelet"):
            generators = [torch.Generator().manual_seed(seed) for seed in seeds]
            sr = pipeline(lr, num_inference_steps=1, generator=generators, tile_size=None, color_fix=color_fix, output_type="pt").images
            row = {**_score(sr, hr), "latent_mse": latent_mse(z_0)}  # the same one-step latent z_0 in all four rows
            table[f"1 step, {name}" + (", colour fix" if color_fix != "none" else "")] = row
    return table


def format_table(tables: dict[str, dict[str, dict[str, float]]], counts: dict[str, str]) -> list[str]:
    """The comparison tables side by side: one row per method, PSNR-Y / SSIM-Y / latent MSE per crop set."""
    names = list(tables)
    header = f"  {'x4, held-out crops':<42}" + "".join(f" | {counts[n]:^27}" for n in names)
    columns = f"  {'':<42}" + " | ".join(["", *[f"{'PSNR-Y':>8} {'SSIM-Y':>7} {'lat.MSE':>9}" for _ in names]])
    lines = [header, columns]
    for row in tables[names[0]]:
        cells = []
        for n in names:
            values = tables[n][row]
            mse = f"{values['latent_mse']:>9.5f}" if "latent_mse" in values else f"{'':>9}"
            cells.append(f"{values['val/psnr']:>8.2f} {values['val/ssim']:>7.4f} {mse}")
        lines.append(f"  {row:<42} | " + " | ".join(cells))
    return lines


def stage_gates(metrics: dict[str, dict[str, float]]) -> list[str]:
    """One line per SR stage: its one-step latent MSE to z_hr beside copying its condition z_lr, and the verdict."""
    lines = []
    for name, values in metrics.items():
        if "val/latent_mse" not in values or name.startswith("decoder"):
            continue
        model, copy = values["val/latent_mse"], values["val/latent_mse_copy"]
        verdict = "beats copying its condition" if model < copy else "does NOT beat copying its condition: has not learned SR"
        lines.append(f"  {name:<12} one-step latent MSE {model:.5f}   copying z_lr {copy:.5f}   {verdict}")
    return lines


def side_by_side(lr_path: Path, sr_path: Path, hr: torch.Tensor, out: Path) -> Path:
    """One PNG: the LR upsampled bicubically | the SR output | the HR image."""
    sr = read_rgb(sr_path)
    bicubic = upsample_to(read_rgb(lr_path)[None], tuple(sr.shape[-2:]))[0].clamp(0, 1)
    hr = hr[:, : sr.shape[-2], : sr.shape[-1]]
    gap = torch.ones(3, sr.shape[-2], 4)
    return save_image_atomic(torch.cat([bicubic, gap, sr, gap, hr], dim=-1), out)


def run_demo(
    configs: tuple[str, ...] = TINY_CHAIN,
    data_dir: str = "data/samples",
    out_dir: str = "outputs/tiny/chain",
    max_steps: int | None = None,
    hr_size: int | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Run the demo with every stage seeded by ``seed`` (``seed_everything``; the validation noise too); returns
    the paths written, each stage's validation metrics and the comparison tables (one per held-out crop set)."""
    from diffusers.utils import logging as diffusers_logging

    from yonos.export import export_pipeline
    from yonos.upscale import main as upscale

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": noise on the demo's console

    samples = prepare_samples(data_dir)
    out, data = Path(out_dir), Path(data_dir)
    budget: list[str] = [f"--seed_everything={seed}"]
    if max_steps is not None:
        budget += [f"--trainer.max_steps={max_steps}", f"--trainer.val_check_interval={max_steps}"]
    if hr_size is not None:
        budget.append(f"--data.hr_size={hr_size}")

    # Train: teacher x2, the x4 student distilled from it, then its decoder (finished stages are skipped).
    data_args = [f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val_crops'}"]
    finals = run_chain(list(configs), out, extra=data_args + budget)
    metrics = _validate_stages(finals, configs, out, data, budget)

    # Export the fine-tuned model and upscale one validation image from its bicubic x4 LR.
    model_dir = export_pipeline(list(finals.values())[-1], out / "model", overwrite=True)
    hr = read_rgb(samples["val"][0])
    height, width = (s - s % SCALE for s in hr.shape[-2:])
    lr_path = save_image_atomic(bicubic_downsample(hr[None, :, :height, :width], SCALE)[0], out / "demo_input" / samples["val"][0].name)
    upscaled_dir = out / "upscaled"
    upscale([str(lr_path), "-o", str(upscaled_dir), "--model", str(model_dir), "--steps", "1", "--seed", str(seed), "--overwrite"])
    sr_path = upscaled_dir / f"{lr_path.stem}.png"
    comparison = side_by_side(lr_path, sr_path, hr, out / "side_by_side" / f"{lr_path.stem}.png")

    # The comparison on the held-out crops: the stages' validation crops (same LR images) and the 64 px tiles.
    names = list(finals)
    folders = {"val_crops": hr_size or VAL_TILE_SIZES["val_crops"], "val_crops_64": VAL_TILE_SIZES["val_crops_64"]}
    tables = {
        folder: comparison_table(finals[names[-2]], finals[names[-1]], data / folder, size, seed)
        for folder, size in folders.items()
        if (data / folder).is_dir()
    }
    return {
        "checkpoints": finals,
        "model": model_dir,
        "lr_input": lr_path,
        "sr_output": sr_path,
        "side_by_side": comparison,
        "tensorboard": out,
        "metrics": metrics,
        "tables": tables,
    }


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("yonos demo", __doc__)
    parser.add_argument("--data-dir", default="data/samples", help="the sample photos (written by prepare-samples if absent)")
    parser.add_argument(
        "--out-dir", default=None,
        help="root folder of the stages, the pipeline and the images (default outputs/tiny/chain, or "
        "outputs/tiny/chain_seed{N} for --seed N other than 0); finished stages there are not trained again",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps of every stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage (seed_everything) and of the sampling noise")
    args = parse(parser, argv)
    out_dir = args.out_dir or ("outputs/tiny/chain" if args.seed == 0 else f"outputs/tiny/chain_seed{args.seed}")
    result = run_demo(data_dir=args.data_dir, out_dir=out_dir, max_steps=args.max_steps, seed=args.seed)
    print(f"\nYONOS-SR demo finished, seed {args.seed} (tiny models from the shipped base yonos:tiny-sd; stages trained "
          f"here on the CPU: {', '.join(result['checkpoints'])}).")
    for name, path in result["checkpoints"].items():
        print(f"  {name:<14} {path}")
    print(f"  {'pipeline':<14} {result['model']}")
    print(f"  {'lr_input':<14} {result['lr_input']}")
    print(f"  {'sr_output':<14} {result['sr_output']}  (x4, one DDIM step, yonos upscale)")
    print(f"  {'side_by_side':<14} {result['side_by_side']}  (bicubic | SR | HR)")
    print(f"  {'tensorboard':<14} tensorboard --logdir {result['tensorboard']}")
    print("\n  Stage gates on the 128 px held-out crops (a stage that does not beat copying its condition has not learned):")
    for line in stage_gates(result["metrics"]):
        print(line)
    counts = {
        folder: f"{len(list(Path(args.data_dir, folder).glob('*.png')))} x {VAL_TILE_SIZES[folder]} px crops" for folder in result["tables"]
    }
    print()
    for line in format_table(result["tables"], counts):
        print(line)
