"""``yonos upscale INPUT... -o OUTDIR --model DIR``: super-resolve image files and folders with an exported pipeline.

File handling only: listing, never writing over an input, resuming, alpha / gray / 16-bit kept, PNG metadata,
atomic writes. What happens to the pixels is YonosSRPipeline's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from torch import Tensor
from tqdm import tqdm

from yonos.colorfix import COLOR_FIX_MODES
from yonos.commands import command_parser, parse
from yonos.export import check_pipeline_folder, load_pipeline_folder
from yonos.images import IMAGE_EXTENSIONS, DecodedImage, read_image
from yonos.models import resolve_device
from yonos.pipeline import DEFAULT_TILE_OVERLAP, DEFAULT_TILE_SIZE, YonosSRPipeline
from yonos.png_stream import PngRowWriter
from yonos.sampling import upsampled_rows

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


class UnsafeOutputError(ValueError):
    """The command would write over one of its inputs."""


@dataclass(frozen=True)
class Job:
    """One input file and the PNG it becomes."""

    source: Path
    target: Path


@dataclass(frozen=True)
class UpscaleOptions:
    """What every file is super-resolved with (the command's flags)."""

    scale: int | None
    steps: int
    tile_size: int | None
    tile_overlap: int
    tiles_per_call: int
    color_fix: str
    seed: int
    vae_dtype: torch.dtype
    model: str


def plan_jobs(inputs: list[Path], out_dir: Path) -> tuple[list[Job], list[str]]:
    """The files to process and the problems found (missing inputs, output-name clashes).

    Folders are searched recursively for image suffixes, skipping hidden names and anything under ``out_dir``;
    a file ``ROOT/a/b.jpg`` becomes ``OUT_DIR/a/b.png``, a file given by name ``OUT_DIR/b.png``.

    Raises:
        UnsafeOutputError: ``out_dir`` is an input folder, or an output path is an input file.
    """
    out_resolved = out_dir.resolve()
    jobs: list[Job] = []
    problems: list[str] = []
    for given in inputs:
        if given.is_dir():
            root = given.resolve()
            if root == out_resolved:
                raise UnsafeOutputError(f"-o {out_dir} is the input folder {given}; choose another output folder")
            for path in sorted(root.rglob("*")):
                relative = path.relative_to(root)
                hidden = any(part.startswith(".") for part in relative.parts)
                is_image = path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
                if is_image and not hidden and not path.is_relative_to(out_resolved):
                    jobs.append(Job(path, out_dir / relative.with_suffix(".png")))
        elif given.is_file():
            jobs.append(Job(given.resolve(), out_dir / f"{given.stem}.png"))
        else:
            problems.append(f"{given}: no such file or folder")
    sources = {job.source for job in jobs}
    unique: list[Job] = []
    claimed: dict[Path, Path] = {}
    for job in jobs:
        target = job.target.resolve()
        if target in sources:
            raise UnsafeOutputError(f"the output {job.target} would overwrite the input {target}; choose another -o")
        if target in claimed:
            if claimed[target] != job.source:
                problems.append(f"{job.source}: its output {job.target} is already {claimed[target]}'s; not processed")
            continue
        claimed[target] = job.source
        unique.append(job)
    return unique, problems


def restore_planes(sr: Tensor, source: DecodedImage, scale: int, top: int = 0) -> Tensor:
    """SR RGB rows (3, n, W) starting at row ``top`` back to the source's kind: gray as BT.601 luma, the alpha rows
    bicubic-upsampled (from the source rows they need only) and appended."""
    planes = sr
    if source.gray:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=sr.dtype, device=sr.device)
        planes = (sr * weights[:, None, None]).sum(0, keepdim=True)  # (1, n, W)
    if source.alpha is not None:
        alpha = upsampled_rows(source.alpha[None].to(sr), scale, top, top + sr.shape[-2])
        planes = torch.cat([planes, alpha[0]])
    return planes


def upscale_file(pipe: YonosSRPipeline, job: Job, options: UpscaleOptions) -> None:
    """Super-resolve one file into its PNG band by band of rows (the output is never whole in memory), written to a
    temporary file renamed into place at the end; the noise comes from ``options.seed`` alone."""
    source = read_image(job.source)
    scale = int(options.scale or pipe.config.scale)
    channels = (1 if source.gray else 3) + (source.alpha is not None)
    height, width = source.rgb.shape[-2] * scale, source.rgb.shape[-1] * scale
    peak = 255.0 if source.bit_depth == 8 else 65535.0

    with PngRowWriter(job.target, height, width, channels, source.bit_depth) as png:

        def write_rows(top: int, rows: Tensor) -> None:
            planes = restore_planes(rows[0], source, scale, top).clamp(0, 1).mul(peak).round().permute(1, 2, 0)
            png.write(planes.cpu().numpy().astype(np.uint8 if source.bit_depth == 8 else np.uint16))

        metadata = pipe.stream(
            source.rgb,
            write_rows,
            scale=scale,
            num_inference_steps=options.steps,
            generator=torch.Generator().manual_seed(options.seed),  # CPU generator: the same noise on any device
            tile_size=options.tile_size,
            tile_overlap=options.tile_overlap,
            tiles_per_call=options.tiles_per_call,
            color_fix=options.color_fix,
            vae_dtype=options.vae_dtype,
        )
        metadata = {**metadata, "yonos:seed": str(options.seed), "yonos:model": options.model}
        png.close({**metadata, "yonos:source": job.source.name})


def load_pipeline(model: Path, dtype: torch.dtype, device: str | torch.device) -> YonosSRPipeline:
    """The exported pipeline on ``device``: weights read in float32, then the UNet cast to ``dtype`` (the VAE stays
    in float32, so its weights are never rounded to half precision)."""
    pipe = load_pipeline_folder(model)
    if pipe.unet.dtype != dtype:
        pipe.unet.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _parser() -> ArgumentParser:
    parser = command_parser("yonos upscale", "Super-resolve image files and folders with a pipeline from `yonos export`.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders (recursive)")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder (PNG files)")
    parser.add_argument("--model", required=True, type=Path, help="a folder written by `yonos export`")
    parser.add_argument("--scale", type=int, default=None, help="magnification (None: the model's)")
    parser.add_argument("--steps", type=int, default=1, help="DDIM steps")
    parser.add_argument("--tile-size", type=int, default=DEFAULT_TILE_SIZE, help="tile side, output px; 0: off")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, help="tile overlap, output px")
    parser.add_argument("--tiles-per-call", type=int, default=1, help="tiles per UNet / VAE call")
    parser.add_argument("--color-fix", choices=COLOR_FIX_MODES, default="wavelet", help="against the bicubic LR")
    parser.add_argument("--seed", type=int, default=42, help="noise seed, the same for every file")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="UNet precision")
    parser.add_argument("--vae-dtype", choices=["fp32", "bf16"], default="fp32", help="VAE precision")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu, or auto")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    return parser


def main(argv: list[str]) -> None:
    """Entry point of ``yonos upscale``; exits 1 when any file failed, 130 when interrupted."""
    parser = _parser()
    args = parse(parser, argv)
    try:
        jobs, problems = plan_jobs(args.inputs, args.out)
    except UnsafeOutputError as err:
        parser.error(str(err))
    if (args.scale is not None and args.scale < 1) or args.steps < 1:
        parser.error("--scale and --steps must be positive integers")
    if args.tile_size and not 0 <= args.tile_overlap < args.tile_size:
        parser.error(f"--tile-overlap must be in [0, --tile-size), got {args.tile_overlap} for {args.tile_size}")
    try:
        check_pipeline_folder(args.model)
    except (FileNotFoundError, ValueError) as err:
        parser.error(f"--model: {err}")
    options = UpscaleOptions(
        scale=args.scale,
        steps=args.steps,
        tile_size=args.tile_size or None,
        tile_overlap=args.tile_overlap,
        tiles_per_call=args.tiles_per_call,
        color_fix=args.color_fix,
        seed=args.seed,
        vae_dtype=DTYPES[args.vae_dtype],
        model=args.model.resolve().name,
    )
    pipe = load_pipeline(args.model, DTYPES[args.dtype], resolve_device(args.device))
    for problem in problems:
        print(f"FAILED {problem}")
    written = skipped = 0
    failed = len(problems)
    start = time.perf_counter()
    try:
        for job in tqdm(jobs, desc="upscale", unit="image"):
            if job.target.exists() and not args.overwrite:
                skipped += 1
                continue
            try:
                upscale_file(pipe, job, options)
                written += 1
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the others; the exit code tells
                failed += 1
                hint = " (lower --tile-size)" if "out of memory" in str(err).lower() else ""
                tqdm.write(f"FAILED {job.source}: {type(err).__name__}: {err}{hint}")
    except KeyboardInterrupt:
        print(f"interrupted after {written} written; no partial file was left. Rerun the same command to resume.")
        raise SystemExit(130) from None
    total = len(jobs) + len(problems)
    print(
        f"upscale: {written} written, {skipped} skipped (already exist), {failed} failed, of {total} inputs "
        f"-> {args.out} in {time.perf_counter() - start:.1f} s"
    )
    if failed:
        raise SystemExit(1)
