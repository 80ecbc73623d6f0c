"""Building blocks the stage modules share by composition: the training RNG stream, optimiser construction,
checkpoint loading of earlier stages. No LightningModule here."""

from __future__ import annotations

from dataclasses import dataclass
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


def load_stage_checkpoint(path: str | Path, key: str = "model.teacher_ckpt") -> StageCheckpoint:
    """Load the SR model of a TeacherModule or ScaleDistillModule checkpoint (its EMA weights when the run used
    Lightning's EMA callback, which stores them as the checkpoint's ``state_dict``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}: checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams, state = checkpoint.get("hyper_parameters", {}), checkpoint.get("state_dict", {})
    if "backbone" not in hparams:
        raise ValueError(f"{key}: {path} is not a yonos stage checkpoint (no backbone in its hyper_parameters)")
    is_student = "student_scale" in hparams
    backbone = BackboneConfig(**hparams["backbone"])
    denoiser, codec = build_denoiser(backbone), build_codec(backbone)
    denoiser.load_state_dict(_sub_state(state, "student." if is_student else "denoiser."))
    codec.load_state_dict(_sub_state(state, "codec."))
    return StageCheckpoint(
        denoiser=denoiser,
        codec=codec,
        backbone=backbone,
        scale=int(hparams["student_scale"] if is_student else hparams["scale"]),
        prediction_type=hparams["prediction_type"],
        rescale_betas_zero_snr=bool(hparams.get("rescale_betas_zero_snr", False)),
        loss_weighting=hparams.get("loss_weighting", "one_plus_snr"),
        path=path,
    )
