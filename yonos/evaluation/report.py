"""Reports of ``yonos evaluate``: the per-image CSV, the summary (JSON and Markdown, settings and metric definitions
beside the numbers) and the metric-versus-steps table and plot (the paper's Fig. 3).
"""

from __future__ import annotations

import csv
import math
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from yonos.evaluation.data import write_json
from yonos.evaluation.scoring import lower_is_better, version
from yonos.files import atomic_write, write_text_atomic

PACKAGES = ("yonos", "torch", "torchvision", "diffusers", "torchmetrics", "torch-fidelity", "lpips", "pyiqa", "numpy", "pillow")


@dataclass
class RunResult:
    """One model at one step count."""

    label: str
    model: str
    kind: str
    steps: int | None  # None: a baseline or an SR folder, whose output does not depend on DDIM steps
    images: int
    metrics: dict[str, float]
    run_dir: Path
    computed: int
    seconds: float
    sr_dir: Path | None = None  # where the scored SR images are (default: run_dir/sr)

    def as_dict(self) -> dict[str, Any]:
        """The run as it appears in ``summary.json`` (plain types)."""
        return {
            "label": self.label,
            "model": self.model,
            "kind": self.kind,
            "steps": self.steps,
            "images": self.images,
            "metrics": self.metrics,
            "sr_dir": str(self.sr_dir or self.run_dir / "sr"),
            "per_image_csv": str(self.run_dir / "per_image.csv"),
            "sr_computed_this_run": self.computed,
            "sr_seconds_per_image": self.seconds / self.computed if self.computed else None,
        }


def write_per_image_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """One row per image: name, noise seed, every per-image metric."""
    with atomic_write(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({key: _plain(row[key]) for key in columns} for row in rows)


def _plain(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


def _format(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2f}" if name.startswith(("psnr", "fid", "musiq")) else f"{value:.4f}"


def _header(names: list[str]) -> str:
    return " | ".join(f"{name} {'↓' if lower_is_better(name) else '↑'}" for name in names)


def results_table(runs: list[dict[str, Any]], names: list[str]) -> str:
    """A Markdown table of runs (``RunResult.as_dict()``): one row per (model, steps), one column per metric."""
    lines = [f"| model | steps | images | {_header(names)} |", "|" + "---|" * (3 + len(names))]
    for run in runs:
        cells = " | ".join(_format(name, run["metrics"].get(name)) for name in names)
        steps = "-" if run["steps"] is None else run["steps"]
        lines.append(f"| {run['label']} | {steps} | {run['images']} | {cells} |")
    return "\n".join(lines)


def _settings(config: Any, eval_set: Any, models: list[Any], device: torch.device) -> dict[str, Any]:
    return {
        "data": eval_set.source,
        "images": len(eval_set.pairs),
        "scale": eval_set.scale,
        "seed": config.seed,
        "noise_seed_of_image_i": f"{config.seed} * 1000003 + i (i: position in the sorted file list)",
        "steps": config.steps,
        "color_fix": config.color_fix,
        "crop_border": config.crop_border,
        "ssim_convention": config.ssim_convention,
        "gray_convention": config.gray_convention,
        "fid_mode": config.fid_mode,
        "lpips_backbone": config.lpips_net,
        "random_lpips_backbone": config.random_lpips_backbone,
        "device": str(device),
        "models": [{"label": m.label, "path": str(m.path), "kind": m.kind, **m.info} for m in models],
    }


def write_summary(
    out: Path,
    config: Any,
    eval_set: Any,
    suite: Any,
    runs: list[RunResult],
    models: list[Any],
    device: torch.device,
    sweep: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``summary.json`` and ``summary.md``: settings, metric definitions, package versions, skipped metrics, results."""
    summary = {
        "settings": _settings(config, eval_set, models, device),
        "metric_columns": suite.names,
        "metric_definitions": suite.definitions,
        "skipped_metrics": suite.skipped,
        "versions": {"python": platform.python_version(), **{p: version(p) for p in PACKAGES}},
        "runs": [run.as_dict() for run in runs],
    }
    if sweep:
        summary["sweep"] = sweep
    write_json(out / "summary.json", summary)
    write_text_atomic(out / "summary.md", summary_markdown(summary))
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: results first, then exactly how they were obtained."""
    settings = summary["settings"]
    lines = ["# yonos evaluate", "", results_table(summary["runs"], summary["metric_columns"]), "", "## Settings", ""]
    for key in (
        "images",
        "scale",
        "steps",
        "seed",
        "noise_seed_of_image_i",
        "color_fix",
        "crop_border",
        "ssim_convention",
        "gray_convention",
        "fid_mode",
        "lpips_backbone",
        "device",
    ):
        lines.append(f"- {key}: {settings[key]}")
    lines.append("- data: " + ", ".join(f"{k} {v}" for k, v in settings["data"].items()))
    for model in settings["models"]:
        lines.append("- model: " + ", ".join(f"{k} {v}" for k, v in model.items()))
    if "sweep" in summary:
        lines.append("- sweep: " + ", ".join(Path(path).name for path in summary["sweep"].values()))
    lines += ["", "## Metric definitions", ""]
    lines += [f"- {name}: {text}" for name, text in summary["metric_definitions"].items()]
    if summary["skipped_metrics"]:
        lines += ["", "## Skipped metrics", ""]
        lines += [f"- {name}: {reason}" for name, reason in summary["skipped_metrics"].items()]
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), ""]
    return "\n".join(lines)


def write_sweep(out: Path, runs: list[RunResult], names: list[str]) -> dict[str, str]:
    """``sweep.csv``, ``sweep.md`` and ``sweep.png``: every metric against the number of steps, one line per model."""
    columns = ["label", "steps", *names]
    write_per_image_csv(out / "sweep.csv", [{"label": r.label, "steps": r.steps, **r.metrics} for r in runs], columns)
    table = results_table([run.as_dict() for run in runs], names)
    write_text_atomic(out / "sweep.md", "# Metric versus DDIM steps\n\n" + table + "\n")
    written = {"csv": str(out / "sweep.csv"), "markdown": str(out / "sweep.md")}
    try:
        plot_sweep(out / "sweep.png", runs, names)
        written["plot"] = str(out / "sweep.png")
    except ImportError:
        warnings.warn("matplotlib is not installed: sweep.png not written (pip install matplotlib)", stacklevel=2)
    return written


def plot_sweep(path: Path, runs: list[RunResult], names: list[str]) -> None:
    """One panel per metric, steps on a log axis, one line per model label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(run.label for run in runs))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    steps = sorted({run.steps for run in runs if run.steps is not None})
    for axis, name in zip(axes.flat, names):
        for label in labels:
            points = sorted((r.steps, r.metrics.get(name, math.nan)) for r in runs if r.label == label and r.steps is not None)
            if points:
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
            for flat in (r for r in runs if r.label == label and r.steps is None):  # baselines: no steps, one level
                axis.axhline(flat.metrics.get(name, math.nan), linestyle="--", label=label)
        axis.set_xscale("log")
        axis.set_xticks(steps, [str(n) for n in steps], minor=False)
        axis.minorticks_off()
        axis.set_xlabel("DDIM steps")
        axis.set_title(f"{name} ({'lower' if lower_is_better(name) else 'higher'} is better)", fontsize=9)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    axes.flat[0].legend()
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
