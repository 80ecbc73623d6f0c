"""Building blocks the stage modules share by composition: optimiser construction,
FSDP sharding of the trainable networks, the check of the scales a stage needs. No LightningModule here (checkpoint
I/O of the stages lives in yonos.checkpoints)."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor, nn

from yonos.models import LatentCodec


def encode_fp32(codec: LatentCodec, images: Tensor) -> Tensor:
    """VAE latents (B, 4, H/8, W/8) in float32 whatever the trainer's precision: the frozen encoder runs outside
    autocast (as the pipeline keeps the VAE in fp32), so z_hr, z_lr and everything built from them stay fp32."""
    with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
        return codec.encode(images.float()).float()


# The stage modules override configure_model only to shard under ModelParallelStrategy, where they refuse EMA
# (below); elsewhere it does nothing, so WeightAveraging's "you may run out of memory" warning does not apply.
warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback with a model that overrides")


def _blocks(network: nn.Module) -> list[nn.Module]:
    """The resolution levels of a diffusers UNet or VAE decoder: the units FSDP gathers one at a time."""
    found: list[nn.Module] = []
    for name in ("down_blocks", "mid_block", "up_blocks"):
        part = getattr(network, name, None)
        found += list(part) if isinstance(part, nn.ModuleList) else [part] if isinstance(part, nn.Module) else []
    return found


def shard_trainable(module: pl.LightningModule, networks: list[nn.Module]) -> None:
    """FSDP2 under Lightning's ``ModelParallelStrategy`` (experiments/cluster/fsdp.yml): shard each trainable
    network, block by block, over the data-parallel ranks. Frozen parts (teacher, VAE) stay whole on every rank
    and outside the optimizer. Does nothing under every other strategy (no device mesh)."""
    mesh = module.device_mesh
    if mesh is None:
        return
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor

    if mesh["tensor_parallel"].size() != 1:
        raise ValueError(
            "trainer.strategy.init_args.tensor_parallel_size must be 1 and data_parallel_size = trainer.num_nodes x "
            f"trainer.devices (yonos shards over data-parallel ranks only); got the mesh {mesh}"
        )
    if any(isinstance(callback, WeightAveraging) for callback in module.trainer.callbacks):
        raise ValueError(
            "trainer.callbacks: TrainableEMA / Lightning's EMAWeightAveraging cannot average FSDP-sharded weights; layer "
            "experiments/cluster/fsdp.yml last (it lists the callbacks without EMA) or use ddp.yml"
        )
    for network in networks:
        if not isinstance(network, FSDPModule):
            for block in _blocks(network):
                fully_shard(block, mesh=mesh["data_parallel"])
            # Resharding the root after forward too: several no-grad forwards in a row (multi-step validation
            # sampling) otherwise leave it gathered, and a later checkpoint fails to free that storage.
            fully_shard(network, mesh=mesh["data_parallel"], reshard_after_forward=True)
    unsharded = [name for name, p in module.named_parameters() if p.requires_grad and not isinstance(p, DTensor)]
    if unsharded:
        raise ValueError(f"trainable parameters outside the FSDP-sharded networks would not be synchronised: {unsharded[:5]}")


class SharedFactory:
    """An optimizer / scheduler factory that deep copies share instead of copying. LightningCLI's factories hold a
    reference to the CLI, hence to the trainer and its DDP launcher (process handles, locks), which
    ``EMAWeightAveraging``'s deep copy of the module cannot copy (and should not: it is not model state)."""

    def __init__(self, factory: Callable[..., Any]) -> None:
        self.factory = factory

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.factory(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> "SharedFactory":
        return self


def shared(factory: Callable[..., Any] | None) -> SharedFactory | None:
    """``factory`` wrapped in :class:`SharedFactory` (None stays None)."""
    return None if factory is None else SharedFactory(factory)


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


def check_scales_available(module: pl.LightningModule, scales_needed: dict[str, int]) -> None:
    """Fail at start when the DataModule does not produce a scale the module needs (names the yaml keys)."""
    datamodule = getattr(module.trainer, "datamodule", None) if module._trainer is not None else None
    produced = getattr(datamodule, "scales", None)
    if produced is None:
        return
    for key, scale in scales_needed.items():
        if scale not in produced:
            raise ValueError(f"{key} = {scale} is not produced by the data module: data.scales = {produced}")
