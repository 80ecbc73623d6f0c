"""The SR models ``yonos evaluate`` compares: a stage checkpoint (.ckpt), an exported pipeline folder, a classic
baseline (``bicubic``: MATLAB imresize, ``lanczos``: PIL), all seen as one function (LR, scale, seed, steps) -> SR,
or a folder of SR images made elsewhere, scored as it is. Test sets, metrics and reports live beside this file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from yonos.checkpoints import load_stage_checkpoint
from yonos.colorfix import ColorFix, apply_color_fix
from yonos.degradations import bicubic_matlab_upsample, upsample_to
from yonos.images import IMAGE_EXTENSIONS
from yonos.sampling import pad_to_multiple, seeded_noise, size_multiple, super_resolve, untiled_calls

ModelKind = Literal["checkpoint", "pipeline", "baseline", "folder"]
BASELINES = ("bicubic", "lanczos")
DIFFUSION_KINDS = ("checkpoint", "pipeline")  # the kinds that run once per --steps value
UpscaleFn = Callable[[Tensor, int, int, int], Tensor]
"""(LR (1, 3, h, w) in [0, 1] on the model's device, scale, seed, DDIM steps) -> SR (1, 3, h*scale, w*scale)."""


@dataclass
class LatentCalls:
    """A latent-diffusion model's own latents, for the codec-free metric ``latent_mse``: what it samples, what it
    conditions on (copying that is the floor a stage must beat) and the HR latent E(HR) both are compared with."""

    sample: Callable[[Tensor, int, int, int], Tensor]
    """(LR (1, 3, h, w), scale, seed, DDIM steps) -> z_0, the latent the SR image is decoded from."""
    decode: Callable[[Tensor, Tensor, int], Tensor]
    """(z_0, LR, scale) -> the SR image ``upscale`` returns (colour fix included)."""
    condition: Callable[[Tensor, int], Tensor]
    """(LR, scale) -> z_lr, the bicubic-upsampled LR encoded: the model's condition."""
    encode: Callable[[Tensor], Tensor]
    """HR (1, 3, H, W) -> z_hr = E(HR)."""


@dataclass
class SRModel:
    """A loaded model under its label, with what the summary reports about it."""

    label: str
    path: Path
    kind: ModelKind
    scale: int | None
    upscale: UpscaleFn
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)
    latents: LatentCalls | None = None
    """Set for stage checkpoints: their z_0 is saved beside the SR images and scored against E(HR)."""

    def identity(self) -> dict[str, Any]:
        """What decides this model's outputs: its path, size and modification time (for the resume check)."""
        if self.kind == "baseline":
            return {"baseline": self.label if str(self.path) in BASELINES else str(self.path)}
        files = sorted(self.path.rglob("*")) if self.path.is_dir() else [self.path]
        stats = [
            (str(f.relative_to(self.path) if self.path.is_dir() else f.name), f.stat().st_size, f.stat().st_mtime_ns)
            for f in files
            if f.is_file()
        ]
        return {"path": str(self.path.resolve()), "files": hashlib.sha256(repr(stats).encode()).hexdigest()[:16]}


def _color_fixer(color_fix: ColorFix) -> Callable[[Tensor, Tensor], Tensor]:
    """(SR, LR) -> SR colour-corrected against the bicubic-upsampled LR, as the pipeline does (yonos.colorfix)."""
    if color_fix == "none":
        return lambda sr, lr: sr
    return lambda sr, lr: apply_color_fix(sr, upsample_to(lr, tuple(sr.shape[-2:])), color_fix)


def load_checkpoint_model(path: Path, label: str, device: torch.device, color_fix: ColorFix = "none") -> SRModel:
    """A TeacherModule / ScaleDistillModule checkpoint: denoiser + codec + DDIM scheduler, noise seeded per image."""
    fix = _color_fixer(color_fix)
    stage = load_stage_checkpoint(path, key="--model")
    denoiser, codec = stage.denoiser.to(device).eval(), stage.codec.to(device).eval()
    scheduler = stage.scheduler()
    encode_lr, _, decode_latent = untiled_calls(denoiser, codec)
    multiple = size_multiple(denoiser.unet, codec)

    @torch.no_grad()
    def sample(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        noise = lambda z_lr: seeded_noise(tuple(z_lr.shape), [seed], lr.device)  # noqa: E731
        return super_resolve(lr, scale, encode_lr, denoiser, None, scheduler, noise, num_steps)

    @torch.no_grad()
    def decode(z_0: Tensor, lr: Tensor, scale: int) -> Tensor:
        return fix(decode_latent(z_0, (lr.shape[-2] * scale, lr.shape[-1] * scale)), lr)

    @torch.no_grad()
    def encode_hr(hr: Tensor) -> Tensor:
        return codec.encode(pad_to_multiple(hr.expand(-1, 3, -1, -1), multiple))

    def upscale(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        return decode(sample(lr, scale, seed, num_steps), lr, scale)

    info = {
        "color_fix": color_fix,
        "trained_scale": stage.scale,
        "prediction_type": stage.prediction_type,
        "backbone": stage.backbone.pretrained or stage.backbone.preset,
    }
    latents = LatentCalls(sample, decode, torch.no_grad()(encode_lr), encode_hr)
    return SRModel(label, path, "checkpoint", stage.scale, upscale, device, info, latents)


def _pipeline_scale(pipe: Any) -> int | None:
    for source in (getattr(pipe, "config", None), pipe):
        value = getattr(source, "scale", None)
        if isinstance(value, int):
            return value
    return None


def load_pipeline_model(path: Path, label: str, device: torch.device, color_fix: ColorFix = "none") -> SRModel:
    """An exported pipeline folder (model_index.json) through ``yonos.pipeline.YonosSRPipeline``."""
    from yonos.export import load_pipeline_folder

    pipe = load_pipeline_folder(path).to(device)
    info: dict[str, Any] = {"color_fix": color_fix}

    @torch.no_grad()
    def upscale(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        generator = torch.Generator().manual_seed(seed)  # a CPU generator: the same noise on any device
        out = pipe(lr, scale, num_inference_steps=num_steps, generator=generator, color_fix=color_fix, output_type="pt")
        info.update(out.metadata)  # tiling and precision, for the summary
        return out.images  # (B, 3, H, W): the images of one batch have one size

    return SRModel(label, path, "pipeline", _pipeline_scale(pipe), upscale, device, info)


def find_sr_image(folder: Path, name: str) -> Path | None:
    """The SR image of test image ``name`` in a folder of SR images: the same relative name, any image suffix."""
    for suffix in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{name}{suffix}", folder / f"{name}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def classify_model(path: str | Path) -> ModelKind:
    """What a ``--model`` value names, from the file system alone (nothing is loaded); a clear error otherwise."""
    if str(path) in BASELINES:
        return "baseline"
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return "pipeline"
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*") if p.is_file()):
            raise FileNotFoundError(
                f"--model {path}: a folder must be an exported pipeline (model_index.json) or hold SR images"
            )
        return "folder"
    if not path.is_file():
        raise FileNotFoundError(
            f"--model {path}: no such checkpoint or folder (or give one of the baselines {', '.join(BASELINES)})"
        )
    return "checkpoint"


def lanczos_upsample(lr: Tensor, scale: int) -> Tensor:
    """PIL's Lanczos (a = 3) upsampling of the 8-bit LR image, (1, 3, h, w) -> (1, 3, h*scale, w*scale)."""
    from PIL import Image

    array = (lr[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.LANCZOS)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].to(lr.device).float() / 255.0


def load_baseline(name: str, label: str, device: torch.device) -> SRModel:
    """``bicubic``: MATLAB ``imresize(lr, scale)`` (the tables' bicubic row); ``lanczos``: PIL Lanczos."""
    if name == "bicubic":
        method, resize = "MATLAB imresize bicubic (a = -0.5, antialiased, 8-bit)", bicubic_matlab_upsample
    else:
        method, resize = "PIL Lanczos (a = 3) on 8-bit images", lanczos_upsample

    def upscale(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        return resize(lr, scale)

    return SRModel(label, Path(name), "baseline", None, upscale, device, {"method": method})


def load_model(path: str | Path, label: str, device: torch.device, color_fix: ColorFix = "none") -> SRModel:
    """A stage checkpoint file, a pipeline folder (one holding ``model_index.json``), a baseline name, or a folder of
    SR images (scored as it is: its ``upscale`` is never called)."""
    kind = classify_model(path)
    if kind == "baseline":
        return load_baseline(str(path), label, device)
    path = Path(path).expanduser()
    if kind == "folder":
        return SRModel(label, path, "folder", None, _no_upscale(path), device, {"sr_folder": str(path)})
    if kind == "pipeline":
        return load_pipeline_model(path, label, device, color_fix)
    return load_checkpoint_model(path, label, device, color_fix)


def _no_upscale(path: Path) -> UpscaleFn:
    def upscale(lr: Tensor, scale: int, seed: int, num_steps: int) -> Tensor:
        raise RuntimeError(f"{path} is a folder of SR images: its images are scored, not computed")

    return upscale


def default_label(path: str | Path) -> str:
    """A model's label when none is given: its file or folder name, plus the run folder for Lightning's last.ckpt."""
    path = Path(path)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}-{path.stem}"
    return path.stem if path.suffix else path.name
