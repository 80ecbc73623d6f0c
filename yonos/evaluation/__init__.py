"""``yonos evaluate``: the StableSR test protocol (paired or HR-only folders, fixed seeds, Y-channel PSNR/SSIM,
LPIPS, DISTS, FID, no-reference IQA) and the metric-versus-steps sweep. The metric maths is in ``yonos.metrics``;
the command line is ``yonos.evaluation.command``."""

from yonos.evaluation.runner import EvalConfig, evaluate

__all__ = ["EvalConfig", "evaluate"]
