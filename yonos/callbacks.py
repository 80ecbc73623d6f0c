"""Lightning callbacks configured from yaml: writing predicted SR images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from yonos.images import save_image_atomic


class SRImageWriter(BasePredictionWriter):
    """Writes each predicted SR image as ``output_dir/<input stem>.png`` (atomically; existing files are kept
    unless ``overwrite``). ``output_dir`` defaults to ``<trainer.default_root_dir>/predict``."""

    def __init__(self, output_dir: str | None = None, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir else None
        self.overwrite = overwrite
        self.written: list[Path] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "predict"
        source = getattr(trainer.datamodule, "predict_dir", None) if trainer.datamodule is not None else None
        if source is not None and Path(source).expanduser().resolve() == self.output_dir.expanduser().resolve():
            raise ValueError(f"output_dir {self.output_dir} is the input folder data.predict_dir; choose another folder")

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for image, name in zip(prediction["sr"], prediction["name"]):
            path = self.output_dir / f"{name}.png"
            if path.exists() and not self.overwrite:
                continue
            self.written.append(save_image_atomic(image, path))
