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


def _lazy(module: str) -> Callable[[list[str]], None]:
    """A subcommand whose module is imported only when it runs (keeps `yonos fit` start-up lean)."""

    def run(argv: list[str]) -> None:
        importlib.import_module(module).main(argv)

    return run


EXTRA_COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "prepare-samples": _prepare_samples,
    "demo": _lazy("yonos.demo"),
    "chain": _lazy("yonos.chain"),
    "export": _lazy("yonos.export"),
    "upscale": _lazy("yonos.upscale"),
    "evaluate": _lazy("yonos.evaluate"),
}


def main(args: list[str] | None = None) -> YonosCLI | None:
    """Entry point of ``yonos`` / ``python -m yonos``; returns the CLI object (its ``trainer``) for LightningCLI runs."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[argv[0]](argv[1:])
        return None
    return YonosCLI(
        pl.LightningModule,
        SRDataModule,
        subclass_mode_model=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    main()
