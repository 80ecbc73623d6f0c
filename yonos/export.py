"""``yonos export --ckpt CKPT --out DIR``: a stage checkpoint as a YonosSRPipeline folder (diffusers layout,
safetensors), written under a temporary name beside DIR and renamed into place, so a partial export never looks
complete. Load it with ``YonosSRPipeline.from_pretrained(DIR)`` (see yonos.pipeline for plain diffusers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from yonos.checkpoints import MODEL_CARD_KEY, load_stage_checkpoint
from yonos.commands import command_parser, parse
from yonos.files import atomic_folder
from yonos.model_card import write_model_card
from yonos.pipeline import YonosSRPipeline


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
"""Weight files that unpickle on load, so can run code: an exported folder is read from safetensors only."""


def check_pipeline_folder(root: str | Path) -> Path:
    """An exported pipeline folder checked before anything is loaded: ``model_index.json``, and for each component
    it names, the component's folder, its config and its safetensors weights. Each problem is one error naming the
    component and the file; pickle weights (``.bin`` ...) are refused, not loaded. Returns the folder."""
    root = Path(root).expanduser()
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{root} has no model_index.json; write a pipeline folder with `yonos export`")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{index_path} is not valid JSON ({err})") from err
    for name, entry in index.items():
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2 and entry[1]):
            continue  # metadata (scale, target, ...) or an empty slot
        folder = root / name
        model_config, scheduler_config = folder / "config.json", folder / "scheduler_config.json"
        if not (model_config.is_file() or scheduler_config.is_file()):
            raise FileNotFoundError(
                f"{root}: component {name!r} ({entry[1]}) is missing: no {name}/config.json; re-export the folder"
            )
        if not model_config.is_file():
            continue  # a scheduler: a config and no weights
        if not any(folder.glob("*.safetensors")):
            pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise ValueError(
                    f"{folder} holds only pickle weights ({', '.join(pickles)}), which can run code when loaded; "
                    "yonos reads safetensors only: re-export the folder, or convert a file you trust to safetensors"
                )
            raise FileNotFoundError(f"{root}: component {name!r} has no weights ({name}/*.safetensors)")
    return root


def load_pipeline_folder(root: str | Path) -> YonosSRPipeline:
    """An exported folder as a pipeline (float32, CPU), checked first (:func:`check_pipeline_folder`) and read
    from safetensors only."""
    return YonosSRPipeline.from_pretrained(str(check_pipeline_folder(root)), use_safetensors=True)


def pipeline_from_checkpoint(ckpt: str | Path) -> YonosSRPipeline:
    """The pipeline of a TeacherModule / ScaleDistillModule / DecoderFinetuneModule checkpoint, with the scheduler
    the stage trained with (its noise schedule, ``prediction_type`` and zero-terminal-SNR flag)."""
    stage = load_stage_checkpoint(ckpt, key="--ckpt")
    return YonosSRPipeline.from_models(stage.denoiser.eval(), stage.codec.eval(), stage.scheduler(), stage.scale)


def export_pipeline(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the pipeline of ``ckpt`` to the folder ``out``; refuses a non-empty ``out`` unless ``overwrite``."""
    out = Path(out).expanduser()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    pipeline = pipeline_from_checkpoint(ckpt)
    with atomic_folder(out) as staging:
        pipeline.save_pretrained(staging)
        write_model_card(staging / "README.md", pipeline, training_record(ckpt))
    return out


def training_record(ckpt: str | Path) -> dict[str, Any]:
    """What the checkpoint records about its training, for the model card: stage, steps, model card entry, data."""
    checkpoint = torch.load(Path(ckpt).expanduser(), map_location="cpu", weights_only=True, mmap=True)
    hyper = checkpoint.get("hyper_parameters") or {}
    data = checkpoint.get("datamodule_hyper_parameters") or hyper.get("data")
    return {
        "checkpoint": Path(ckpt).name,
        "global_step": checkpoint.get("global_step"),
        "epoch": checkpoint.get("epoch"),
        "model": checkpoint.get(MODEL_CARD_KEY) or {},
        "data": _plain(data) if data else None,
    }


def _plain(value: Any) -> Any:
    """JSON-safe form of a hyper-parameter tree (paths and objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def main(argv: list[str]) -> None:
    """Entry point of ``yonos export``."""
    parser = command_parser("yonos export", export_pipeline.__doc__)
    parser.add_argument("--ckpt", required=True, help="a teacher, distillation or decoder stage checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="the pipeline folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it is not empty")
    args = parse(parser, argv)
    try:
        out = export_pipeline(args.ckpt, args.out, args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    config = YonosSRPipeline.load_config(out)
    print(f"exported {args.ckpt} -> {out} (scale x{config['scale']}); load with YonosSRPipeline.from_pretrained")
