"""``yonos chain``: teacher x2 -> student x4 -> student x8 (-> decoder fine-tuning) as one resumable command.

Each stage is an ordinary ``yonos fit`` of its yaml, in its own folder ``OUT/<stage>`` (``teacher_x2``,
``student_x4``, ..., ``decoder_x8``) and in its own process (the previous stage's memory is gone when the next one
starts). A finished stage leaves ``OUT/<stage>/final.ckpt``, saved when its ``fit`` returns (the weights after the
last step, EMA applied); the next stage gets it as ``model.init_args.teacher_ckpt`` (distillation) or
``model.init_args.denoiser_ckpt`` (decoder). Running the command again skips finished stages and resumes an
interrupted one from its ``last.ckpt``.

Overrides after ``--`` go to every stage; after ``--stage NAME`` they go to that stage only, until the next
``--stage`` (``--stage all`` returns to every stage)::

    yonos chain experiments/teacher_x2.yaml experiments/distill_x2_to_x4.yaml -- --trainer.max_steps 1000 \
        --stage teacher_x2 --model.init_args.backbone.pretrained /models/sd21-base
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from yonos.commands import command_parser, parse
from yonos.files import publish

FINAL = "final.ckpt"
ALL_STAGES = "all"
INTERRUPTED = 3  # exit code of a stage process whose fit was interrupted (SIGTERM, Ctrl-C)


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


def split_overrides(extra: list[str], stage_names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Arguments for every stage, and per stage: ``--stage NAME`` sends what follows to NAME only (``--stage all``
    back to every stage; ``--stage=NAME`` works too)."""
    common: list[str] = []
    per_stage: dict[str, list[str]] = {name: [] for name in stage_names}
    target, index = common, 0
    while index < len(extra):
        token = extra[index]
        if token == "--stage" or token.startswith("--stage="):
            if token == "--stage":
                if index + 1 >= len(extra):
                    raise ValueError("--stage needs a stage name")
                name, index = extra[index + 1], index + 2
            else:
                name, index = token.split("=", 1)[1], index + 1
            if name != ALL_STAGES and name not in per_stage:
                raise ValueError(f"--stage {name}: no such stage in this chain; stages: {stage_names} (or {ALL_STAGES})")
            target = common if name == ALL_STAGES else per_stage[name]
            continue
        target.append(token)
        index += 1
    return common, per_stage


def _handoff_cli(handoff: Literal["last", "best"]) -> type:
    """The CLI of a chain stage: ``yonos fit`` that refuses ``--handoff best`` without a monitored metric before
    training starts."""
    from yonos.cli import YonosCLI

    class StageCLI(YonosCLI):
        def before_fit(self) -> None:
            callback = self.trainer.checkpoint_callback
            if handoff == "best" and getattr(callback, "monitor", None) is None:
                raise ValueError(
                    "--handoff best needs a ModelCheckpoint with a `monitor` (e.g. monitor: val/psnr, mode: max) in "
                    "the stage yaml's trainer.callbacks; without one there is no best checkpoint (use --handoff last)"
                )

    return StageCLI


def _saved_step(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def fit_and_publish(arguments: list[str], final: Path, handoff: Literal["last", "best"] = "last") -> bool:
    """``yonos fit`` with ``arguments``, then publish ``final``: the state at the end of ``fit`` (saved now, not a
    periodic ``last.ckpt`` that may be older) or, with ``handoff="best"``, the best monitored checkpoint.
    Returns False (nothing published) when the fit was interrupted."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from yonos.cli import quiet_on_console, run

    # sys.argv is left alone: under DDP, Lightning starts the other ranks with it (this stage process's command).
    # `--ckpt_path=last` resumes an interrupted stage; on a stage's first run there is no last.ckpt, as expected.
    try:
        with quiet_on_console(r'ckpt_path="last"\) is set, but there is no last checkpoint available'):
            trainer = run(arguments, cli_class=_handoff_cli(handoff)).trainer
    except SIGTERMException:  # PreemptionCheckpoint saved last.ckpt and stopped the fit
        return False
    if trainer.interrupted:
        return False
    temporary = final.with_name(f".{final.name}.tmp")  # one name every rank knows (not temporary_beside's)
    if handoff == "best":
        best = Path(trainer.checkpoint_callback.best_model_path or "")
        if not best.is_file():
            raise FileNotFoundError(f"{final.parent.name}: no best checkpoint was saved ({best}); nothing to hand on")
        source = best
    else:
        trainer.save_checkpoint(temporary, weights_only=False)  # every rank takes part; rank 0 writes
        source = temporary
    if trainer.is_global_zero:
        if handoff == "last" and _saved_step(source) != trainer.global_step:
            raise RuntimeError(
                f"{source}: saved at step {_saved_step(source)} but training ended at step {trainer.global_step}; not published"
            )
        if source != temporary:
            temporary.unlink(missing_ok=True)
            os.link(source, temporary)
        publish(temporary, final)
    return True


def _stage_process(arguments: list[str], final: Path, handoff: Literal["last", "best"]) -> None:
    """Run one stage in a fresh Python process (``python -m yonos.chain --stage-process ...``)."""
    command = [sys.executable, "-m", "yonos.chain", "--stage-process", str(final), handoff, *arguments]
    child = subprocess.Popen(command)
    forward = threading.current_thread() is threading.main_thread()
    if forward:  # a SIGTERM to the chain (preemption) reaches the stage, whose PreemptionCheckpoint saves last.ckpt
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signal.SIGTERM))
    try:
        code = child.wait()
    finally:
        if forward:
            signal.signal(signal.SIGTERM, previous)
    if code == INTERRUPTED:
        raise RuntimeError(f"{final.parent.name} was interrupted; run the same command again to resume it")
    if code != 0 or not final.is_file():
        raise RuntimeError(f"{final.parent.name} failed (exit code {code}); its error is printed above")


def run_stage(
    stage: Stage,
    out_dir: Path,
    previous_ckpt: Path | None,
    extra: list[str],
    handoff: Literal["last", "best"],
    isolate: bool = True,
) -> Path:
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
    stage_dir.mkdir(parents=True, exist_ok=True)
    if isolate:
        _stage_process([*arguments, *extra], final, handoff)
    elif not fit_and_publish([*arguments, *extra], final, handoff):
        raise RuntimeError(f"{stage.name} was interrupted; run the same command again to resume it")
    print(f"[chain] {stage.name}: done -> {final}")
    return final


def run_chain(
    configs: list[str | Path],
    out_dir: str | Path,
    until: int | None = None,
    extra: list[str] | None = None,
    handoff: Literal["last", "best"] = "last",
    isolate: bool = True,
) -> dict[str, Path]:
    """Run the stages in order; returns each stage's final checkpoint. ``extra``: overrides for every stage, with
    ``--stage NAME`` sections for one stage (see :func:`split_overrides`). ``isolate``: each stage in a fresh process
    (the default; False fits in this process, for tests and debugging)."""
    out_dir = Path(out_dir)
    stages = plan_chain(configs, until)
    common, per_stage = split_overrides(list(extra or []), [s.name for s in stages])
    finals: dict[str, Path] = {}
    previous: Path | None = None
    for stage in stages:
        previous = run_stage(stage, out_dir, previous, [*common, *per_stage[stage.name]], handoff, isolate)
        finals[stage.name] = previous
    return finals


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "yonos chain",
        __doc__,
        epilog="Arguments after `--` go to every stage's `yonos fit`, e.g. -- --trainer.max_steps=1000; after "
        "`--stage NAME` (teacher_x2, student_x4, student_x8, decoder_x4, ...) to that stage only",
    )
    parser.add_argument("configs", nargs="+", help="stage yamls in order: a teacher, then distillation stages")
    parser.add_argument("--out", default="outputs/chain", help="root folder; one subfolder per stage")
    parser.add_argument("--until", type=int, default=None, help="stop after the stage producing this scale")
    parser.add_argument(
        "--handoff", choices=["last", "best"], default="last",
        help="what is handed to the next stage: the state at the end of training (last), or the best checkpoint "
        "of the stage's monitored ModelCheckpoint (best; an error without a monitor)",
    )
    parser.add_argument("--same-process", action="store_true", help="fit every stage in this process (debugging)")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    args = parse(parser, argv)
    finals = run_chain(args.configs, args.out, args.until, extra, args.handoff, isolate=not args.same_process)
    for name, path in finals.items():
        print(f"  {name:<12} {path}")


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "--stage-process":  # one stage of `yonos chain`, in its own process
        published = fit_and_publish(sys.argv[4:], Path(sys.argv[2]), sys.argv[3])  # type: ignore[arg-type]
        raise SystemExit(0 if published else INTERRUPTED)
    main()
