"""Time of one optimizer step: the direct (teacher) stage versus the scale-distillation stage, same batch.

    python benchmarks/train_step.py [--reps 5] [--sd21-size 64] [--skip-sd21]

Both stages run their real ``training_step`` (VAE encodes included: two for the teacher stage, three for
distillation), then backward and the optimizer step. SGD without momentum is used for both so that the
sd21-base run fits in CPU memory (AdamW adds the same state to both stages). Prints a table, then one JSON line
with ``distill_over_direct`` (tiny) and ``distill_over_direct_sd21``.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from unittest import mock

import torch

from yonos.checkpoints import StageCheckpoint
from yonos.degradations import bicubic_downsample
from yonos.models import BackboneConfig, build_codec, build_denoiser
from yonos.modules import ScaleDistillModule, TeacherModule


def _batch(size: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    hr = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return {"hr": hr, "lr_x2": bicubic_downsample(hr, 2), "lr_x4": bicubic_downsample(hr, 4)}


def _stepper(module: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device):
    """A closure running one optimizer step of ``module`` and returning its wall time."""
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=1e-6)
    module.train()

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        module.training_step(batch, 0).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def _median_times(steppers: list, reps: int) -> list[float]:
    """Median step time of each stepper; steps alternate between steppers so that load from other processes
    hits them alike. The first round is a warm-up."""
    times: list[list[float]] = [[] for _ in steppers]
    for rep in range(reps + 1):
        for index, step in enumerate(steppers):
            elapsed = step()
            if rep:
                times[index].append(elapsed)
    return [statistics.median(t) for t in times]


def _stage_from_memory(preset: str) -> StageCheckpoint:
    backbone = BackboneConfig(preset=preset)
    return StageCheckpoint(
        denoiser=build_denoiser(backbone), codec=build_codec(backbone), backbone=backbone, scale=2,
        prediction_type="v_prediction", rescale_betas_zero_snr=False, loss_weighting="one_plus_snr", path=None,
    )


def measure(preset: str, size: int, batch_size: int, reps: int, device: torch.device) -> dict[str, float]:
    """Median step time of the direct stage and of the distillation stage for one architecture.

    ``tiny``: both modules live at once and their steps alternate. ``sd21-base``: one after the other (three
    UNets with gradients do not fit in this machine's memory together).
    """
    torch.manual_seed(0)
    batch = _batch(size, batch_size, device)

    def teacher() -> TeacherModule:
        return TeacherModule(backbone=BackboneConfig(preset=preset), scale=2, lpips_net="none").to(device)

    def student() -> ScaleDistillModule:
        # The teacher is built in memory (a StageCheckpoint), not read from a checkpoint file.
        teacher = _stage_from_memory(preset)
        return ScaleDistillModule(teacher_ckpt=teacher, teacher_scale=2, student_scale=4, lpips_net="none").to(device)

    with mock.patch.object(TeacherModule, "log"), mock.patch.object(ScaleDistillModule, "log"):
        if preset == "tiny":
            direct, distilled = _median_times([_stepper(teacher(), batch, device), _stepper(student(), batch, device)], reps)
        else:
            (direct,) = _median_times([_stepper(teacher(), batch, device)], reps)
            gc.collect()
            (distilled,) = _median_times([_stepper(student(), batch, device)], reps)
    gc.collect()
    return {"direct_s": direct, "distill_s": distilled, "ratio": distilled / direct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tiny-size", type=int, default=128, help="HR crop of the tiny run")
    parser.add_argument("--sd21-size", type=int, default=64, help="HR crop of the sd21-base run (CPU: keep small)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--skip-sd21", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = [("tiny", args.tiny_size, args.batch_size, args.reps)]
    if not args.skip_sd21:
        runs.append(("sd21-base", args.sd21_size, 1, max(1, args.reps // 2)))
    results = {}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; fp32, SGD, median of timed steps after 1 warm-up round")
    print(f"{'arch':<10} {'crop':>5} {'batch':>5} {'direct s/step':>14} {'distill s/step':>15} {'ratio':>6}")
    for preset, size, batch_size, reps in runs:
        result = measure(preset, size, batch_size, reps, device)
        results[preset] = result
        print(f"{preset:<10} {size:>5} {batch_size:>5} {result['direct_s']:>14.3f} {result['distill_s']:>15.3f} {result['ratio']:>6.2f}")
    summary = {
        "distill_over_direct": round(results["tiny"]["ratio"], 3),
        "distill_over_direct_sd21": round(results["sd21-base"]["ratio"], 3) if "sd21-base" in results else None,
        "device": device.type,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
