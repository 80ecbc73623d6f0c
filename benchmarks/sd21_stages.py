"""The whole training path on the FULL Stable Diffusion 2.1-base architecture (random weights): what a user must budget.

    python benchmarks/sd21_stages.py [--out DIR] [--hr-size 64] [--steps 1] [--tiny]

Builds SD 2.1-base's UNet (865.9M) and VAE (83.7M) from their configs (``sd21_configs.py``), then runs what the
README runs, each step in its own process: ``yonos chain``'s stage process for teacher x2 -> distillation x2->x4 ->
decoder fine-tuning (the shipped yamls; overrides: device, precision, size, data, backbone and the optimizer),
``yonos export``, ``diffusers.DiffusionPipeline.from_pretrained`` and one upscale. Per step: seconds, peak host RSS
(the process's own high-water mark), trainable / frozen parameters, checkpoint size on disk, and the host memory
around the end-of-fit checkpoint save (Lightning's atomic save buffers the whole file before writing it).

On the CPU: fp32, ``--hr-size`` crops, batch 1, and SGD without momentum instead of the yamls' AdamW, so that a
stage fits a 24 GiB machine (AdamW adds two fp32 copies of the trainable weights: +6.9 GiB for the UNet). GPU
numbers (bf16, 512 px, batch 8) are not measured by this script. Validation LPIPS needs torchvision's AlexNet
file and the decoder stage's training LPIPS VGG16's: random ones are written into a private torch hub folder (their
values are not LPIPS; nothing is validated).
``--tiny`` runs the same steps on the tiny architecture (a minute; checks the script, measures nothing useful).
The last line is one JSON object with the headline numbers. Needs about 20 GiB of free host memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "YONOS_BENCH "
GIB = 1024**3


def _status(field: str) -> int:
    """A /proc/self/status memory field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _report(**values) -> None:
    print(MARK + json.dumps(values), flush=True)


def child_stage(final: str, arguments: list[str]) -> None:
    """One chain stage (yonos.chain.fit_and_publish), with the end-of-fit save measured."""
    import lightning.pytorch as pl

    from yonos import chain

    original = pl.Trainer.save_checkpoint
    measured: dict = {}

    def measured_save(trainer, filepath, *args, **kwargs):
        module = trainer.lightning_module
        measured.update(
            trainable=sum(p.numel() for p in module.parameters() if p.requires_grad),
            frozen=sum(p.numel() for p in module.parameters() if not p.requires_grad),
            peak_before_save=_status("VmHWM"), rss_before_save=_status("VmRSS"),
        )
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: the save's own peak follows
        result = original(trainer, filepath, *args, **kwargs)
        measured.update(peak_during_save=_status("VmHWM"), checkpoint_bytes=os.path.getsize(filepath))
        return result

    pl.Trainer.save_checkpoint = measured_save
    start = time.perf_counter()
    published = chain.fit_and_publish(arguments, Path(final), "last")
    measured["fit_and_save_s"] = time.perf_counter() - start
    _report(published=published, **measured)


def child_build(folder: str, tiny: bool) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from sd21_configs import VAE, build_folder, text_encoder_parameters

    if tiny:
        from yonos.models import UNET_PRESETS, VAE_PRESETS

        unet = {**UNET_PRESETS["tiny"], "in_channels": 4, "out_channels": 4}
        vae = {**VAE, **VAE_PRESETS["tiny"], "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
        _report(**build_folder(Path(folder), unet=unet, vae=vae))
    else:
        _report(**build_folder(Path(folder)), text_encoder=text_encoder_parameters())


def child_pipeline(folder: str, image: str, out: str, device: str) -> None:
    import torch
    from diffusers import DiffusionPipeline

    import yonos.pipeline  # noqa: F401  (registers YonosSRPipeline in diffusers' namespace)
    from yonos.images import read_rgb, save_image_atomic

    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder).to(device)
    loaded = time.perf_counter() - start
    lr = read_rgb(image)[None].to(device)
    start = time.perf_counter()
    sr = pipe(lr, num_inference_steps=1, generator=torch.Generator(device).manual_seed(0), output_type="pt").images
    upscale = time.perf_counter() - start
    save_image_atomic(sr[0].float().cpu(), Path(out))
    _report(pipeline=type(pipe).__name__, load_s=loaded, upscale_s=upscale, lr_shape=list(lr.shape), sr_shape=list(sr.shape))


def _run(name: str, command: list[str], log: Path, env: dict[str, str]) -> dict:
    """Run a step in a fresh process; its wall time, peak RSS (from wait4) and reported values."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code != 0:
        raise RuntimeError(f"{name} failed (exit code {code}); see {log}:\n{log.read_text()[-3000:]}")
    reported = [json.loads(line[len(MARK) :]) for line in log.read_text().splitlines() if line.startswith(MARK)]
    return {"step": name, "seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, **(reported[-1] if reported else {})}


def _stage_overrides(args: argparse.Namespace, data: Path) -> list[str]:
    """Device, precision, size, data, and SGD for the yamls' AdamW (memory: see the module docstring)."""
    sgd = '{"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0e-6}}'
    return [
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
        f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val'}",
        f"--data.hr_size={args.hr_size}", "--data.batch_size=1", "--data.num_workers=0", f"--model.init_args.optimizer={sgd}",
    ]


def _random_lpips_backbones(torch_home: Path) -> None:
    """Random AlexNet (validation LPIPS) and VGG16 (the decoder stage's training LPIPS) in a private hub folder."""
    import torch
    import torchvision

    for name, build in (("alexnet-owt-7be5be79.pth", torchvision.models.alexnet), ("vgg16-397923af.pth", torchvision.models.vgg16)):
        target = torch_home / "hub" / "checkpoints" / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.save(build().state_dict(), target)


def _table(rows: list[dict], args: argparse.Namespace) -> None:
    arch = "tiny architecture" if args.tiny else "SD 2.1-base architecture"
    print(f"{arch}, random weights; CPU, fp32, {args.hr_size} px crops, batch 1, SGD, {args.steps} step(s) per stage")
    print(f"{'step':<10} {'s':>7} {'peak RSS GiB':>13} {'trainable M':>12} {'frozen M':>9} {'ckpt GiB':>9} "
          f"{'RSS before save':>16} {'peak in save':>13}")
    for r in rows:
        def gib(key: str) -> str:
            return f"{r[key] / GIB:.2f}" if key in r else "-"

        def mega(key: str) -> str:
            return f"{r[key] / 1e6:.1f}" if key in r else "-"

        print(f"{r['step']:<10} {r['seconds']:>7.1f} {r['peak_rss'] / GIB:>13.2f} {mega('trainable'):>12} {mega('frozen'):>9} "
              f"{gib('checkpoint_bytes'):>9} {gib('rss_before_save'):>16} {gib('peak_during_save'):>13}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/bench_sd21", help="work folder (SD folder, checkpoints, logs)")
    parser.add_argument("--hr-size", type=int, default=64, help="HR crop on the CPU")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per stage")
    parser.add_argument("--tiny", action="store_true", help="the tiny architecture instead (checks the script)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TORCH_HOME": str(out / "torch_home"), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    _random_lpips_backbones(out / "torch_home")
    from yonos.samples import prepare_samples

    data = out / "data"
    prepare_samples(data, max_side=max(160, 2 * args.hr_size))
    me = [sys.executable, str(Path(__file__).resolve())]
    sd, rows = out / "sd21-base", []
    if not (sd / "unet" / "config.json").is_file():
        rows.append(_run("build", [*me, "--child-build", str(sd), str(args.tiny)], out / "build.log", env))
    # No text_encoder/ in the built folder (no tokenizer vocabulary offline): the zero empty-prompt embedding is
    # opted into explicitly, as a user without the text encoder would have to.
    stages = [("teacher", "teacher_x2", [f"--model.init_args.backbone.pretrained={sd}",
                                         "--model.init_args.backbone.zero_prompt_embedding=true"]),
              ("distill", "distill_x2_to_x4", ["--model.init_args.teacher_ckpt={teacher}"]),
              ("decoder", "decoder_finetune", ["--model.init_args.denoiser_ckpt={distill}", "--data.scales=[4]"])]
    finals: dict[str, str] = {}
    for name, config, inputs in stages:
        final = out / name / "final.ckpt"
        final.unlink(missing_ok=True)
        fit = ["fit", "-c", f"experiments/{config}.yaml", f"--trainer.default_root_dir={out / name}",
               f"--trainer.logger.init_args.save_dir={out / name}", *_stage_overrides(args, data),
               *[i.format(**finals) for i in inputs]]
        rows.append(_run(name, [*me, "--child-stage", str(final), *fit], out / f"{name}.log", env))
        finals[name] = str(final)
    rows.append(_run("export", [sys.executable, "-m", "yonos", "export", "--ckpt", finals["decoder"], "--out",
                                str(out / "model"), "--overwrite"], out / "export.log", env))
    lr_image = sorted((data / "val").glob("*.png"))[0]
    rows.append(_run("upscale", [*me, "--child-pipeline", str(out / "model"), str(lr_image), str(out / "sr.png"), "cpu"],
                     out / "upscale.log", env))
    _table(rows, args)
    by = {r["step"]: r for r in rows}
    summary = {
        "arch": "tiny" if args.tiny else "sd21-base", "device": "cpu", "hr_size": args.hr_size, "cuda": "not measured",
        "peak_rss_gib": {k: round(r["peak_rss"] / GIB, 2) for k, r in by.items()},
        "seconds": {k: round(r["seconds"], 1) for k, r in by.items()},
        "checkpoint_gib": {k: round(by[k]["checkpoint_bytes"] / GIB, 2) for k in ("teacher", "distill", "decoder")},
        "save_peak_gib": {k: round(by[k]["peak_during_save"] / GIB, 2) for k in ("teacher", "distill", "decoder")},
        "trainable_m": {k: round(by[k]["trainable"] / 1e6, 1) for k in ("teacher", "distill", "decoder")},
        "frozen_m": {k: round(by[k]["frozen"] / 1e6, 1) for k in ("teacher", "distill", "decoder")},
    }
    if "build" in by:
        summary["params"] = {k: by["build"][k] for k in ("unet", "vae", "text_encoder") if k in by["build"]}
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child-stage":
        child_stage(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) > 3 and sys.argv[1] == "--child-build":
        child_build(sys.argv[2], sys.argv[3] == "True")
    elif len(sys.argv) > 5 and sys.argv[1] == "--child-pipeline":
        child_pipeline(*sys.argv[2:6])
    else:
        main()
