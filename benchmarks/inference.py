"""Inference benchmark: one DDIM step versus N steps of the same pipeline, peak memory versus output size with
tiling on, and tiled-versus-untiled agreement.

    python benchmarks/inference.py [--reps 5] [--steps 200] [--threads 1] [--skip-sd21] [--sd21-size 128]

Protocol: batch 1, float32, ``--threads`` CPU threads (default 1: steadier on a shared machine), one warm-up call of
each part, then the best of ``--reps`` interleaved timed calls (one call for the N-step pipeline), CUDA synchronised
around every timed region (``--device cuda``). Pipeline timings include the VAE encode and decode and exclude the
colour fix (``none``) and tiling (off), so that they compare with the parts timed alone: encode, ONE UNet pass,
decode. The ideal N-step / 1-step ratio is (enc + N * unet + dec) / (enc + unet + dec); ``speedup_over_ideal`` =
measured / ideal (1.0: the pipeline adds no overhead of its own). Random weights: speed does not depend on them.
sd21-base on a CPU runs at 32 -> 128 with N = 2 (``--sd21-size``, ``--sd21-steps``): one UNet pass takes seconds.

Peak memory: each output size runs in a fresh process (CPU: peak RSS, sampled every 2 ms, above the RSS once the
model is loaded, with glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the RSS and it tracks live
memory; CUDA: ``torch.cuda.max_memory_allocated`` above the allocated model), default tiles (512 px, overlap 128),
x4, ``--memory-presets`` (tiny on CPU; tiny and sd21-base with the UNet in bf16 on CUDA).

Latency (CUDA only, ``--latency``): ``sd21-base`` at 128 -> 512 with UNet and VAE in bf16, channels_last, PyTorch's
SDPA attention: the parts (encode, ONE UNet pass, decode) and the whole pipeline call (tiling off, colour fix none),
batch 1 and 16, per ``--latency-modes`` (eager, and ``torch.compile`` of the UNet, the VAE encoder and the VAE
decoder in a compile mode); median of ``--latency-reps`` after warm-up. Target on an H100: <= 60 ms per image at
batch 1. On a GPU: ``--sd21-size 512 --sd21-steps 200`` gives the sd21-base 1-vs-200-step row at 128 -> 512.

Large photos (``--large-mpx 1 6 24 96``, each in a fresh process): ``yonos upscale``'s streaming path (``pipe.stream``
into a PNG written band by band, wavelet colour fix, default tiles, tiny, x4) on smooth photo-like LR images up to
3000x2000 -> 12000x8000: peak RSS, wall and CPU seconds per output megapixel (CPU seconds: the process's own, which a
shared machine disturbs less than wall time), tiles per image; ``--tiles-per-call`` repeats them with tile batching.
``--large-only`` runs only these rows.

Ends with ONE JSON line: ``speedup_over_ideal`` (tiny), ``peak_mem_2048_over_512``, ``tiled_vs_untiled_psnr_db``
(and, on CUDA, ``bf16_ms_per_image_b1`` / ``_b16``: the best of eager and compiled pipeline calls), and the large-image
rows' ``peak_rss_mb_{N}mpx``, ``s_per_mpx_{N}mpx``, ``cpu_s_per_mpx_{N}mpx`` and ``peak_rss_24mpx_over_1mpx``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.utils import logging as diffusers_logging

from yonos.diffusion import make_scheduler
from yonos.models import LatentCodec, SRDenoiser
from yonos.pipeline import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, YonosSRPipeline
from yonos.tiling import tile_starts


def build_pipeline(
    preset: str, scale: int, device: torch.device, unet_dtype: torch.dtype = torch.float32
) -> YonosSRPipeline:
    torch.manual_seed(0)
    with device:  # random weights drawn where they live: seconds saved for sd21-base on a GPU
        denoiser, codec = SRDenoiser.from_preset(preset).eval(), LatentCodec.from_preset(preset).eval()
    pipe = YonosSRPipeline.from_models(denoiser, codec, make_scheduler(None), scale).to(device)
    pipe.unet.to(dtype=unet_dtype)
    return pipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of ``fn``, device synchronised before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def measure_speed(
    preset: str, lr_size: int, scale: int, steps: int, reps: int, device: torch.device, warmup: bool = True
) -> dict:
    """Components and whole-pipeline times at ``lr_size`` -> ``lr_size * scale``; 1 step versus ``steps`` steps."""
    pipe = build_pipeline(preset, scale, device)
    out_size = lr_size * scale
    lr = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(0)).to(device)
    condition = torch.rand(1, 3, out_size, out_size, generator=torch.Generator().manual_seed(1)).to(device)
    codec, denoiser = pipe.codec, pipe.denoiser
    z = codec.encode(condition)  # (1, 4, H/8, W/8)
    t = torch.full((1,), pipe.scheduler.config.num_train_timesteps - 1, device=device)

    def run(n: int) -> Callable[[], object]:
        generator = torch.Generator().manual_seed(0)
        return lambda: pipe(lr, num_inference_steps=n, generator=generator, tile_size=None, output_type="pt")

    parts = {
        "encode_s": lambda: codec.encode(condition),
        "unet_s": lambda: denoiser(z, z, t),
        "decode_s": lambda: codec.decode(z),
        "one_step_s": run(1),
    }
    if warmup:
        for fn in parts.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(reps):  # interleaved: a burst of load on a shared machine hits every part alike
        for name, fn in parts.items():
            times[name].append(seconds(fn, device))
    result = {"preset": preset, "size": f"{lr_size}->{out_size}", "steps": steps}
    result.update({name: min(values) for name, values in times.items()})  # best of reps: the least disturbed
    result["n_steps_s"] = seconds(run(steps), device)
    enc, unet, dec = result["encode_s"], result["unet_s"], result["decode_s"]
    result["measured_speedup"] = result["n_steps_s"] / result["one_step_s"]
    result["ideal_speedup"] = (enc + steps * unet + dec) / (enc + unet + dec)
    result["speedup_over_ideal"] = result["measured_speedup"] / result["ideal_speedup"]
    return result


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class PeakRSS:
    """Highest resident set size seen while the ``with`` block runs (a thread samples it every 2 ms)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._running = _rss_bytes(), True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


@torch.no_grad()
def peak_memory_child(preset: str, out_size: int, device: torch.device) -> dict:
    """Run in a fresh process: peak memory of one tiled x4 call at ``out_size`` above the loaded model."""
    unet_dtype = torch.bfloat16 if preset != "tiny" and device.type == "cuda" else torch.float32
    pipe = build_pipeline(preset, 4, device, unet_dtype)
    pipe(torch.rand(1, 3, 16, 16).to(device), generator=torch.Generator().manual_seed(0))  # warm-up: kernels, caches
    lr = torch.rand(1, 3, out_size // 4, out_size // 4, generator=torch.Generator().manual_seed(0)).to(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss_bytes()
    start = time.perf_counter()
    with PeakRSS() as rss:
        pipe(lr, generator=torch.Generator().manual_seed(0), output_type="pt")
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    growth_mb, peak_mb = (peak - baseline) / 2**20, peak / 2**20
    return {"preset": preset, "size": out_size, "growth_mb": growth_mb, "peak_mb": peak_mb, "seconds": seconds}


LARGE_SIZES = {1: (1024, 1024), 6: (3072, 2048), 24: (6000, 4000), 96: (12000, 8000)}
"""Output megapixels -> (width, height) of the large-image rows (x4 from LR photos of 256² to 3000x2000)."""


@torch.no_grad()
def _use_stand_in_networks() -> None:
    """Replace the VAE and UNet calls by cheap local functions of the same shapes (8x average pooling, nearest 8x
    upsampling, a 3x3 convolution): what is left is the pipeline's own memory (condition, latents, blend buffers,
    colour fix, PNG), measurable at 96 Mpx in seconds. The networks' activations are per tile: the 1 Mpx row of the
    real tiny model holds them."""
    from yonos.models import LatentCodec, SRDenoiser

    weight = torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0)) / 8
    LatentCodec.encode = lambda self, image, **_: F.avg_pool2d(image * 2 - 1, 8).repeat(1, 2, 1, 1)[:, :4]
    LatentCodec.decode = lambda self, z, clamp=True: (F.interpolate(z[:, :3], scale_factor=8) * 0.5 + 0.5).clamp(0, 1)
    SRDenoiser.forward = lambda self, z_t, z_lr, t: torch.tanh(F.conv2d(torch.cat([z_t, z_lr], 1), weight, padding=1))


def large_image_child(megapixels: int, device: torch.device, tiles_per_call: int, stand_in: bool = False) -> dict:
    """Run in a fresh process: ``yonos upscale``'s path (pipe.stream into a PNG written band by band, wavelet colour
    fix, default tiles) for one photo-like image x4 to ``LARGE_SIZES[megapixels]``; peak RSS and seconds."""
    import tempfile

    from yonos.png_stream import PngRowWriter

    width, height = LARGE_SIZES[megapixels]
    if stand_in:
        _use_stand_in_networks()
    pipe = build_pipeline("tiny", 4, device)
    pipe.set_progress_bar_config(disable=True)
    pipe(torch.rand(1, 3, 16, 16).to(device), generator=torch.Generator().manual_seed(0))  # warm-up
    lr = F.interpolate(torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(0)), size=(height // 4, width // 4),
                       mode="bicubic").clamp(0, 1).to(device)  # smooth, photo-like content
    gc.collect()
    baseline = _rss_bytes()
    start, cpu_start = time.perf_counter(), time.process_time()
    with PeakRSS() as rss, tempfile.TemporaryDirectory() as folder:
        with PngRowWriter(f"{folder}/out.png", height, width, 3) as png:

            def write(top: int, rows: torch.Tensor) -> None:
                png.write(rows[0].clamp(0, 1).mul(255).round().permute(1, 2, 0).to(torch.uint8).cpu().numpy())

            pipe.stream(lr, write, generator=torch.Generator().manual_seed(0), color_fix="wavelet",
                        tiles_per_call=tiles_per_call)
            png.close()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tiles = math.prod(len(tile_starts(side, DEFAULT_TILE_SIZE, DEFAULT_TILE_OVERLAP, 8)) for side in (height, width))
    return {"megapixels": megapixels, "size": f"{width}x{height}", "peak_mb": rss.peak / 2**20,
            "growth_mb": (rss.peak - baseline) / 2**20, "seconds": seconds, "s_per_mpx": seconds / (width * height / 1e6),
            "tiles": tiles, "tiles_per_call": tiles_per_call,
            "cpu_s_per_mpx": cpu_seconds / (width * height / 1e6), "networks": "stand-in" if stand_in else "tiny"}


def large_image(megapixels: int, device: torch.device, tiles_per_call: int, stand_in: bool = False) -> dict:
    command = [sys.executable, __file__, "--child-large", str(megapixels), str(tiles_per_call), str(int(stand_in))]
    command += ["--device", str(device)]
    command += ["--threads", str(torch.get_num_threads())]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    completed = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _print_large(rows: list[dict]) -> None:
    print(f"\n(e) large photos, x4, `yonos upscale`'s streaming path (PNG written band by band, wavelet colour fix), "
          f"tiles {DEFAULT_TILE_SIZE}/{DEFAULT_TILE_OVERLAP}, tiny, peak RSS of a fresh process")
    print("| networks | output | Mpx | tiles | tiles per call | peak RSS (MiB) | growth over loaded model (MiB) | s | s / Mpx | "
          "CPU s / Mpx |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['networks']} | {r['size']} | {r['megapixels']} | {r['tiles']} | {r['tiles_per_call']} | {r['peak_mb']:.0f} | "
              f"{r['growth_mb']:.0f} | {r['seconds']:.0f} | {r['s_per_mpx']:.2f} | {r['cpu_s_per_mpx']:.2f} |", flush=True)


def peak_memory(preset: str, out_size: int, device: torch.device) -> dict:
    command = [sys.executable, __file__, "--child-peak", preset, str(out_size), "--device", str(device)]
    command += ["--threads", str(torch.get_num_threads())]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # large frees go back to the OS: RSS ~ live memory
    completed = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(completed.stdout.strip().splitlines()[-1])


@torch.no_grad()
def tiled_vs_untiled(out_size: int, tile: int, overlap: int, device: torch.device) -> float:
    """PSNR (dB) between the tiled and the untiled output of the tiny random pipeline, same noise."""
    pipe = build_pipeline("tiny", 4, device)
    lr = torch.rand(1, 3, out_size // 4, out_size // 4, generator=torch.Generator().manual_seed(0)).to(device)
    outputs = [
        pipe(lr, generator=torch.Generator().manual_seed(0), tile_size=size, tile_overlap=overlap, output_type="pt")
        for size in (None, tile)
    ]
    mse = F.mse_loss(outputs[0].images, outputs[1].images).item()
    return 10 * math.log10(1.0 / max(mse, 1e-20))


def median_ms(fn: Callable[[], object], reps: int, device: torch.device) -> float:
    """Median wall time (ms) of ``reps`` calls after three warm-up calls, device synchronised around each call."""
    for _ in range(3):
        fn()
    return 1000 * statistics.median(seconds(fn, device) for _ in range(reps))


@torch.no_grad()
def measure_latency(
    preset: str, lr_size: int, scale: int, batches: list[int], compile_mode: str | None, reps: int,
    device: torch.device,
) -> list[dict]:
    """bf16 latency of the parts and of the pipeline call at ``lr_size`` -> ``lr_size * scale``, per batch size.

    UNet and VAE in bf16 and channels_last; with ``compile_mode``, ``torch.compile`` of the UNet, the VAE encoder and
    the VAE decoder in place (``Module.compile``: state dicts and the pipeline are unchanged), shapes static.
    """
    pipe = build_pipeline(preset, scale, device, torch.bfloat16)
    pipe.vae.to(dtype=torch.bfloat16)
    for module in (pipe.unet, pipe.vae):
        module.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        for module in (pipe.unet, pipe.vae.encoder, pipe.vae.decoder):
            module.compile(mode=compile_mode, dynamic=False)
    compile_mode = compile_mode or "eager"
    rows = []
    for batch in batches:
        started = time.perf_counter()
        row = {"preset": preset, "size": f"{lr_size}->{lr_size * scale}", "batch": batch, "compile": compile_mode}
        row.update(_latency_parts(pipe, lr_size, scale, batch, reps, device, compile_mode == "reduce-overhead"))
        row["ms_per_image"] = row["pipeline_ms"] / batch
        row["first_call_s"] = time.perf_counter() - started  # compile time included
        rows.append(row)
        _print_latency([row])
    return rows


def _latency_parts(
    pipe: YonosSRPipeline, lr_size: int, scale: int, batch: int, reps: int, device: torch.device, graphs: bool
) -> dict[str, float]:
    codec, denoiser, out_size = pipe.codec, pipe.denoiser, lr_size * scale
    lr = torch.rand(batch, 3, lr_size, lr_size, device=device)
    condition = torch.rand(batch, 3, out_size, out_size, device=device)
    z = codec.encode(condition).clone()  # CUDA graphs reuse their output buffers: keep a copy
    t = torch.full((batch,), pipe.scheduler.config.num_train_timesteps - 1, device=device)
    generator = torch.Generator().manual_seed(0)
    parts = {
        "encode_ms": lambda: codec.encode(condition),
        "unet_ms": lambda: denoiser(z, z, t),
        "decode_ms": lambda: codec.decode(z),
        "pipeline_ms": lambda: pipe(lr, generator=generator, tile_size=None, output_type="pt", vae_dtype=torch.bfloat16),
    }
    if graphs:  # each call is a new "step" for CUDA-graph trees: earlier outputs may be overwritten
        parts = {name: _new_graph_step(fn) for name, fn in parts.items()}
    return {name: median_ms(fn, reps, device) for name, fn in parts.items()}


def _new_graph_step(fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        torch.compiler.cudagraph_mark_step_begin()
        return fn()

    return call


def _print_speed(rows: list[dict]) -> None:
    print("\n(a) one step versus N steps, same pipeline, tiling off, colour fix none")
    header = "| preset | size | enc s | 1 UNet s | dec s | 1-step s | N | N-step s | measured | ideal | meas./ideal |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['size']} | {r['encode_s']:.3f} | {r['unet_s']:.3f} | {r['decode_s']:.3f} | "
            f"{r['one_step_s']:.3f} | {r['steps']} | {r['n_steps_s']:.2f} | {r['measured_speedup']:.1f}x | "
            f"{r['ideal_speedup']:.1f}x | {r['speedup_over_ideal']:.3f} |"
        )


def _print_memory(rows: list[dict], device: torch.device) -> None:
    what = "max_memory_allocated" if device.type == "cuda" else "peak RSS"
    print(f"\n(b) memory versus output size, x4, tiles {DEFAULT_TILE_SIZE}/{DEFAULT_TILE_OVERLAP} px ({what})")
    print("| preset | output | growth over loaded model (MiB) | peak (MiB) | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['size']}^2 | {r['growth_mb']:.0f} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")


def _print_latency(rows: list[dict]) -> None:
    for r in rows:
        print(
            f"| {r['preset']} | {r['size']} | {r['batch']} | {r['compile']} | {r['encode_ms']:.1f} | "
            f"{r['unet_ms']:.1f} | {r['decode_ms']:.1f} | {r['pipeline_ms']:.1f} | {r['ms_per_image']:.1f} | "
            f"{r['first_call_s']:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per measurement (best of)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (children inherit it)")
    parser.add_argument("--steps", type=int, default=200, help="N of the N-step run (tiny preset)")
    parser.add_argument("--skip-sd21", action="store_true", help="skip the sd21-base speed run")
    parser.add_argument("--sd21-size", type=int, default=128, help="sd21-base output size (CPU: 512 is too slow)")
    parser.add_argument("--sd21-steps", type=int, default=2, help="N of the sd21-base N-step run (CPU: 200 is hours)")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--memory-presets", nargs="+", default=None, help="default: tiny (CPU), tiny sd21-base (CUDA)")
    parser.add_argument("--psnr-size", type=int, default=512, help="output size of the tiled-vs-untiled check")
    parser.add_argument("--psnr-tile", type=int, nargs=2, default=[256, 64], help="tile size and overlap there")
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=None, help="default: on CUDA")
    parser.add_argument("--latency-preset", default="sd21-base")
    parser.add_argument("--latency-batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--latency-reps", type=int, default=20)
    parser.add_argument(
        "--latency-modes", nargs="+", default=["eager", "default"], help="'eager' and/or torch.compile modes"
    )
    parser.add_argument("--latency-only", action="store_true", help="stop after the latency table")
    parser.add_argument("--large-mpx", type=int, nargs="*", default=[1, 6, 24, 96], choices=sorted(LARGE_SIZES),
                        help="large-image rows (output megapixels); none: skip")
    parser.add_argument("--tiles-per-call", type=int, nargs="+", default=[1], help="large rows per value")
    parser.add_argument("--large-only", action="store_true", help="only the large-image rows")
    parser.add_argument("--child-peak", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stand-in", action="store_true", help="large rows with stand-in networks (pipeline memory)")
    parser.add_argument("--child-large", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()  # the bf16 casts' "keep in float32: []" notice
    if args.child_peak is not None:
        print(json.dumps(peak_memory_child(args.child_peak[0], int(args.child_peak[1]), device)))
        return
    if args.child_large is not None:
        print(json.dumps(large_image_child(args.child_large[0], device, args.child_large[1], bool(args.child_large[2]))))
        return
    if args.large_only:
        print(json.dumps(_large_summary(_large_rows(args, device))))
        return
    summary: dict[str, object] = {}
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)

    if args.latency if args.latency is not None else device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print("\n(d) bf16 latency, channels_last, SDPA; whole pipeline call = bicubic + encode + 1 UNet + decode")
        print("| preset | size | batch | compile | enc ms | UNet ms | dec ms | pipeline ms | ms / image | first call s |")
        print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
        modes = [None if mode == "eager" else mode for mode in args.latency_modes]
        latency = [
            row
            for mode in modes
            for row in measure_latency(
                args.latency_preset, 128, 4, args.latency_batches, mode, args.latency_reps, device
            )
        ]
        for batch in args.latency_batches:
            best = min(r["ms_per_image"] for r in latency if r["batch"] == batch)
            summary[f"bf16_ms_per_image_b{batch}"] = round(best, 2)
        print(json.dumps({"latency": summary}), flush=True)
        if args.latency_only:
            return

    speed = [measure_speed("tiny", 128, 4, args.steps, args.reps, device)]
    if not args.skip_sd21:
        on_gpu = device.type == "cuda"  # a CPU sd21 pass takes seconds: no warm-up, one repeat
        sd21_reps = args.reps if on_gpu else 1
        speed.append(measure_speed("sd21-base", args.sd21_size // 4, 4, args.sd21_steps, sd21_reps, device, on_gpu))
    _print_speed(speed)
    presets = args.memory_presets or (["tiny", "sd21-base"] if device.type == "cuda" else ["tiny"])
    memory = [peak_memory(preset, size, device) for preset in presets for size in args.memory_sizes]
    _print_memory(memory, device)
    psnr = tiled_vs_untiled(args.psnr_size, *args.psnr_tile, device)
    print(
        f"\n(c) tiled ({args.psnr_tile[0]}/{args.psnr_tile[1]} px) vs untiled, {args.psnr_size}^2 x4, tiny RANDOM "
        f"networks: {psnr:.2f} dB (GroupNorm statistics, attention and receptive fields of random networks are not "
        "local; tests/test_pipeline.py checks the stitching itself with local networks: >= 40 dB)"
    )
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"\nfloat32 unless stated, batch 1; load average at the end {load} (on a shared CPU compare ratios)")
    growth = {(row["preset"], row["size"]): row["growth_mb"] for row in memory}

    def memory_ratio(preset: str) -> float | None:
        has_both = (preset, 512) in growth and (preset, 2048) in growth
        return round(growth[preset, 2048] / growth[preset, 512], 3) if has_both else None

    result = {
        "speedup_over_ideal": round(speed[0]["speedup_over_ideal"], 4),
        "peak_mem_2048_over_512": memory_ratio(presets[0]),
        "tiled_vs_untiled_psnr_db": round(psnr, 2),
        "measured_speedup": round(speed[0]["measured_speedup"], 2),
        "ideal_speedup": round(speed[0]["ideal_speedup"], 2),
    }
    if len(speed) > 1:
        result["sd21_speedup_over_ideal"] = round(speed[1]["speedup_over_ideal"], 4)
    for preset in presets[1:]:
        result[f"peak_mem_2048_over_512_{preset}"] = memory_ratio(preset)
    result.update(summary)
    result.update(_large_summary(_large_rows(args, device)))
    print(json.dumps(result))


def _large_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for per_call in args.tiles_per_call:
        for megapixels in args.large_mpx:
            rows.append(large_image(megapixels, device, per_call, args.stand_in))
            _print_large(rows[-1:])
    return rows


def _large_summary(rows: list[dict]) -> dict:
    """Peak RSS (MiB) and s/Mpx per output size (first tiles-per-call value), and the 24 / 1 Mpx peak ratio."""
    first = [r for r in rows if r["tiles_per_call"] == rows[0]["tiles_per_call"]] if rows else []
    tag = "_stand_in" if first and first[0]["networks"] == "stand-in" else ""
    summary: dict[str, object] = {f"peak_rss_mb_{r['megapixels']}mpx{tag}": round(r["peak_mb"]) for r in first}
    summary.update({f"s_per_mpx_{r['megapixels']}mpx": round(r["s_per_mpx"], 2) for r in first})
    summary.update({f"cpu_s_per_mpx_{r['megapixels']}mpx": round(r["cpu_s_per_mpx"], 2) for r in first})
    peaks = {r["megapixels"]: r["peak_mb"] for r in first}
    if 1 in peaks and 24 in peaks:
        summary[f"peak_rss_24mpx_over_1mpx{tag}"] = round(peaks[24] / peaks[1], 3)
    return summary


if __name__ == "__main__":
    main()
