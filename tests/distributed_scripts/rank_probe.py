"""A test-only Lightning callback that records, per rank, what the distributed tests assert on: the rank layout,
the training batches and degradation streams, digests of the weights / EMA / optimizer, validation metrics and
predicted names. It is added to real `yonos` CLI runs with ``--trainer.callbacks+=rank_probe.RankProbe`` (the
tests put this folder on PYTHONPATH) and writes ``<out_dir>/<fn>-rank<r>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging

from yonos.files import write_text_atomic


def digest(tensors: list[torch.Tensor]) -> str:
    """sha256 of the tensors' bytes (local shards for DTensors)."""
    sha = hashlib.sha256()
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        sha.update(local.detach().float().cpu().contiguous().numpy().tobytes())
    return sha.hexdigest()


def optimizer_digest(trainer: pl.Trainer) -> str:
    states = trainer.optimizers[0].state
    return digest([value for state in states.values() for value in state.values() if torch.is_tensor(value)])


class RankProbe(Callback):
    """Writes what happened on this rank; ``out_dir`` defaults to $YONOS_PROBE_DIR."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = Path(out_dir or os.environ["YONOS_PROBE_DIR"])
        self.record: dict[str, Any] = {"train_batches": [], "predicted": []}

    def _ema(self, trainer: pl.Trainer) -> WeightAveraging | None:
        return next((cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)), None)

    def _dump(self, trainer: pl.Trainer) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{trainer.state.fn.value}-rank{trainer.global_rank}.json"
        write_text_atomic(path, json.dumps(self.record, indent=1))  # whole even when the run is SIGKILLed mid-write

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.record.update(
            world_size=trainer.world_size, global_rank=trainer.global_rank, node_rank=trainer.node_rank,
            local_rank=trainer.local_rank, num_nodes=trainer.num_nodes, strategy=type(trainer.strategy).__name__,
            environment=type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
        )

    def _state(self, trainer: pl.Trainer, generator_state: torch.Tensor | None) -> dict[str, Any]:
        ema = self._ema(trainer)
        return {
            "global_step": trainer.global_step,
            "trainable": digest([p for p in trainer.lightning_module.parameters() if p.requires_grad]),
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "optimizer": optimizer_digest(trainer),
            "ema": digest(list(ema._average_model.module.parameters())) if ema is not None else None,
            "generator": digest([generator_state]) if generator_state is not None else None,
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume the degradation generator is rebuilt at the first draw from this restored state.
        restored = trainer.datamodule.stream.state()
        self.record["start"] = self._state(trainer, restored)
        self._dump(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        generator_state = trainer.datamodule.state_dict().get("train_generator_state") if trainer.datamodule else None
        saved = self._state(trainer, generator_state)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.out_dir / f"saved-step{trainer.global_step}-rank{trainer.global_rank}.json", json.dumps(saved))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.record["train_batches"].append([int(i) for i in batch["index"]])
        if len(self.record["train_batches"]) == 1:
            lr = {key: digest([value]) for key, value in batch.items() if key.startswith("lr_")}
            self.record["first_batch"] = {"hr": digest([batch["hr"]]), "lr": lr}
            generator = trainer.datamodule.stream._generator  # built by the first batch's degradation, if any
            if generator is not None:  # the rank's degradation stream: its seed and its next draw
                copy = torch.Generator(generator.device).set_state(generator.get_state())
                self.record["degradation"] = {"seed": generator.initial_seed(), "next_draw": torch.rand(4, generator=copy).tolist()}
        self._dump(trainer)  # flushed every batch: the run may be killed

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ema = self._ema(trainer)
        optimised = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        names = {id(p): name for name, p in pl_module.named_parameters()}
        self.record["end"] = {
            "global_step": trainer.global_step,
            "trainable": digest(trainable),
            "ema": digest(list(ema._average_model.module.parameters())) if ema is not None else None,
            "optimised_ids_are_trainable": {id(p) for p in optimised} == {id(p) for p in trainable},
            "optimised_modules": sorted({names.get(id(p), "?").split(".")[0] for p in optimised}),
            "trainable_modules": sorted({name.split(".")[0] for name, p in pl_module.named_parameters() if p.requires_grad}),
            "optimised_types": sorted({type(p).__name__ for p in optimised}),
            "optimised_local_numel": sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in optimised),
            "optimised_numel": sum(p.numel() for p in optimised),
            "frozen_types": sorted({type(p).__name__ for p in pl_module.parameters() if not p.requires_grad}),
        }
        self._dump(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.record.setdefault("validation", []).append({"global_step": trainer.global_step, **metrics})
        self._dump(trainer)

    def on_predict_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self.record["predicted"] += list(batch["name"])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._dump(trainer)
