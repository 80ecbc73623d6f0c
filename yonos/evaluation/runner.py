"""The evaluation loop: for each model and each DDIM step count, super-resolve the test set (resumable: SR images
already written are kept), score every SR image from its file, and write the reports.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from yonos.colorfix import ColorFix
from yonos.degradations.config import Degradation, PresetName
from yonos.evaluation.data import EvalPair, EvalSet, hr_is_gray, list_test_names, load_eval_set, read_hr, write_json
from yonos.evaluation.models import (
    DIFFUSION_KINDS,
    SRModel,
    classify_model,
    default_label,
    find_sr_image,
    load_model,
)
from yonos.evaluation.report import RunResult, write_per_image_csv, write_summary, write_sweep
from yonos.evaluation.scoring import DEFAULT_METRICS, LATENT_COLUMNS, MetricOptions, MetricSuite, build_suite
from yonos.export import check_pipeline_folder
from yonos.files import atomic_write
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


def super_resolve_set(
    model: SRModel, eval_set: EvalSet, sr_dir: Path, num_steps: int, seed: int, latent_dir: Path | None = None
) -> tuple[int, float]:
    """Write the SR image of every pair that has none yet; returns (images computed, seconds spent). With
    ``latent_dir`` (a model with latents), its z_0 is saved there first (``<name>.pt``), so an SR image on disk
    always has its latent."""
    def done(pair: EvalPair) -> bool:
        image = (sr_dir / f"{pair.name}.png").is_file()
        return image and (latent_dir is None or (latent_dir / f"{pair.name}.pt").is_file())

    todo = [(i, p) for i, p in enumerate(eval_set.pairs) if not done(p)]
    start = time.perf_counter()
    for index, pair in tqdm(todo, desc=f"{model.label} {num_steps} step(s)", unit="img", disable=not todo):
        lr = read_rgb(pair.lr_path)[None].to(model.device)  # (1, 3, h, w)
        noise_seed = validation_seed(seed, index)
        if latent_dir is not None and model.latents is not None:
            z_0 = model.latents.sample(lr, eval_set.scale, noise_seed, num_steps)
            (latent_dir / pair.name).parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(latent_dir / f"{pair.name}.pt") as partial:
                torch.save(z_0.float().cpu(), partial)
            sr = model.latents.decode(z_0, lr, eval_set.scale)
        else:
            sr = model.upscale(lr, eval_set.scale, noise_seed, num_steps)
        expected = (1, 3, lr.shape[-2] * eval_set.scale, lr.shape[-1] * eval_set.scale)
        if tuple(sr.shape) != expected:
            raise ValueError(f"{model.label}: SR of {pair.name} is {tuple(sr.shape)}, expected {expected}")
        save_image_atomic(sr[0].float().cpu(), sr_dir / f"{pair.name}.png")
    return len(todo), time.perf_counter() - start


def latent_scores(model: SRModel, eval_set: EvalSet, latent_dir: Path | None, pair: EvalPair, hr: Tensor) -> dict[str, float]:
    """``latent_mse`` and ``latent_mse_copy`` of one image: the saved z_0 and the condition z_lr against E(HR);
    NaN for models without latents (baselines, pipelines, SR folders)."""
    if model.latents is None or latent_dir is None:
        return dict.fromkeys(LATENT_COLUMNS, float("nan"))
    z_0 = torch.load(latent_dir / f"{pair.name}.pt", map_location=model.device, weights_only=True)
    with torch.no_grad():
        z_hr = model.latents.encode(hr.to(model.device)).float()
        z_lr = model.latents.condition(read_rgb(pair.lr_path)[None].to(model.device), eval_set.scale).float()
    if z_hr.shape != z_0.shape:
        raise ValueError(f"{latent_dir / pair.name}.pt is {tuple(z_0.shape)}, E(HR) {tuple(z_hr.shape)}")
    return {"latent_mse": float((z_0 - z_hr).pow(2).mean()), "latent_mse_copy": float((z_lr - z_hr).pow(2).mean())}


def score_set(
    suite: MetricSuite,
    eval_set: EvalSet,
    sr_dir: Path,
    seed: int,
    desc: str,
    any_suffix: bool = False,
    model: SRModel | None = None,
    latent_dir: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-image rows and the run's means (FID over the whole set), always recomputed from the SR files
    (``<name>.png``, or with ``any_suffix`` any image suffix, as in a folder of SR images made elsewhere), and from
    the saved latents when the suite asks for ``latent_mse``."""
    rows = []
    for index, pair in enumerate(tqdm(eval_set.pairs, desc=f"{desc} metrics", unit="img")):
        path = find_sr_image(sr_dir, pair.name) if any_suffix else sr_dir / f"{pair.name}.png"
        sr, hr = read_rgb(path)[None], read_hr(pair, eval_set.scale)
        if sr.shape != hr.shape:
            raise ValueError(f"{path} is {tuple(sr.shape[-2:])}, its HR {tuple(hr.shape[-2:])}")
        scores = suite.score(sr, hr, gray=hr_is_gray(pair.hr_path))
        if suite.latent:
            scores.update(latent_scores(model, eval_set, latent_dir, pair, hr) if model else dict.fromkeys(LATENT_COLUMNS, float("nan")))
        rows.append({"name": pair.name, "seed": validation_seed(seed, index), **scores})
    columns = [*suite.per_image, *(LATENT_COLUMNS if suite.latent else ())]
    means = {name: sum(row[name] for row in rows) / len(rows) for name in columns}
    return rows, {**means, **suite.finish_run()}


def _run_one(
    config: EvalConfig, model: SRModel, eval_set: EvalSet, suite: MetricSuite, steps: int | None, out: Path
) -> RunResult:
    """One (model, steps) row; baselines (``steps`` None) are computed once, SR folders are scored as they are."""
    if model.kind == "folder":
        rows, means = score_set(suite, eval_set, model.path, config.seed, model.label, any_suffix=True)
        run_dir = out / model.label
        write_per_image_csv(run_dir / "per_image.csv", rows, _per_image_columns(suite))
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
    latent_dir = run_dir / "latents" if suite.latent and model.latents is not None else None
    computed, seconds = super_resolve_set(model, eval_set, run_dir / "sr", steps or 1, config.seed, latent_dir)
    desc = f"{model.label} {steps} step(s)"
    rows, means = score_set(suite, eval_set, run_dir / "sr", config.seed, desc, model=model, latent_dir=latent_dir)
    write_per_image_csv(run_dir / "per_image.csv", rows, _per_image_columns(suite))
    return RunResult(model.label, str(model.path), model.kind, steps, len(rows), means, run_dir, computed, seconds)


def _per_image_columns(suite: MetricSuite) -> list[str]:
    return ["name", "seed", *suite.per_image, *(LATENT_COLUMNS if suite.latent else ())]


def check_inputs(config: EvalConfig) -> None:
    """Every ``--data`` / ``--model`` path, and the pairing of SR folders with the test images, checked from the file
    system before any network is built (a wrong path fails in a second, not after the models load)."""
    kinds = [classify_model(path) for path in config.models]
    out = Path(config.out).expanduser()
    names, hr_only = list_test_names(config.data, config.scale, exclude=(out, Path(config.lr_cache or out / "lr_cache")))
    for path, kind in zip(config.models, kinds):
        if kind == "pipeline":
            try:
                check_pipeline_folder(path)
            except (FileNotFoundError, ValueError) as err:
                raise type(err)(f"--model: {err}") from err
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
