"""``yonos evaluate``: one command for the StableSR test protocol and the metric-versus-steps sweep.

Paired test set (StableSR's ``gt/`` + ``lq/``, or ``hr/`` + ``lr/``), one step, seed 42::

    yonos evaluate --model outputs/student_x4/checkpoints/last.ckpt --data StableSR-TestSets/DIV2K_V2_val \\
        --metrics psnr,ssim,lpips,dists,fid,niqe,musiq,maniqa,clipiqa --out results/div2k

HR-only folder, LR synthesised once (cached under ``--out``/lr_cache or ``--lr-cache``), two models swept over
DDIM steps into one plot (the paper's Fig. 3)::

    yonos evaluate --model distilled.ckpt --label distilled --model direct.ckpt --label direct \\
        --data DIV2K_valid_HR --degradation bicubic --scale 4 --steps 1,2,4,8,16,50,200 --metrics fid,lpips --out results/fig3

Baselines and SR images made elsewhere sit beside the models as rows of the same tables::

    yonos evaluate --model bicubic --model results/osediff_sr --model student.ckpt --data Set5/hr_lr --crop-border 4 \
        --out results/set5

The metric code is ``yonos.metrics``; the loop and reports are ``yonos.evaluation``.
"""

from __future__ import annotations

import sys
from typing import get_args

from jsonargparse import ArgumentParser

from yonos.commands import OptionError, command_parser, parse
from yonos.degradations.config import PresetName
from yonos.evaluation.data import Degradation
from yonos.evaluation.models import ColorFix
from yonos.evaluation.runner import EvalConfig, evaluate
from yonos.evaluation.scoring import DEFAULT_METRICS, METRICS, parse_metrics
from yonos.metrics import FIDMode, GrayConvention, MissingWeightsError


def _steps(text: str | list[int]) -> list[int]:
    """``1,2,4`` (or a list of integers, as a config file gives them) -> the step counts, validated."""
    parts = text.split(",") if isinstance(text, str) else text
    try:
        steps = [int(part) for part in parts if str(part).strip()]
    except ValueError as err:
        raise OptionError(f"--steps takes comma-separated integers, got {text!r}") from err
    if not steps or any(n < 1 for n in steps):
        raise OptionError(f"--steps takes positive integers, got {text!r}")
    return list(dict.fromkeys(steps))


def _metrics(text: str | list[str]) -> list[str]:
    try:
        return parse_metrics(text)
    except ValueError as err:
        raise OptionError(str(err)) from err


def build_parser() -> ArgumentParser:
    """The ``yonos evaluate`` argument parser: one option per :class:`EvalConfig` field (``--model`` and ``--label``
    are repeated and fill ``models`` and ``labels``)."""
    parser = command_parser("yonos evaluate", __doc__)
    add = parser.add_argument
    add(
        "--model",
        action="append",
        dest="models",
        required=True,
        help="stage checkpoint (.ckpt), pipeline folder (model_index.json), folder of SR images named like the test "
        "images (scored as they are), or a baseline: bicubic (MATLAB imresize) or lanczos; repeat to compare",
    )
    add("--label", action="append", dest="labels", help="name of each --model in tables and plots (default: its file name)")
    add("--data", required=True, help="paired folder (gt/+lq/ or hr/+lr/) or HR-only folder of images")
    add("--out", required=True, help="results folder (SR images, CSV, summary.json/.md, sweep table and plot)")
    add(
        "--metrics",
        default=",".join(DEFAULT_METRICS),
        type=_metrics,
        help=f"comma-separated from {', '.join(METRICS)}, or 'all'",
    )
    add("--steps", default=[1], type=_steps, help="DDIM step counts, e.g. 1 or 1,2,4,8,16,50,200 (a sweep writes sweep.png)")
    add("--seed", type=int, default=42, help="noise seed; image i uses seed * 1000003 + i (default 42)")
    add("--color-fix", default="none", choices=get_args(ColorFix), help="colour correction of the SR output")
    add("--crop-border", type=int, default=0, help="pixels cropped from each border before PSNR/SSIM (often = scale)")
    add("--scale", type=int, default=None, help="SR factor (default: the HR/LR size ratio of a paired folder, else the model's)")
    add(
        "--degradation",
        default="bicubic",
        choices=get_args(Degradation),
        help="HR-only folders: how LR images are made (bicubic_matlab: MATLAB imresize, as the classic tables' LR)",
    )
    add("--preset", default="stablesr", choices=get_args(PresetName), help="Real-ESRGAN parameter preset")
    add("--degradation-seed", type=int, default=0, help="HR-only folders: seed of the synthetic LR images (fixed, cached)")
    add("--lr-cache", default=None, help="folder of cached synthetic LR images (default: <out>/lr_cache)")
    add("--lpips-net", default="alex", choices=["alex", "vgg"], help="LPIPS backbone (default alex)")
    add(
        "--random-lpips-backbone",
        action="store_true",
        help="pipeline checks only: LPIPS with a random backbone (reported under another name)",
    )
    add("--ssim-convention", default="basicsr", choices=["basicsr", "pyiqa"], help="SSIM reference whose Y handling to follow")
    add(
        "--fid-mode",
        default="clean",
        choices=get_args(FIDMode),
        help="FID's resize to 299: clean (PIL bicubic, clean-fid / pyiqa default, the peers' tables) or legacy (TF1 bilinear)",
    )
    add(
        "--gray-convention",
        default="own",
        choices=get_args(GrayConvention),
        help="PSNR/SSIM-Y of one-channel HR images: own (their gray values, the classic tables) or rgb_y (Y of the RGB copy)",
    )
    add(
        "--skip-unavailable",
        action="store_true",
        help="skip metrics whose weights or packages are missing (listed in the summary)",
    )
    add("--device", default="auto", help="torch device for models and metric networks (default: cuda if available, else cpu)")
    return parser


def config_from_args(argv: list[str]) -> EvalConfig:
    """Parse the command line into an :class:`EvalConfig`."""
    return EvalConfig(**vars(parse(build_parser(), argv)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``yonos evaluate``: run, print the results table and where everything was written."""
    from yonos.evaluation.report import results_table

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(argv)
        summary = evaluate(config)
    except (MissingWeightsError, ImportError, ValueError, FileNotFoundError) as err:
        print(f"yonos evaluate: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print()
    print(results_table(summary["runs"], summary["metric_columns"]))
    for name, reason in summary["skipped_metrics"].items():
        print(f"skipped {name}: {reason}")
    print(f"\nsummary: {config.out}/summary.md, {config.out}/summary.json")
    for kind, path in summary.get("sweep", {}).items():
        print(f"sweep {kind}: {path}")
