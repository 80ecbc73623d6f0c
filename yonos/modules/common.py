"""Building blocks the stage modules share by composition: the training RNG stream, optimiser construction,
checkpoint loading of earlier stages. No LightningModule here."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from yonos.models import BackboneConfig, LatentCodec, SRDenoiser, build_codec, build_denoiser


class TrainingStream:
    """A rank's stream of timesteps and noise: seeded ``seed + rank`` on the module's device, saved in checkpoints
    so that a resumed run continues the same stream."""

    CHECKPOINT_KEY = "yonos_generator_state"

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._restored: Tensor | None = None

    def generator(self, device: torch.device, rank: int) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed + rank)
            if self._restored is not None:
                self._generator.set_state(self._restored)
                self._restored = None
        return self._generator

    def save(self, checkpoint: dict[str, Any]) -> None:
        if self._generator is not None:
            checkpoint[self.CHECKPOINT_KEY] = self._generator.get_state()

    def load(self, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get(self.CHECKPOINT_KEY)


def configure_optimizer(
    params: list[torch.nn.Parameter],
    optimizer: Callable[[Any], torch.optim.Optimizer] | None,
    lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None,
) -> Any:
    """The ``configure_optimizers`` return value: the injected factories, or AdamW(lr 1e-4, wd 1e-2) by default;
    schedulers step every optimizer step."""
    built = optimizer(params) if optimizer is not None else torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    if lr_scheduler is None:
        return built
    return {"optimizer": built, "lr_scheduler": {"scheduler": lr_scheduler(built), "interval": "step"}}


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
    path: Path


def _sub_state(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


MODEL_CARD_KEY = "yonos_model"
"""Checkpoint key of the model card: what a later stage needs to rebuild the SR model from the file alone."""


def model_card(
    backbone: BackboneConfig, scale: int, prediction_type: str, rescale_betas_zero_snr: bool, loss_weighting: str
) -> dict[str, Any]:
    """Plain-typed description of a stage's SR model, saved in its checkpoints (loads with weights_only=True)."""
    return {
        "backbone": asdict(backbone),
        "scale": scale,
        "prediction_type": prediction_type,
        "rescale_betas_zero_snr": rescale_betas_zero_snr,
        "loss_weighting": loss_weighting,
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
    return StageCheckpoint(
        denoiser=denoiser,
        codec=codec,
        backbone=backbone,
        scale=int(card["scale"]),
        prediction_type=card["prediction_type"],
        rescale_betas_zero_snr=bool(card["rescale_betas_zero_snr"]),
        loss_weighting=card["loss_weighting"],
        path=path,
    )
