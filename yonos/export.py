"""``yonos export --ckpt CKPT --out DIR``: a stage checkpoint as a YonosSRPipeline folder (diffusers layout,
safetensors), written under a temporary name beside DIR and renamed into place, so a partial export never looks
complete. Load it with ``YonosSRPipeline.from_pretrained(DIR)`` (see yonos.pipeline for plain diffusers)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from yonos.diffusion import make_scheduler
from yonos.models import scheduler_source
from yonos.pipeline import YonosSRPipeline


def pipeline_from_checkpoint(ckpt: str | Path) -> YonosSRPipeline:
    """The pipeline of a TeacherModule / ScaleDistillModule / DecoderFinetuneModule checkpoint, with the scheduler
    the stage trained with (its noise schedule, ``prediction_type`` and zero-terminal-SNR flag)."""
    from yonos.modules.common import load_stage_checkpoint  # the one place outside the CLI that reads stage files

    stage = load_stage_checkpoint(ckpt, key="--ckpt")
    scheduler = make_scheduler(scheduler_source(stage.backbone), stage.prediction_type, stage.rescale_betas_zero_snr)
    return YonosSRPipeline.from_models(stage.denoiser.eval(), stage.codec.eval(), scheduler, stage.scale)


def export_pipeline(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the pipeline of ``ckpt`` to the folder ``out``; refuses a non-empty ``out`` unless ``overwrite``."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    pipeline = pipeline_from_checkpoint(ckpt)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        pipeline.save_pretrained(staging)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename ``staging`` to ``out``; an existing ``out`` is set aside first and deleted only once the new one is in."""
    if not out.exists() and not out.is_symlink():
        os.replace(staging, out)
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
        os.replace(staging, out)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    os.replace(out, previous / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(previous / out.name, out)
        previous.rmdir()
        raise
    shutil.rmtree(previous, ignore_errors=True)


def main(argv: list[str]) -> None:
    """Entry point of ``yonos export``."""
    parser = argparse.ArgumentParser(prog="yonos export", description=export_pipeline.__doc__)
    parser.add_argument("--ckpt", required=True, help="a teacher, distillation or decoder stage checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="the pipeline folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it is not empty")
    args = parser.parse_args(argv)
    try:
        out = export_pipeline(args.ckpt, args.out, args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    config = YonosSRPipeline.load_config(out)
    print(f"exported {args.ckpt} -> {out} (scale x{config['scale']}); load with YonosSRPipeline.from_pretrained")
