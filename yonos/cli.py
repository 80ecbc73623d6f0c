"""The ``yonos`` command: LightningCLI for fit / validate / test / predict, plus data preparation.

Single node, one or more GPUs (Lightning picks every visible device with ``--trainer.devices auto``)::

    yonos fit -c experiments/teacher_x2.yaml
    yonos fit -c experiments/teacher_x2.yaml --ckpt_path last        # resume
    yonos validate -c experiments/teacher_x2.yaml --ckpt_path PATH.ckpt
    yonos predict -c experiments/tiny/teacher_x2.yaml --ckpt_path PATH.ckpt --data.predict_dir LR_DIR

The progressive chain teacher x2 -> student x4 -> student x8, resumable (see experiments/README.md)::

    yonos chain experiments/teacher_x2.yaml experiments/distill_x2_to_x4.yaml experiments/distill_x4_to_x8.yaml --out outputs/chain

Embedded default data (photos shipped with scikit-image) and the CPU demo on it::

    yonos prepare-samples [--out data/samples]
    yonos demo

Scaling out (experiments/README.md, "Scaling out"). Strategy fragments in experiments/cluster/ are layered after the
stage yaml; ``global_batch.yml`` fixes the samples per optimizer step whatever the device count::

    # one node, every visible GPU, DDP (Lightning launches one process per GPU)
    yonos fit -c experiments/teacher_x2.yaml -c experiments/cluster/ddp.yml -c experiments/cluster/global_batch.yml
    # FSDP (UNet sharded, teacher/VAE replicated; set data_parallel_size = nodes x GPUs) or DeepSpeed ZeRO-2
    yonos fit -c experiments/distill_x2_to_x4.yaml -c experiments/cluster/fsdp.yml
    yonos fit -c experiments/teacher_x2.yaml -c experiments/cluster/deepspeed.yml    # pip install deepspeed
    # torchrun, on each of 2 nodes (Lightning reads the torchelastic environment)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST0:29500 --rdzv_id RUN \
        -m yonos fit -c experiments/teacher_x2.yaml -c experiments/cluster/ddp.yml --trainer.num_nodes 2 --trainer.devices 8
    # any launcher that starts one process per node: NODE_RANK, MASTER_ADDR and MASTER_PORT in the environment
    NODE_RANK=1 MASTER_ADDR=HOST0 MASTER_PORT=29500 yonos fit -c ... -c experiments/cluster/ddp.yml --trainer.num_nodes 2
    # SLURM (srun, one task per GPU, requeue on preemption / time limit, resume from the newest checkpoint)
    sbatch --nodes 4 experiments/cluster/slurm.sbatch
    # distributed inference: every image written exactly once
    yonos predict -c experiments/tiny/teacher_x2.yaml -c experiments/cluster/ddp.yml --trainer.devices 2 \
        --ckpt_path PATH.ckpt --data.predict_dir LR_DIR
    # WebDataset-format tar shards for clusters, then train on them
    yonos shard data/DIV2K/train_HR data/shards/div2k --shard-size 1000
    yonos fit -c experiments/teacher_x2.yaml --data.train_shards data/shards/div2k

Environment: MASTER_ADDR / MASTER_PORT (rendezvous; derived from SLURM_NODELIST / SLURM_JOB_ID under SLURM),
NODE_RANK (manual multi-node), LOCAL_RANK / WORLD_SIZE (set by torchrun), NCCL_SOCKET_IFNAME / NCCL_IB_HCA (which
network), NCCL_DEBUG=INFO (diagnosis), TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (fail instead of hanging),
OMP_NUM_THREADS, HF_HUB_OFFLINE=1 on compute nodes without internet.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI

from yonos.data import SRDataModule


class YonosCLI(LightningCLI):
    """LightningCLI over any yonos stage module (``model.class_path``) and the shared ``SRDataModule``."""


def _prepare_samples(argv: list[str]) -> None:
    from yonos.samples import prepare_samples

    parser = argparse.ArgumentParser(prog="yonos prepare-samples", description=prepare_samples.__doc__)
    parser.add_argument("--out", default="data/samples", help="output folder (default: data/samples)")
    parser.add_argument("--max-side", type=int, default=512, help="longest image side in pixels")
    args = parser.parse_args(argv)
    written = prepare_samples(args.out, args.max_side)
    for split, paths in written.items():
        print(f"{split}: {len(paths)} images in {paths[0].parent}")


def _lazy(module: str) -> Callable[[list[str]], int | None]:
    """A subcommand whose module is imported only when it runs (keeps `yonos fit` start-up lean)."""

    def run_module(argv: list[str]) -> int | None:
        return importlib.import_module(module).main(argv)

    return run_module


EXTRA_COMMANDS: dict[str, Callable[[list[str]], int | None]] = {
    "prepare-samples": _prepare_samples,
    "demo": _lazy("yonos.demo"),
    "chain": _lazy("yonos.chain"),
    "export": _lazy("yonos.export"),
    "make-base": _lazy("yonos.base"),
    "upscale": _lazy("yonos.upscale"),
    "evaluate": _lazy("yonos.evaluate"),
    "shard": _lazy("yonos.shards"),
}


def run(args: list[str] | None = None) -> YonosCLI | None:
    """Run a ``yonos`` command in-process; returns the CLI object (with its ``trainer``) for LightningCLI runs."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        code = EXTRA_COMMANDS[argv[0]](argv[1:])
        if code:  # a subcommand that reports failure by its return value (e.g. upscale with failed files)
            raise SystemExit(code)
        return None
    return YonosCLI(
        pl.LightningModule,
        SRDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``yonos`` / ``python -m yonos`` (the console script exits with what this returns: None = 0)."""
    run(args)


if __name__ == "__main__":
    main()
