"""Stage checkpoints: what a stage saves of its SR model (the model card, frozen parts left out) and how a later
stage, ``yonos export`` and ``yonos evaluate`` read it back (:func:`load_stage_checkpoint` -> :class:`StageCheckpoint`).
No Lightning here: a checkpoint file is a dict, read with ``weights_only=True``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler
from torch import Tensor, nn

from yonos.diffusion import make_scheduler
from yonos.models import BackboneConfig, LatentCodec, SRDenoiser, build_codec, build_denoiser, scheduler_source


@dataclass
class StageCheckpoint:
    """The SR model held by a stage checkpoint (teacher or distilled student) and how it was trained."""

    denoiser: SRDenoiser
    codec: LatentCodec
    backbone: BackboneConfig
    scale: int
    prediction_type: str
    rescale_betas_zero_snr: bool
    loss_weighting: str
    path: Path | None
    target: str = "x0"
    """What the UNet denoises: ``x0`` (z_0, the paper) or ``residual`` (z_0 - z_lr); see SRDenoiser.use_target."""
    """The file it was read from; None for one built in memory."""

    def scheduler(self) -> DDIMScheduler:
        """The DDIM scheduler the stage trained with: its base's noise schedule, ``prediction_type`` and the
        zero-terminal-SNR flag."""
        return make_scheduler(scheduler_source(self.backbone), self.prediction_type, self.rescale_betas_zero_snr)

    def card(self, scale: int | None = None, loss_weighting: str | None = None) -> dict[str, Any]:
        """:func:`model_card` of this model, or of a model trained from it at ``scale`` with ``loss_weighting``."""
        return model_card(
            self.backbone, scale or self.scale, self.prediction_type, self.rescale_betas_zero_snr,
            loss_weighting or self.loss_weighting, self.target,
        )


def _sub_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


MODEL_STATE_KEYS = ("state_dict", "current_model_state")
"""Where a checkpoint holds module weights: Lightning's ``state_dict`` and, with EMA, the callback's live weights."""


def drop_submodule_state(checkpoint: dict[str, Any], prefix: str) -> None:
    """Leave a frozen submodule (``prefix`` e.g. ``"teacher."``) out of the checkpoint's weights."""
    for key in MODEL_STATE_KEYS:
        if key in checkpoint:
            checkpoint[key] = {k: v for k, v in checkpoint[key].items() if not k.startswith(prefix)}


def restore_submodule_state(checkpoint: dict[str, Any], prefix: str, module: nn.Module) -> None:
    """Put a frozen submodule left out by :func:`drop_submodule_state` back, from the module as rebuilt at init, so
    that Lightning's strict loading finds every key."""
    state = {f"{prefix}{k}": v for k, v in module.state_dict().items()}
    for key in MODEL_STATE_KEYS:
        if key in checkpoint:
            checkpoint[key].update(state)


MODEL_CARD_KEY = "yonos_model"
"""Checkpoint key of the model card: what a later stage needs to rebuild the SR model from the file alone."""


def model_card(
    backbone: BackboneConfig, scale: int, prediction_type: str, rescale_betas_zero_snr: bool, loss_weighting: str,
    target: str = "x0",
) -> dict[str, Any]:
    """Plain-typed description of a stage's SR model, saved in its checkpoints (loads with weights_only=True)."""
    return {
        "backbone": asdict(backbone),
        "scale": scale,
        "prediction_type": prediction_type,
        "rescale_betas_zero_snr": rescale_betas_zero_snr,
        "loss_weighting": loss_weighting,
        "target": target,
    }


def load_stage_checkpoint(path: str | Path, key: str = "model.teacher_ckpt") -> StageCheckpoint:
    """Load the SR model of a TeacherModule or ScaleDistillModule checkpoint (its EMA weights when the run used
    Lightning's EMA callback, which stores them as the checkpoint's ``state_dict``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    card, state = checkpoint.get(MODEL_CARD_KEY), checkpoint.get("state_dict", {})
    if card is None:
        raise ValueError(f"{key}: {path} is not a yonos stage checkpoint (it has no '{MODEL_CARD_KEY}' entry)")
    backbone = BackboneConfig(**card["backbone"])
    denoiser, codec = build_denoiser(backbone), build_codec(backbone)
    prefix = "student." if any(k.startswith("student.") for k in state) else "denoiser."
    denoiser.load_state_dict(_sub_state(state, prefix))
    codec.load_state_dict(_sub_state(state, "codec."))
    target = card.get("target", "x0")  # checkpoints written before the option diffuse z_0
    stage = StageCheckpoint(
        denoiser=denoiser,
        codec=codec,
        backbone=backbone,
        scale=int(card["scale"]),
        prediction_type=card["prediction_type"],
        rescale_betas_zero_snr=bool(card["rescale_betas_zero_snr"]),
        loss_weighting=card["loss_weighting"],
        path=path,
        target=target,
    )
    stage.denoiser.use_target(target, stage.scheduler().alphas_cumprod, stage.prediction_type)
    return stage


def as_stage_checkpoint(source: str | Path | StageCheckpoint, key: str) -> StageCheckpoint:
    """``source`` as is when it is already loaded (a stage built in memory: benchmarks, notebooks), else
    :func:`load_stage_checkpoint` of the file (``key`` names the config key in errors). The caller takes ownership
    of the networks it holds."""
    return source if isinstance(source, StageCheckpoint) else load_stage_checkpoint(source, key=key)
