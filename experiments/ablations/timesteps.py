"""Ablation: the one-step sampler's timestep gap on the tiny models (README, "Timesteps at inference").

Training with SD's schedule sees z_999 = 0.068 z_hr + 0.998 eps and gives t = 999 one sample in a thousand; the
one-step sampler starts from pure noise at t = 999. Two remedies against the paper's uniform timesteps:
zero terminal SNR with v-prediction (``rescale_betas_zero_snr``) and training the last timestep explicitly
(``last_timestep_prob``). Each variant trains the tiny x2 teacher through the real CLI for a few seeds, then its
EMA checkpoint is scored on held-out crops (every 128-px tile of the validation photos, several noise seeds):

- latent MSE of the one-step sample against the HR latent (what the remedies target; independent of the random
  tiny VAE decoder), and of a 4-step sample;
- PSNR-Y of the decoded one-step sample (bounded by the random VAE: its reconstruction of z_hr is printed too);
- for scale, the latent MSE of two trivial predictions: z_lr itself and zero.

    python experiments/ablations/timesteps.py --out outputs/ablation_timesteps --steps 400 --seeds 0 1

Reruns reuse finished trainings (``final.ckpt``). Results: ``OUT/summary.md`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from yonos.cli import run
from yonos.degradations import bicubic_downsample, upsample_to
from yonos.diffusion import ddim_sample
from yonos.images import read_rgb
from yonos.metrics import psnr_y
from yonos.modules import TeacherModule
from yonos.modules.common import encode_fp32
from yonos.samples import prepare_samples
from yonos.sampling import seeded_noise

ROOT = Path(__file__).resolve().parents[2]
VARIANTS: dict[str, list[str]] = {
    "uniform t (paper)": [],
    "zero terminal SNR + v": ["--model.init_args.rescale_betas_zero_snr=true"],
    "last_timestep_prob 0.25": ["--model.init_args.last_timestep_prob=0.25"],
}
TILE = 128


def train(variant: str, seed: int, out: Path, steps: int, data: Path) -> Path:
    """Fit the tiny teacher for one variant and seed with ``yonos fit``; returns its final (EMA) checkpoint."""
    folder = out / variant.replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus") / f"seed{seed}"
    final = folder / "final.ckpt"
    if final.is_file():
        return final
    cli = run([
        "fit", "-c", str(ROOT / "experiments/tiny/teacher_x2.yaml"), *VARIANTS[variant],
        f"--seed_everything={seed}",
        f"--data.train_dir={data / 'train'}", f"--data.val_dir={data / 'val'}", f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={folder}",
        f"--trainer.logger.init_args.save_dir={folder}", "--trainer.enable_progress_bar=false",
    ])
    cli.trainer.save_checkpoint(final)  # the EMA callback stores the averaged weights as the state_dict
    return final


def held_out_crops(folder: Path) -> torch.Tensor:
    """Every non-overlapping TILE x TILE crop of the validation photos, (N, 3, TILE, TILE)."""
    crops = []
    for path in sorted(folder.glob("*.png")):
        image = read_rgb(path)
        for top in range(0, image.shape[-2] - TILE + 1, TILE):
            for left in range(0, image.shape[-1] - TILE + 1, TILE):
                crops.append(image[:, top : top + TILE, left : left + TILE])
    return torch.stack(crops)


@torch.no_grad()
def score(checkpoint: Path, hr: torch.Tensor, noise_seeds: list[int]) -> dict[str, float]:
    module = TeacherModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    lr = bicubic_downsample(hr, module.scale)
    z_hr = encode_fp32(module.codec, hr)  # (N, 4, 16, 16)
    z_lr = encode_fp32(module.codec, upsample_to(lr, tuple(hr.shape[-2:])))
    results: dict[str, list[float]] = {"latent_mse_1step": [], "latent_mse_4steps": [], "psnr_y_1step": []}
    baselines = {"latent_mse_of_z_lr": (z_lr - z_hr).pow(2).mean().item(), "latent_mse_of_zero": z_hr.pow(2).mean().item()}
    for seed in noise_seeds:
        noise = seeded_noise(tuple(z_hr.shape), [seed * 1000 + i for i in range(len(hr))], hr.device)
        for steps in (1, 4):
            z_0 = ddim_sample(lambda z_t, t: module.denoiser(z_t, z_lr, t), module.scheduler, noise, steps)
            results[f"latent_mse_{steps}step" + ("s" if steps > 1 else "")].append((z_0 - z_hr).pow(2).mean().item())
            if steps == 1:
                results["psnr_y_1step"].append(psnr_y(module.codec.decode(z_0), hr).mean().item())
    summary = {key: statistics.mean(values) for key, values in results.items()}
    summary["psnr_y_vae_reconstruction"] = psnr_y(module.codec.decode(z_hr), hr).mean().item()
    return {**summary, **baselines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/ablation_timesteps"))
    parser.add_argument("--data", type=Path, default=Path("data/samples"), help="prepare-samples layout (made if absent)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--noise-seeds", type=int, default=4)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # LightningCLI (called in-process below) would otherwise also look at these
    torch.set_num_threads(1)
    prepare_samples(args.data)
    hr = held_out_crops(args.data / "val")
    rows = {}
    for variant in args.variants:
        per_seed = [score(train(variant, seed, args.out, args.steps, args.data), hr, list(range(args.noise_seeds))) for seed in args.seeds]
        rows[variant] = {key: [s[key] for s in per_seed] for key in per_seed[0]}
        print(variant, json.dumps(rows[variant]), flush=True)
    lines = [
        f"tiny x2 teacher, {args.steps} steps, seeds {args.seeds} (values per seed, a / b); "
        f"{len(hr)} held-out {TILE}-px crops x {args.noise_seeds} noise seeds",
        "",
        "| variant | latent MSE, 1 step | latent MSE, 4 steps | PSNR-Y, 1 step | PSNR-Y, VAE alone | MSE of z_lr, of 0 |",
        "|---|---|---|---|---|---|",
    ]
    for variant, values in rows.items():
        cells = [" / ".join(f"{v:.4f}" if "mse" in key else f"{v:.2f}" for v in values[key]) for key in
                 ("latent_mse_1step", "latent_mse_4steps", "psnr_y_1step", "psnr_y_vae_reconstruction")]
        reference = " / ".join(f"{a:.4f}, {b:.4f}" for a, b in zip(values["latent_mse_of_z_lr"], values["latent_mse_of_zero"]))
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {reference} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    (args.out / "summary.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "crops": len(hr), "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
