"""``yonos chain``: teacher x2 -> student x4 -> student x8 (-> decoder fine-tuning) as one resumable command.

Each stage is an ordinary ``yonos fit`` of its yaml, in its own folder ``OUT/<stage>`` (``teacher_x2``,
``student_x4``, ..., ``decoder_x8``). A finished stage leaves ``OUT/<stage>/final.ckpt``; the next stage gets it
as ``model.init_args.teacher_ckpt`` (distillation) or ``model.init_args.denoiser_ckpt`` (decoder). Running the command again skips finished stages and resumes an
interrupted one from its ``last.ckpt``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from unittest import mock

import yaml

FINAL = "final.ckpt"


@dataclass
class Stage:
    """One stage of the chain as read from its yaml."""

    config: Path
    name: str
    scale: int | None  # None for the decoder stage: it keeps the scale of the model it fine-tunes
    kind: Literal["teacher", "distill", "decoder"]

    @property
    def input_key(self) -> str | None:
        """The init arg that receives the previous stage's checkpoint."""
        return {"teacher": None, "distill": "teacher_ckpt", "decoder": "denoiser_ckpt"}[self.kind]


def read_stage(config: str | Path) -> Stage:
    """Name and scale of a stage from its yaml (TeacherModule: ``scale``; ScaleDistillModule: ``student_scale``)."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"chain stage config {path} does not exist")
    model = (yaml.safe_load(path.read_text()) or {}).get("model", {})
    class_path, init_args = model.get("class_path", ""), model.get("init_args", {}) or {}
    if class_path.endswith("ScaleDistillModule"):
        scale = int(init_args.get("student_scale", 4))
        return Stage(path, f"student_x{scale}", scale, "distill")
    if class_path.endswith("TeacherModule"):
        scale = int(init_args.get("scale", 2))
        return Stage(path, f"teacher_x{scale}", scale, "teacher")
    if class_path.endswith("DecoderFinetuneModule"):
        return Stage(path, "decoder", None, "decoder")
    raise ValueError(
        f"{path}: model.class_path must be a yonos TeacherModule, ScaleDistillModule or DecoderFinetuneModule, "
        f"got {class_path!r}"
    )


def plan_chain(configs: list[str | Path], until: int | None = None) -> list[Stage]:
    """The stages to run, checked: the first trains a teacher, every later one distils from its predecessor."""
    stages = [read_stage(c) for c in configs]
    if not stages:
        raise ValueError("give at least one stage config")
    if stages[0].kind != "teacher":
        raise ValueError(f"{stages[0].config}: the first stage of a chain must be a TeacherModule")
    for previous, stage in zip(stages, stages[1:]):
        if stage.kind == "teacher" or previous.kind == "decoder":
            raise ValueError(
                f"{stage.config}: after the teacher come ScaleDistillModule stages, then at most one decoder stage"
            )
        if stage.kind == "decoder":
            stage.name, stage.scale = f"decoder_x{previous.scale}", previous.scale
        elif stage.scale <= previous.scale:
            raise ValueError(f"{stage.config}: student scale x{stage.scale} must exceed the previous stage's x{previous.scale}")
    if until is not None:
        if until not in [s.scale for s in stages]:
            raise ValueError(f"--until {until}: no stage produces x{until} (stages: {[s.name for s in stages]})")
        stages = stages[: [s.scale for s in stages].index(until) + 1]
    return stages


def _fit(arguments: list[str]):
    from yonos.cli import run

    with mock.patch.object(sys, "argv", sys.argv[:1]):  # LightningCLI reads `arguments`, not the chain's argv
        return run(arguments)


def _publish(source: Path, target: Path) -> None:
    """Make ``target`` the finished checkpoint: a hard link (or copy) to a temporary name, then a rename."""
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, target)


def run_stage(stage: Stage, out_dir: Path, previous_ckpt: Path | None, extra: list[str], handoff: Literal["last", "best"]) -> Path:
    """Fit one stage (resuming from its last.ckpt if one exists) and publish its final checkpoint."""
    stage_dir = out_dir / stage.name
    final = stage_dir / FINAL
    if final.is_file():
        print(f"[chain] {stage.name}: finished earlier ({final}), skipped")
        return final
    arguments = [
        "fit", "-c", str(stage.config),
        f"--trainer.default_root_dir={stage_dir}",
        f"--trainer.logger.init_args.save_dir={stage_dir}",
        "--ckpt_path=last",
    ]
    if stage.input_key is not None:
        arguments.append(f"--model.init_args.{stage.input_key}={previous_ckpt}")
    if stage.kind == "decoder":
        arguments.append(f"--data.scales=[{stage.scale}]")  # the scale of the model it fine-tunes
    print(f"[chain] {stage.name}: fitting {stage.config} in {stage_dir}")
    trainer = _fit([*arguments, *extra]).trainer
    if trainer.interrupted:
        raise RuntimeError(f"{stage.name} was interrupted; run the same command again to resume it")
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if handoff == "best" else ""
    source = Path(best) if best else stage_dir / "checkpoints" / "last.ckpt"
    if not source.is_file():
        raise FileNotFoundError(f"{stage.name}: no checkpoint at {source}; the stage yaml needs a ModelCheckpoint with save_last")
    _publish(source, final)
    print(f"[chain] {stage.name}: done -> {final}")
    return final


def run_chain(
    configs: list[str | Path],
    out_dir: str | Path,
    until: int | None = None,
    extra: list[str] | None = None,
    handoff: Literal["last", "best"] = "last",
) -> dict[str, Path]:
    """Run the stages in order; returns each stage's final checkpoint."""
    out_dir = Path(out_dir)
    finals: dict[str, Path] = {}
    previous: Path | None = None
    for stage in plan_chain(configs, until):
        previous = run_stage(stage, out_dir, previous, list(extra or []), handoff)
        finals[stage.name] = previous
    return finals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="yonos chain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Arguments after `--` go to every stage's `yonos fit`, e.g. -- --trainer.max_steps=1000",
    )
    parser.add_argument("configs", nargs="+", help="stage yamls in order: a teacher, then distillation stages")
    parser.add_argument("--out", default="outputs/chain", help="root folder; one subfolder per stage")
    parser.add_argument("--until", type=int, default=None, help="stop after the stage producing this scale")
    parser.add_argument("--handoff", choices=["last", "best"], default="last", help="checkpoint handed to the next stage")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    args = parser.parse_args(argv)
    finals = run_chain(args.configs, args.out, args.until, extra, args.handoff)
    for name, path in finals.items():
        print(f"  {name:<12} {path}")
