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
    # a LitData dataset for clusters (folder or s3:// URL; the `cluster` extra), then train on it
    yonos shard data/DIV2K/train_HR s3://BUCKET/div2k
    yonos fit -c experiments/teacher_x2.yaml --data.train_shards s3://BUCKET/div2k

Environment: MASTER_ADDR / MASTER_PORT (rendezvous; derived from SLURM_NODELIST / SLURM_JOB_ID under SLURM),
NODE_RANK (manual multi-node), LOCAL_RANK / WORLD_SIZE (set by torchrun), NCCL_SOCKET_IFNAME / NCCL_IB_HCA (which
network), NCCL_DEBUG=INFO (diagnosis), TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (fail instead of hanging),
OMP_NUM_THREADS, HF_HUB_OFFLINE=1 on compute nodes without internet.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from yonos.data import SRDataModule

SEED_TARGETS = ("data.seed", "model.init_args.seed")
"""The seeds that follow ``seed_everything``: the module's noise stream and validation noise, the data's
crops and degradations. They are link targets, so they cannot disagree with the run's seed."""


def _linked_seed(seed_everything: bool | int | None) -> int:
    """The module and data seed for a ``seed_everything`` value (True is replaced by the chosen seed before
    instantiation, see ``YonosCLI.before_instantiate_classes``; False seeds nothing globally and uses 0)."""
    return seed_everything if isinstance(seed_everything, int) and not isinstance(seed_everything, bool) else 0


CONSOLE_LOG = "console.log"
"""Every Lightning log line and warning of a run, including those kept off the console, appended to
``<trainer.default_root_dir>/console.log`` (rank 0)."""

QUIET_ON_CONSOLE: list[str] = [
    # Lightning's device report, repeated by every Trainer; the progress bar says where it runs.
    r"^GPU available: ", r"^TPU available: ", r"^HPU available: ",
    # Lightning's advertisements for its cloud products (litlogger, litmodels).
    r"^💡 Tip: ",
    # torch >= 2.10 deprecates LeafSpec, which Lightning's own pytree helper still uses: nothing a user can change.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # yonos modules keep their frozen parts (VAE, teacher UNet, metric networks) in eval mode on purpose;
    # yonos.callbacks.TrainModeCheck warns instead when eval mode changes what a trained part computes.
    r"^Found \d+ module\(s\) in eval mode at the start of training",
    # Routine progress notes: the seed is in the run's config.yaml, the checkpoint in the command line, and the
    # progress bar shows that max_steps was reached.
    r"^Seed set to \d+$", r"^Restoring states from the checkpoint path at ", r"^Loaded model weights from the checkpoint at ",
    r"^`Trainer.fit` stopped: `max_steps=\d+` reached\.$",
]
"""Regular expressions (``re.search``) of log messages and warnings shown in the run's console.log only."""

_extra_quiet: list[re.Pattern[str]] = []


def _is_quiet(message: str) -> bool:
    return any(re.search(p, message) for p in QUIET_ON_CONSOLE) or any(p.search(message) for p in _extra_quiet)


@contextlib.contextmanager
def quiet_on_console(*patterns: str) -> Iterator[None]:
    """Keep messages matching ``patterns`` off the console (they still reach console.log) inside the block."""
    compiled = [re.compile(p) for p in patterns]
    _extra_quiet.extend(compiled)
    try:
        yield
    finally:
        for pattern in compiled:
            _extra_quiet.remove(pattern)


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_quiet(record.getMessage())


_LOGGERS = ("lightning.pytorch", "lightning.fabric")  # each has its own console handler unless the root has one
_run_logs: list[logging.FileHandler] = []  # the console.log of the run in progress


def _showwarning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if _run_logs:
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
        record = logging.makeLogRecord(
            {"name": "py.warnings", "levelno": logging.WARNING, "levelname": "WARNING", "msg": text}
        )
        for handler in _run_logs:
            handler.handle(record)
    if not _is_quiet(str(message)):
        _showwarning.previous(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]


def quiet_console() -> None:
    """Keep the messages of :data:`QUIET_ON_CONSOLE` off the console: a filter on the console handlers of
    Lightning's loggers (or the root logger's, where Lightning logs through it), and a ``warnings.showwarning`` that
    drops them after writing every warning to the run's console.log. Idempotent; errors and every other warning
    are shown as before."""
    handlers = [h for name in _LOGGERS for h in logging.getLogger(name).handlers]
    handlers += [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    for handler in handlers:
        filtered = any(isinstance(f, _ConsoleFilter) for f in handler.filters)
        if not isinstance(handler, logging.FileHandler) and not filtered:
            handler.addFilter(_ConsoleFilter())
    if warnings.showwarning is not _showwarning:
        _showwarning.previous = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _showwarning


def open_run_log(root_dir: str | Path | None, header: str) -> Path | None:
    """Append every Lightning log line and warning from now on to ``root_dir/console.log`` (rank 0 only; nothing
    for a remote ``root_dir``). Closes the previous run's log. Returns the file's path."""
    close_run_log()
    root = str(root_dir) if root_dir else os.getcwd()
    if "://" in root or rank_zero_only.rank != 0:
        return None
    path = Path(root).expanduser() / CONSOLE_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    for name in _LOGGERS:
        logging.getLogger(name).addHandler(handler)
    _run_logs.append(handler)
    start = {"name": "yonos", "levelname": "INFO", "levelno": logging.INFO, "msg": header}
    handler.handle(logging.makeLogRecord(start))
    return path


def close_run_log() -> None:
    while _run_logs:
        handler = _run_logs.pop()
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        handler.close()


class YonosCLI(LightningCLI):
    """LightningCLI over any yonos stage module (``model.class_path``) and the shared ``SRDataModule``.

    One seed: ``seed_everything`` is linked to ``data.seed`` and ``model.init_args.seed`` (LightningCLI
    ``link_arguments``), so ``--seed_everything 7`` seeds the global RNGs, the module and the data alike and a
    clash cannot happen (``--data.seed`` is refused: the parser says to use ``seed_everything``).
    """

    def add_arguments_to_parser(self, parser) -> None:
        for target in SEED_TARGETS:
            parser.link_arguments("seed_everything", target, compute_fn=_linked_seed)

    def before_instantiate_classes(self) -> None:
        # `seed_everything: true` draws the seed after parsing; hand the drawn value to the links' targets.
        config = self.config[self.subcommand] if self.subcommand else self.config
        seed = _linked_seed(config.get("seed_everything"))
        config["data"]["seed"] = seed
        init_args = config["model"].get("init_args")
        if init_args is not None and "seed" in init_args:
            init_args["seed"] = seed
        if self.subcommand is not None:  # a run, not a parse (run=False): log it before the Trainer says anything
            open_run_log(config["trainer"].get("default_root_dir"), f"==== yonos {self.subcommand} ====")

    def instantiate_trainer(self, **kwargs):  # noqa: ANN003, ANN201
        from yonos.callbacks import TrainModeCheck

        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(TrainModeCheck())  # in place of Lightning's eval-mode warning (QUIET_ON_CONSOLE)
        return trainer


def nulls_as_json(argv: list[str]) -> list[str]:
    """``--model.init_args.backbone.pretrained null`` as ``--model.init_args.backbone {"pretrained": null}``.

    jsonargparse 4.x turns ``null`` given for a field of a dataclass inside a subclass's init_args into the string
    ``'None'``; the same value given as a JSON object for the enclosing argument parses as None and merges with
    the rest of the config. Keys outside ``init_args`` parse correctly and are left alone.
    """
    out: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        key, value, used = token, None, 1
        if token.startswith("--") and "=" in token:
            key, value = token.split("=", 1)
        elif token.startswith("--") and index + 1 < len(argv):
            value, used = argv[index + 1], 2
        head, marker, rest = key.partition(".init_args.")
        if value == "null" and marker and "." in rest:
            first, *path = rest.split(".")
            nested: object = None
            for part in reversed(path):
                nested = {part: nested}
            out += [f"{head}{marker}{first}", json.dumps(nested)]
        else:
            out += argv[index : index + used]
        index += used
    return out


def _lazy(module: str) -> Callable[[list[str]], int | None]:
    """A subcommand whose module is imported only when it runs (keeps `yonos fit` start-up lean)."""

    def run_module(argv: list[str]) -> int | None:
        return importlib.import_module(module).main(argv)

    return run_module


EXTRA_COMMANDS: dict[str, Callable[[list[str]], int | None]] = {
    "prepare-samples": _lazy("yonos.samples"),
    "demo": _lazy("yonos.demo"),
    "chain": _lazy("yonos.chain"),
    "export": _lazy("yonos.export"),
    "make-base": _lazy("yonos.base"),
    "upscale": _lazy("yonos.upscale"),
    "evaluate": _lazy("yonos.evaluation.command"),
    "shard": _lazy("yonos.shards"),
}

COMMAND_SUMMARIES: dict[str, str] = {
    "fit": "train a stage: yonos fit -c experiments/teacher_x2.yaml [--ckpt_path last]",
    "validate": "validation metrics of a checkpoint: yonos validate -c STAGE.yaml --ckpt_path PATH.ckpt",
    "test": "the same metrics as validate, logged under test/",
    "predict": "SR images of data.predict_dir with a stage checkpoint (SRImageWriter writes them)",
    "chain": "teacher -> distillation -> decoder stages in order, resumable, each in its own process",
    "demo": "the whole method with tiny models on the bundled sample photos, CPU, a few minutes",
    "export": "a stage checkpoint as a diffusers pipeline folder (safetensors, no code)",
    "upscale": "super-resolve image files and folders with an exported pipeline",
    "evaluate": "metrics of models and baselines on a test set, and metric-versus-steps sweeps",
    "shard": "pack an image folder into LitData chunks (local folder or s3://) for cluster training",
    "prepare-samples": "write the sample photos shipped with scikit-image to data/samples",
    "make-base": "an SD-layout base folder (vae/, unet/, scheduler/) from a codec-stage checkpoint",
}


def print_overview() -> None:
    """``yonos --help``: every command with one line; ``yonos COMMAND --help`` shows its options."""
    print("usage: yonos COMMAND [options]   (yonos COMMAND --help for the options of one command)\n")
    print("commands:")
    for name, summary in COMMAND_SUMMARIES.items():
        print(f"  {name:<16} {summary}")
    print(
        "\nfit/validate/test/predict are LightningCLI; every other command takes --config FILE (its options as yaml) and"
        "\n--print_config (prints them) the same way."
    )


def run(args: list[str] | None = None, cli_class: type[YonosCLI] = YonosCLI) -> YonosCLI | None:
    """Run a ``yonos`` command in-process; returns the CLI object (with its ``trainer``) for LightningCLI runs."""
    argv = list(sys.argv[1:] if args is None else args)
    quiet_console()
    if not argv or argv[0] in ("-h", "--help"):
        print_overview()
        return None
    if argv[0] in EXTRA_COMMANDS:
        code = EXTRA_COMMANDS[argv[0]](argv[1:])
        if code:  # a subcommand that reports failure by its return value (e.g. upscale with failed files)
            raise SystemExit(code)
        return None
    # LightningCLI reads `args` (nulls rewritten). sys.argv stays as it is: Lightning's DDP launcher starts the other
    # ranks with it, and they rewrite it the same way. Hence the warning about both being given does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    try:
        return cli_class(
            pl.LightningModule,
            SRDataModule,
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            args=nulls_as_json(argv),
        )
    finally:
        close_run_log()


def main(args: list[str] | None = None) -> None:
    """Entry point of ``yonos`` / ``python -m yonos`` (the console script exits with what this returns: None = 0)."""
    run(args)

