"""The SR models ``yonos evaluate`` compares: a stage checkpoint (.ckpt) or an exported pipeline folder, both seen
as one function (LR, scale, seed, steps) -> SR. Test sets, metrics and reports live beside this file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from yonos.colorfix import apply_color_fix
from yonos.degradations import upsample_to
from yonos.diffusion import make_scheduler
from yonos.inference import sample_with_seeds
from yonos.models import scheduler_source

ColorFix = Literal["none", "adain", "wavelet"]
UpscaleFn = Callable[[Tensor, int, int, int], Tensor]
"""(LR (1, 3, h, w) in [0, 1] on the model's device, scale, seed, DDIM steps) -> SR (1, 3, h*scale, w*scale)."""


@dataclass
class SRModel:
    """A loaded model under its label, with what the summary reports about it."""

    label: str
    path: Path
    kind: Literal["checkpoint", "pipeline"]
    scale: int | None
    upscale: UpscaleFn
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What decides this model's outputs: its path, size and modification time (for the resume check)."""
        files = sorted(self.path.rglob("*")) if self.path.is_dir() else [self.path]
        stats = [
            (str(f.relative_to(self.path) if self.path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
            for f in files
            if f.is_file()
        ]
        return {"path": str(self.path.resolve()), "files": hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}


def resolve_device(device: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise the named device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _color_fixer(color_fix: ColorFix) -> Callable[[Tensor, Tensor], Tensor]:
    """(SR, LR) -> SR colour-corrected against the bicubic-upsampled LR, as the pipeline does (yonos.colorfix)."""
    if color_fix == "none":
        return lambda sr, lr: sr
    return lambda sr, lr: apply_color_fix(sr, upsample_to(lr, tuple(sr.shape[-2:])), color_fix)


def load_checkpoint_model(path: Path, label: str, device: torch.device, color_fix: ColorFix = "none") -> SRModel:
    """A TeacherModule / ScaleDistillModule checkpoint: denoiser + codec + DDIM scheduler, noise seeded per image."""
    from yonos.modules.common import load_stage_checkpoint  # stage files are read through the modules' own loader

    fix = _color_fixer(color_fix)
    stage = load_stage_checkpoint(path, key="--model")
    denoiser, codec = stage.denoiser.to(device).eval(), stage.codec.to(device).eval()
    scheduler = make_scheduler(scheduler_source(stage.backbone), stage.prediction_type, stage.rescale_betas_zero_snr)

    def upscale(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        return fix(sample_with_seeds(denoiser, codec, scheduler, lr, scale, [seed], num_steps), lr)

    info = {
        "color_fix": color_fix,
        "trained_scale": stage.scale,
        "prediction_type": stage.prediction_type,
        "backbone": stage.backbone.pretrained or stage.backbone.preset,
    }
    return SRModel(label, path, "checkpoint", stage.scale, upscale, device, info)


def _pipeline_scale(pipe: Any) -> int | None:
    for source in (getattr(pipe, "config", None), pipe):
        value = getattr(source, "scale", None)
        if isinstance(value, int):
            return value
    return None


def load_pipeline_model(path: Path, label: str, device: torch.device, color_fix: ColorFix = "none") -> SRModel:
    """An exported pipeline folder (model_index.json) through ``yonos.pipeline.YonosSRPipeline``."""
    from yonos.pipeline import YonosSRPipeline

    pipe = YonosSRPipeline.from_pretrained(str(path)).to(device)
    info: dict[str, Any] = {"color_fix": color_fix}

    @torch.no_grad()
    def upscale(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)  # a CPU generator: the same noise on any device
        out = pipe(lr, scale, num_inference_steps=num_steps, generator=generator, color_fix=color_fix, output_type="pt")
        info.update(getattr(out, "metadata", {}) or {})  # tiling and precision, for the summary
        images = getattr(out, "images", out)
        images = images if isinstance(images, Tensor) else torch.stack(list(images))
        return images if images.ndim == 4 else images[None]

    return SRModel(label, path, "pipeline", _pipeline_scale(pipe), upscale, device, info)


def load_model(path: str | Path, label: str, device: torch.device, color_fix: ColorFix = "none") -> SRModel:
    """A stage checkpoint file or a pipeline folder (one holding ``model_index.json``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"--model {path}: a folder must be an exported pipeline (no model_index.json)")
        return load_pipeline_model(path, label, device, color_fix)
    return load_checkpoint_model(path, label, device, color_fix)


def default_label(path: str | Path) -> str:
    """A model's label when none is given: its file or folder name, plus the run folder for Lightning's last.ckpt."""
    path = Path(path)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}-{path.stem}"
    return path.stem if path.suffix else path.name
