"""The files that tell a user of an exported folder what it is and how to load it: the hub-style model card
(``README.md``) and the ``_yonos`` entry of ``model_index.json``. Written by ``YonosSRPipeline.save_pretrained`` and
``yonos export`` (which adds what the checkpoint records about its training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from yonos.pipeline import YonosSRPipeline

LOAD_HINT = "pip install yonos, then `import yonos` before diffusers' DiffusionPipeline.from_pretrained"
"""What a folder's user needs: diffusers finds the pipeline class only once yonos has registered it."""


def write_model_card(path: Path, pipeline: YonosSRPipeline, training: dict[str, Any] | None = None) -> None:
    """A hub-style model card: YAML metadata (library, pipeline tag, tags), how to load, what the folder holds."""
    scheduler = pipeline.scheduler.config
    model = (training or {}).get("model") or {}
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: image-to-image",
        "tags:",
        *[f"- {tag}" for tag in ("yonos", "super-resolution", "image-to-image", "diffusers:YonosSRPipeline")],
        "---",
        "",
        f"# YONOS-SR x{pipeline.config.scale}: one-step diffusion super-resolution",
        "",
        "A `YonosSRPipeline` folder written by yonos (diffusers layout, safetensors, no code). Load it with:",
        "",
        "```python",
        "import yonos  # pip install yonos: registers YonosSRPipeline with diffusers",
        'pipe = yonos.YonosSRPipeline.from_pretrained("PATH_OR_REPO")  # or diffusers.DiffusionPipeline',
        "```",
        "",
        f"Without yonos, diffusers cannot resolve the class `YonosSRPipeline` named in model_index.json: {LOAD_HINT}.",
        "",
        "## Model",
        "",
        f"- scale: x{pipeline.config.scale}; inference: {1} DDIM step (`num_inference_steps=1`)",
        f"- parameterisation: {scheduler.prediction_type}; zero-terminal-SNR betas: {scheduler.rescale_betas_zero_snr}",
        f"- UNet: {pipeline.unet.config.block_out_channels} channels; VAE: {type(pipeline.vae).__name__}",
    ]
    if training:
        backbone = model.get("backbone") or {}
        lines += [
            "",
            "## Training (from the checkpoint)",
            "",
            f"- checkpoint: `{training['checkpoint']}`, optimizer steps: {training['global_step']}, "
            f"epoch: {training['epoch']}",
            f"- trained scale: x{model.get('scale')}; loss weighting: {model.get('loss_weighting')}",
            f"- base model: {backbone.get('pretrained') or 'preset ' + str(backbone.get('preset'))}",
            f"- data: {json.dumps(training['data']) if training['data'] else 'not recorded in the checkpoint'}",
        ]
    else:
        lines += ["", "Training details: not recorded (saved with `save_pretrained`, not `yonos export`)."]
    path.write_text("\n".join(lines) + "\n")


def add_load_hint(index: Path) -> None:
    """A ``_yonos`` entry in model_index.json saying what loading needs (diffusers ignores keys starting with _)."""
    config = json.loads(index.read_text())
    config["_yonos"] = LOAD_HINT
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
