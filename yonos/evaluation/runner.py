"""The evaluation loop: for each model and each DDIM step count, super-resolve the test set (resumable: SR images
already written are kept), score every SR image from its file, and write the reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from tqdm import tqdm

from yonos.colorfix import ColorFix
from yonos.degradations.config import Degradation, PresetName
from yonos.evaluation.data import EvalSet, hr_is_gray, list_test_names, load_eval_set, read_hr, write_json
from yonos.evaluation.models import (
    DIFFUSION_KINDS,
    SRModel,
    classify_model,
    default_label,
    find_sr_image,
    load_model,
)
from yonos.evaluation.report import RunResult, write_per_image_csv, write_summary, write_sweep
from yonos.evaluation.scoring import DEFAULT_METRICS, MetricOptions, MetricSuite, build_suite
from yonos.images import read_rgb, save_image_atomic
from yonos.metrics import FIDMode, GrayConvention, LPIPSNet, SSIMConvention
from yonos.models import resolve_device
from yonos.seeds import validation_seed

RUN_SETTINGS = "run.json"


@dataclass
class EvalConfig:
    """Everything ``yonos evaluate`` takes; the CLI fills it, tests build it directly."""

    models: list[str]
    data: str
    out: str
    labels: list[str] | None = None
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    steps: list[int] = field(default_factory=lambda: [1])
    seed: int = 42
    color_fix: ColorFix = "none"
    crop_border: int = 0
    scale: int | None = None
    degradation: Degradation = "bicubic"
    preset: PresetName = "stablesr"
    degradation_seed: int = 0
    lr_cache: str | None = None
    lpips_net: LPIPSNet = "alex"
    random_lpips_backbone: bool = False
    ssim_convention: SSIMConvention = "basicsr"
    fid_mode: FIDMode = "clean"
    gray_convention: GrayConvention = "own"
    skip_unavailable: bool = False
    device: str = "auto"
    fid_feature: nn.Module | None = None
    """Custom FID feature extractor (tests only; reported as ``fid_custom_features``)."""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("--model: give at least one checkpoint, pipeline folder, SR folder or baseline")
        if any(n < 1 for n in self.steps) or not self.steps:
            raise ValueError(f"--steps must be positive integers, got {self.steps}")
        if self.labels and len(self.labels) != len(self.models):
            raise ValueError(f"--label given {len(self.labels)} time(s) for {len(self.models)} --model(s)")
        if self.crop_border < 0:
            raise ValueError(f"--crop-border must be >= 0, got {self.crop_border}")

    def model_labels(self) -> list[str]:
        """One label per model (given, or from the file name), usable as a folder name and unique."""
        labels = self.labels or [default_label(m) for m in self.models]
        unusable = [label for label in labels if not label or "/" in label or "\\" in label or label.startswith(".")]
        if unusable:
            raise ValueError(f"--label: {unusable} cannot name a results folder (no slashes, no leading dot)")
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"--label: models share the label(s) {duplicates}; give one --label per --model")
        return labels


def _model_scale(models: list[SRModel]) -> int | None:
    """The scale all models were trained for, when they agree (the SR factor of HR-only folders without --scale)."""
    scales = {m.scale for m in models if m.scale is not None}
    return scales.pop() if len(scales) == 1 else None


def check_resume(run_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse to mix SR images made under other settings in one folder (the resume guard)."""
    path = run_dir / RUN_SETTINGS
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise ValueError(
                f"{run_dir} holds SR images made with other settings ({', '.join(changed)} changed); "
                "choose another --out or delete that folder"
            )
    write_json(path, settings)


def super_resolve_set(model: SRModel, eval_set: EvalSet, sr_dir: Path, num_steps: int, seed: int) -> tuple[int, float]:
    """Write the SR image of every pair that has none yet; returns (images computed, seconds spent)."""
    todo = [(i, p) for i, p in enumerate(eval_set.pairs) if not (sr_dir / f"{p.name}.png").is_file()]
    start = time.perf_counter()
    for index, pair in tqdm(todo, desc=f"{model.label} {num_steps} step(s)", unit="img", disable=not todo):
        lr = read_rgb(pair.lr_path)[None].to(model.device)  # (1, 3, h, w)
        sr = model.upscale(lr, eval_set.scale, validation_seed(seed, index), num_steps)
        expected = (1, 3, lr.shape[-2] * eval_set.scale, lr.shape[-1] * eval_set.scale)
        if tuple(sr.shape) != expected:
            raise ValueError(f"{model.label}: SR of {pair.name} is {tuple(sr.shape)}, expected {expected}")
        save_image_atomic(sr[0].float().cpu(), sr_dir / f"{pair.name}.png")
    return len(todo), time.perf_counter() - start


def score_set(
    suite: MetricSuite, eval_set: EvalSet, sr_dir: Path, seed: int, desc: str, any_suffix: bool = False
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-image rows and the run's means (FID over the whole set), always recomputed from the SR files
    (``<name>.png``, or with ``any_suffix`` any image suffix, as in a folder of SR images made elsewhere)."""
    rows = []
    for index, pair in enumerate(tqdm(eval_set.pairs, desc=f"{desc} metrics", unit="img")):
        path = find_sr_image(sr_dir, pair.name) if any_suffix else sr_dir / f"{pair.name}.png"
        sr, hr = read_rgb(path)[None], read_hr(pair, eval_set.scale)
        if sr.shape != hr.shape:
            raise ValueError(f"{path} is {tuple(sr.shape[-2:])}, its HR {tuple(hr.shape[-2:])}")
        scores = suite.score(sr, hr, gray=hr_is_gray(pair.hr_path))
        rows.append({"name": pair.name, "seed": validation_seed(seed, index), **scores})
    means = {name: sum(row[name] for row in rows) / len(rows) for name in suite.per_image}
    return rows, {**means, **suite.finish_run()}


def _run_one(
    config: EvalConfig, model: SRModel, eval_set: EvalSet, suite: MetricSuite, steps: int | None, out: Path
) -> RunResult:
    """One (model, steps) row; baselines (``steps`` None) are computed once, SR folders are scored as they are."""
    if model.kind == "folder":
        rows, means = score_set(suite, eval_set, model.path, config.seed, model.label, any_suffix=True)
        run_dir = out / model.label
        write_per_image_csv(run_dir / "per_image.csv", rows, ["name", "seed", *suite.per_image])
        return RunResult(model.label, str(model.path), model.kind, None, len(rows), means, run_dir, 0, 0.0, model.path)
    run_dir = out / model.label / (f"steps_{steps}" if steps is not None else "sr_run")
    settings = {
        "model": model.identity(),
        "steps": steps,
        "seed": config.seed,
        "color_fix": config.color_fix,
        "scale": eval_set.scale,
        "lr_inputs": eval_set.fingerprint(),
    }
    check_resume(run_dir, settings)
    computed, seconds = super_resolve_set(model, eval_set, run_dir / "sr", steps or 1, config.seed)
    rows, means = score_set(suite, eval_set, run_dir / "sr", config.seed, f"{model.label} {steps} step(s)")
    write_per_image_csv(run_dir / "per_image.csv", rows, ["name", "seed", *suite.per_image])
    return RunResult(model.label, str(model.path), model.kind, steps, len(rows), means, run_dir, computed, seconds)


def check_inputs(config: EvalConfig) -> None:
    """Every ``--data`` / ``--model`` path, and the pairing of SR folders with the test images, checked from the file
    system before any network is built (a wrong path fails in a second, not after the models load)."""
    kinds = [classify_model(path) for path in config.models]
    out = Path(config.out).expanduser()
    names, hr_only = list_test_names(config.data, config.scale, exclude=(out, Path(config.lr_cache or out / "lr_cache")))
    for path, kind in zip(config.models, kinds):
        if kind != "folder":
            continue
        missing = [name for name in names if find_sr_image(Path(path).expanduser(), name) is None]
        if missing:
            raise FileNotFoundError(
                f"--model {path}: {len(missing)} of {len(names)} test image(s) have no SR image of the same name: {missing[:10]}"
            )
    if hr_only and config.scale is None and not any(kind in DIFFUSION_KINDS for kind in kinds):
        raise ValueError(f"--data {config.data} is HR only and no --model sets the scale (baselines and SR folders do not): give --scale")


def _model_steps(config: EvalConfig, model: SRModel) -> list[int | None]:
    return list(config.steps) if model.kind in DIFFUSION_KINDS else [None]


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the whole evaluation; returns the summary written to ``<out>/summary.json``."""
    out = Path(config.out).expanduser()
    labels = config.model_labels()
    check_inputs(config)
    device = resolve_device(config.device)
    options = MetricOptions(
        config.crop_border,
        config.lpips_net,
        config.random_lpips_backbone,
        config.ssim_convention,
        config.seed,
        config.fid_feature,
        config.fid_mode,
        config.gray_convention,
    )
    suite = build_suite(config.metrics, options, device, config.skip_unavailable)  # fails before any SR work
    models = [load_model(path, label, device, config.color_fix) for path, label in zip(config.models, labels)]
    eval_set = load_eval_set(
        config.data,
        config.scale,
        config.lr_cache or out / "lr_cache",
        config.degradation,
        config.preset,
        config.degradation_seed,
        default_scale=_model_scale(models),
        exclude=(out,),
    )
    runs = [_run_one(config, model, eval_set, suite, steps, out) for model in models for steps in _model_steps(config, model)]
    sweep = write_sweep(out, runs, suite.names) if len(config.steps) > 1 else None
    return write_summary(out, config, eval_set, suite, runs, models, device, sweep)
