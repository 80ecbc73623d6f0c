"""Lightning callbacks configured from yaml: writing predicted SR images, a global batch size that does not change
with the number of devices, a checkpoint on SIGTERM (preemption), and EMA of the trainable weights only; and the
train-mode check that ``yonos.cli`` adds to every run."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, EMAWeightAveraging, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from yonos.data import data_parallel_layout
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


def accumulation_steps(global_batch_size: int, data_parallel_size: int, batch_size: int) -> int:
    """Gradient accumulation steps such that data_parallel_size x batch_size x steps = global_batch_size."""
    per_step = data_parallel_size * batch_size
    if global_batch_size < 1 or batch_size < 1 or global_batch_size % per_step:
        fitting = [b for b in range(1, global_batch_size + 1) if global_batch_size % (data_parallel_size * b) == 0]
        raise ValueError(
            f"GlobalBatchSize.global_batch_size = {global_batch_size} is not a multiple of data.batch_size = {batch_size} "
            f"x {data_parallel_size} data-parallel devices (trainer.num_nodes x trainer.devices); with this many devices "
            f"data.batch_size must divide it: one of {fitting or 'none'}"
        )
    return global_batch_size // per_step


class GlobalBatchSize(Callback):
    """Keeps the number of samples per optimizer step fixed whatever the number of nodes and devices: at fit start,
    ``trainer.accumulate_grad_batches = global_batch_size / (data-parallel devices x data.batch_size)``.

    ``data.batch_size`` stays the per-device micro-batch (what fits in memory); the learning rate, ``max_steps`` and
    the schedulers then mean the same thing on 1 GPU and on 64.
    """

    def __init__(self, global_batch_size: int) -> None:
        super().__init__()
        self.global_batch_size = global_batch_size

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        batch_size = getattr(trainer.datamodule, "batch_size", None)
        if batch_size is None:
            raise ValueError("GlobalBatchSize needs a datamodule with a batch_size (data.batch_size)")
        replicas, _ = data_parallel_layout(trainer)
        steps = accumulation_steps(self.global_batch_size, replicas, batch_size)
        if trainer.accumulate_grad_batches not in (1, steps):
            raise ValueError(
                f"trainer.accumulate_grad_batches = {trainer.accumulate_grad_batches} conflicts with GlobalBatchSize "
                f"({self.global_batch_size} = {replicas} devices x data.batch_size {batch_size} x {steps}); remove one"
            )
        if steps > 1 and not pl_module.automatic_optimization:
            raise ValueError(
                f"GlobalBatchSize needs {steps} accumulation steps, which manual optimisation (model.gan_weight > 0) "
                "does not support; raise data.batch_size or the number of devices"
            )
        trainer.accumulate_grad_batches = steps
        rank_zero_info(
            f"global batch {self.global_batch_size} = {replicas} devices x batch {batch_size} x accumulation {steps}"
        )


class PreemptionCheckpoint(Callback):
    """On SIGTERM (SLURM preemption, ``scancel``, a Kubernetes eviction) saves ``last.ckpt`` at the next optimizer
    step and stops, so that ``--ckpt_path last`` resumes from the signal rather than the last periodic checkpoint.

    What Lightning 2.6 does on its own: its SIGTERM handler sets ``trainer.received_sigterm`` and raises
    ``SIGTERMException`` at a batch boundary without saving (``ModelCheckpoint(save_on_exception=True)`` would save
    on every error too), and under DDP the handler runs a ``broadcast`` inside the signal handler, which can collide
    with an in-flight gradient all-reduce (seen on gloo: "Received data size doesn't match expected size"). So this
    callback replaces that handler while training with one that only sets a flag; at each optimizer-step boundary
    the ranks agree through one all-reduce, save together, and stop through Lightning's ``SIGTERMException`` (no
    ``on_train_end``: the EMA callback does not copy its average into the weights being saved for resumption).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__()
        self.dirpath = dirpath
        self._signalled = False
        self._checked_step = -1

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        """Where the SIGTERM checkpoint goes: the ``last.ckpt`` that ``--ckpt_path last`` finds."""
        if self.dirpath:
            return Path(self.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self._signalled = True  # no collective, no I/O inside a signal handler

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its handlers just before the fit loop starts; Trainer teardown restores the originals.
        self._signalled, self._checked_step = False, -1
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._checked_step:
            return  # still accumulating: wait for the optimizer step (the same batch on every rank)
        self._checked_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self._signalled, all=False):  # any rank signalled
            return
        path = self.checkpoint_path(trainer)
        if trainer.is_global_zero and path.is_symlink():
            path.unlink()  # ModelCheckpoint(save_last="link"): do not write through the link into a step checkpoint
        trainer.save_checkpoint(path, weights_only=False)  # the full state: the run resumes from it
        rank_zero_info(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path last")
        raise SIGTERMException


def _mode_dependent(module: nn.Module) -> bool:
    """Whether train and eval mode compute differently in ``module`` itself: dropout with p > 0, batch / instance
    norm with running statistics. (Linear, conv, group and layer norm compute the same in both modes.)"""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.track_running_stats
    return False


class TrainModeCheck(Callback):
    """Warns when training starts with a part being trained in eval mode where that changes what it computes:
    dropout (p > 0) or batch-norm statistics in eval mode inside a module with trainable parameters (usually a
    forgotten ``.train()``; diffusers' ``from_pretrained`` returns models in eval mode, and Lightning keeps the
    modes it finds).

    It replaces Lightning's "Found N module(s) in eval mode at the start of training" warning, which ``yonos.cli``
    keeps off the console: yonos modules keep their frozen parts (the VAE, the teacher UNet, metric networks) in
    eval mode on purpose (their ``train()`` overrides), so that warning fired on every run and said nothing.
    ``yonos.cli`` adds this callback to every Trainer it builds."""

    @staticmethod
    def offending(pl_module: nn.Module) -> list[str]:
        """Names of the mode-dependent modules in eval mode whose parent module trains."""
        modules = dict(pl_module.named_modules())
        names = []
        for name, module in modules.items():
            if module.training or not _mode_dependent(module):
                continue
            parent = modules.get(name.rpartition(".")[0], pl_module)
            if any(p.requires_grad for p in parent.parameters()):
                names.append(name)
        return names

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = self.offending(pl_module)
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            rank_zero_warn(
                f"{len(names)} dropout / batch-norm module(s) of trained parts are in eval mode as training starts "
                f"({shown}): they train as in inference (no dropout, frozen statistics). Put them in train mode "
                "(e.g. in the LightningModule's __init__ or train())."
            )


def ema_decay(num_averaged: int, decay: float, warmup: bool) -> float:
    """The EMA decay of the update after ``num_averaged`` averaged steps: ``decay``, or with warm-up
    ``min(decay, (1 + n) / (10 + n))`` (diffusers' ``EMAModel`` warm-up rule), so that a run of a few hundred steps
    is not dominated by its first weights (with 0.99 from step 1, 13 % of a 200-step average is step 1's)."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged)) if warmup else decay


class TrainableEMA(EMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging`` over the parameters that train, and nothing else.

    Lightning's callback deep-copies and averages the whole LightningModule: the frozen teacher UNet, the VAE and
    in the decoder stage the frozen denoiser too. That is a second fp32 copy of every frozen weight, and the
    "frozen" weights drift, since ``decay * p + (1 - decay) * p`` is not always ``p`` in floating point. Here the
    average holds a copy of the parameters with ``requires_grad`` at fit start only (buffers are not averaged);
    frozen weights are never written. Validation runs on the average, the weights after ``fit`` are the average,
    and checkpoints keep Lightning's layout: ``state_dict`` holds the average in place of the trainable weights
    (frozen weights as they are), ``current_model_state`` the live weights, so ``--ckpt_path`` resumes both. A save
    after ``fit`` (the chain's ``final.ckpt``) has no ``current_model_state``: the live weights are the average then.

    ``warmup=True`` ramps the decay up as :func:`ema_decay` says (short runs: the tiny yamls).
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: torch.device | str | int | None = None,
        warmup: bool = False,
    ) -> None:
        super().__init__(
            device=device, use_buffers=False, decay=decay, update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )

        def average(averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
            d = ema_decay(int(num_averaged), decay, warmup)
            return d * averaged + (1.0 - d) * current

        self._kwargs["avg_fn"] = average
        self._names: list[str] = []
        self._live: nn.ParameterList | None = None
        self._applied = False  # True once fit ended and the average was copied into the live weights

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        named = [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"TrainableEMA: {type(pl_module).__name__} has no trainable parameters to average")
        self._names, self._applied = [name for name, _ in named], False
        self._live = nn.ParameterList([p for _, p in named])  # the module's own Parameter objects, not copies
        self._average_model = AveragedModel(
            self._live, device=self._device or pl_module.device, use_buffers=False, **self._kwargs
        )

    def averaged_state(self) -> dict[str, Tensor]:
        """The running average by module parameter name (what ``state_dict`` holds for those names)."""
        assert self._average_model is not None
        return dict(zip(self._names, (p.detach() for p in self._average_model.module.parameters())))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, self._live, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, self._live)

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None and self._live is not None
        with torch.no_grad():
            for average, current in zip(self._average_model.module.parameters(), self._live):
                kept = average.detach().clone()
                average.copy_(current)
                current.copy_(kept)

    def _copy_average_to_current(self, pl_module: pl.LightningModule) -> None:
        assert self._average_model is not None and self._live is not None
        with torch.no_grad():
            for average, current in zip(self._average_model.module.parameters(), self._live):
                current.copy_(average)
        self._applied = True

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return  # outside fit: the module's weights are what there is
        current = checkpoint["state_dict"]
        if not self._applied:  # after fit the live weights are the average: one copy is enough (smaller file)
            checkpoint["current_model_state"] = current
        average = {name: value.to(current[name].device) for name, value in self.averaged_state().items() if name in current}
        checkpoint["state_dict"] = {**current, **average}
        checkpoint["averaging_state"] = {
            name: value for name, value in self._average_model.state_dict().items() if not name.startswith("module.")
        }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None:
            return
        state = checkpoint["state_dict"]
        missing = [name for name in self._names if name not in state]
        if missing:
            raise KeyError(f"TrainableEMA: the checkpoint has no weights for the trainable {missing[:3]}")
        with torch.no_grad():
            for average, name in zip(self._average_model.module.parameters(), self._names):
                average.copy_(state[name])
        averaged = checkpoint.get("averaging_state", {}).get("n_averaged")
        if averaged is not None:
            self._average_model.n_averaged.copy_(averaged)
        if "current_model_state" in checkpoint:
            pl_module.load_state_dict(checkpoint["current_model_state"])
