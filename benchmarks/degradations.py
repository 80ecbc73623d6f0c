"""Throughput of the Real-ESRGAN degradation: yonos (per-sample draws) against BasicSR 1.4.2's reference pipeline.

Run: ``python benchmarks/degradations.py [--preset realesrgan] [--reps 3] [--sizes 256 512] [--threads 1]``. Prints a table, then
as the last line one JSON object. A benchmark, not a test: nothing here gates CI. BasicSR is an optional dependency
of this script only (``pip install basicsr==1.4.2``); it needs the torchvision shim below.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import types
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from yonos.degradations.config import RealESRGANConfig
from yonos.degradations.realesrgan import apply_realesrgan, sample_realesrgan_params


def import_basicsr() -> types.SimpleNamespace | None:
    """BasicSR 1.4.2 imports ``torchvision.transforms.functional_tensor``, removed from torchvision: shim it."""
    try:
        from torchvision.transforms import functional

        if "torchvision.transforms.functional_tensor" not in sys.modules:
            shim = types.ModuleType("torchvision.transforms.functional_tensor")
            shim.rgb_to_grayscale = functional.rgb_to_grayscale
            sys.modules["torchvision.transforms.functional_tensor"] = shim
        from basicsr.data import degradations
        from basicsr.utils import DiffJPEG, USMSharp
        from basicsr.utils.img_process_util import filter2D
    except ImportError as error:
        print(f"BasicSR unavailable ({error}); only yonos is timed.")
        return None
    return types.SimpleNamespace(degradations=degradations, DiffJPEG=DiffJPEG, USMSharp=USMSharp, filter2D=filter2D)


def basicsr_kernels(bsr, config: RealESRGANConfig, batch: int) -> tuple[torch.Tensor, ...]:
    """Kernels drawn per image in numpy, as ``RealESRGANDataset.__getitem__`` does."""
    kernel_range = [2 * v + 1 for v in range(3, 11)]

    def blur_kernel(stage) -> np.ndarray:
        size = random.choice(kernel_range)
        if np.random.uniform() < stage.sinc_prob:
            omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
            kernel = bsr.degradations.circular_lowpass_kernel(omega, size, pad_to=False)
        else:
            kernel = bsr.degradations.random_mixed_kernels(
                stage.kernel_list, stage.kernel_prob, size, stage.blur_sigma, stage.blur_sigma,
                [-math.pi, math.pi], stage.betag_range, stage.betap_range, noise_range=None,
            )
        pad = (21 - size) // 2
        return np.pad(kernel, ((pad, pad), (pad, pad)))

    def sinc_kernel() -> np.ndarray:
        if np.random.uniform() < config.final_sinc_prob:
            size = random.choice(kernel_range)
            return bsr.degradations.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), size, pad_to=21)
        pulse = np.zeros((21, 21))
        pulse[10, 10] = 1
        return pulse

    stacks = [[blur_kernel(config.stage1) for _ in range(batch)], [blur_kernel(config.stage2) for _ in range(batch)]]
    stacks.append([sinc_kernel() for _ in range(batch)])
    return tuple(torch.from_numpy(np.stack(s)).float() for s in stacks)


def basicsr_degrade(bsr, modules, config: RealESRGANConfig, hr: torch.Tensor, kernels, scale: int) -> torch.Tensor:
    """``RealESRGANModel.feed_data``'s synthesis (without the crop and the 180-pair pool)."""
    jpeger, usm = modules
    kernel1, kernel2, sinc = (k.to(hr.device) for k in kernels)
    height, width = hr.shape[-2:]
    out = usm(hr) if config.use_usm else hr
    for index, stage in enumerate((config.stage1, config.stage2)):
        if index == 0 or np.random.uniform() < config.stage2.second_blur_prob:
            out = bsr.filter2D(out.contiguous(), kernel1 if index == 0 else kernel2)
        updown = random.choices(["up", "down", "keep"], stage.resize_prob)[0]
        low, high = stage.resize_range
        factor = {"up": np.random.uniform(1, high), "down": np.random.uniform(low, 1)}.get(updown, 1)
        mode = random.choice(["area", "bilinear", "bicubic"])
        if index == 0:
            out = F.interpolate(out, scale_factor=factor, mode=mode)
        else:
            out = F.interpolate(out, size=(int(height / scale * factor), int(width / scale * factor)), mode=mode)
        if np.random.uniform() < stage.gaussian_noise_prob:
            out = bsr.degradations.random_add_gaussian_noise_pt(
                out, sigma_range=stage.noise_range, clip=True, rounds=False, gray_prob=stage.gray_noise_prob
            )
        else:
            out = bsr.degradations.random_add_poisson_noise_pt(
                out, scale_range=stage.poisson_scale_range, gray_prob=stage.gray_noise_prob, clip=True, rounds=False
            )
        if index == 0:
            out = jpeger(out.clamp(0, 1), quality=out.new_zeros(out.size(0)).uniform_(*stage.jpeg_range))
    quality = out.new_zeros(out.size(0)).uniform_(*config.stage2.jpeg_range)
    mode = random.choice(["area", "bilinear", "bicubic"])
    # .contiguous(): odd sizes leave strided tensors that filter2D's .view rejects (BasicSR's 256 px crops don't).
    lr_size = (height // scale, width // scale)
    resize_back = lambda x: F.interpolate(x, size=lr_size, mode=mode).contiguous()  # noqa: E731
    if np.random.uniform() < 0.5:
        out = jpeger(bsr.filter2D(resize_back(out), sinc).clamp(0, 1), quality=quality)
    else:
        out = bsr.filter2D(resize_back(jpeger(out.clamp(0, 1), quality=quality)), sinc)
    return torch.clamp((out * 255.0).round(), 0, 255) / 255.0


def seconds_per_call(rows: dict[str, Callable[[], object]], device: torch.device, reps: int) -> dict[str, float]:
    """Median wall time per call of each row after one warm-up call; rows are interleaved so that load from
    other processes hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.no_grad():
        for fn in rows.values():
            fn()
        for _ in range(reps):
            for name, fn in rows.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def time_training_step(device: torch.device, batch: int, size: int, config: RealESRGANConfig, scale: int, reps: int) -> float:
    """Seconds of one tiny-teacher training step at x``scale`` with the degradation included (median of ``reps``)."""
    from unittest import mock

    from yonos.models import BackboneConfig
    from yonos.modules import TeacherModule

    torch.manual_seed(0)
    module = TeacherModule(backbone=BackboneConfig(preset="tiny"), scale=scale, lpips_net="none").to(device).train()
    optimizer = torch.optim.AdamW(module.denoiser.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    hr = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)

    def step() -> None:
        lr = apply_realesrgan(hr, sample_realesrgan_params(config, batch, generator, device), (scale,))[scale]
        with torch.enable_grad():  # seconds_per_call times under no_grad
            optimizer.zero_grad(set_to_none=True)
            module.training_step({"hr": hr, f"lr_x{scale}": lr}, 0).backward()
            optimizer.step()

    with mock.patch.object(TeacherModule, "log"):
        return seconds_per_call({"step": step}, device, reps)["step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="realesrgan", choices=["realesrgan", "stablesr"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (1 is steadier on a busy machine)")
    parser.add_argument("--usm", action=argparse.BooleanOptionalAction, default=True, help="GT sharpening on/off")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0), np.random.seed(0), random.seed(0)  # the reference pipeline draws from global RNGs
    config = RealESRGANConfig.from_preset(args.preset, {"use_usm": args.usm})
    bsr = import_basicsr()
    devices = [torch.device("cuda"), torch.device("cpu")] if torch.cuda.is_available() else [torch.device("cpu")]
    print(
        f"preset={args.preset} usm={args.usm} batch={args.batch} scale=x{args.scale} reps={args.reps} "
        f"torch={torch.__version__} threads={torch.get_num_threads()}"
    )
    header = f"{'device':<7}{'size':>6}  {'pipeline':<34}{'s/batch':>9}{'img/s':>9}"
    print(header + "\n" + "-" * len(header))
    ratios: dict[tuple[str, int], float] = {}
    degradation_seconds: dict[tuple[str, int], float] = {}
    for device in devices:
        generator = torch.Generator(device=device).manual_seed(0)
        modules = (bsr.DiffJPEG(differentiable=False).to(device), bsr.USMSharp().to(device)) if bsr else None
        for size in args.sizes:
            hr = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(size)).to(device)
            rows = {
                f"yonos x{args.scale} (sample + apply)": lambda: apply_realesrgan(
                    hr, sample_realesrgan_params(config, args.batch, generator, device), (args.scale,)
                ),
                "yonos x2 + x4 from one draw": lambda: apply_realesrgan(
                    hr, sample_realesrgan_params(config, args.batch, generator, device), (2, 4)
                ),
            }
            if bsr:
                rows["basicsr kernels (numpy, per image)"] = lambda: basicsr_kernels(bsr, config, args.batch)
                rows[f"basicsr x{args.scale} (kernels + feed_data)"] = lambda: basicsr_degrade(
                    bsr, modules, config, hr, basicsr_kernels(bsr, config, args.batch), args.scale
                )
            seconds = seconds_per_call(rows, device, args.reps)
            for name, value in seconds.items():
                print(f"{device.type:<7}{size:>6}  {name:<34}{value:>9.3f}{args.batch / value:>9.1f}")
            ours = seconds[f"yonos x{args.scale} (sample + apply)"]
            degradation_seconds[(device.type, size)] = ours
            if bsr:
                theirs = seconds[f"basicsr x{args.scale} (kernels + feed_data)"]
                ratios[(device.type, size)] = theirs / ours
                print(f"{device.type:<7}{size:>6}  {'ratio yonos/basicsr img/s':<34}{'':>9}{theirs / ours:>9.2f}")
    # The JSON reports the first device (cuda when present) at the first size.
    device, size = devices[0], args.sizes[0]
    step = time_training_step(device, args.batch, size, config, args.scale, args.reps)
    print(
        f"tiny-teacher training step with degradation ({device.type}, {size}px, batch {args.batch}): {step:.3f} s; "
        f"degradation share {degradation_seconds[(device.type, size)] / step:.1%}"
    )
    summary = {
        "ratio_vs_basicsr": round(ratios[(device.type, size)], 3) if ratios else None,
        "degradation_fraction_of_step": round(degradation_seconds[(device.type, size)] / step, 3) if step else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
