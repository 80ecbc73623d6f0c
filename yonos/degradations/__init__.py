"""Image degradations that make LR training inputs from HR crops (pure torch + kornia, no Lightning)."""

from yonos.degradations.bicubic import bicubic_downsample, quantize_8bit, upsample_to
from yonos.degradations.matlab import bicubic_matlab_downsample, bicubic_matlab_upsample, imresize
from yonos.degradations.ops import usm_sharpen
from yonos.degradations.realesrgan import (
    PRESETS,
    DegradationStageConfig,
    RealESRGANConfig,
    RealESRGANParams,
    SecondStageConfig,
    StageParams,
    apply_realesrgan,
    realesrgan_target,
    sample_realesrgan_params,
)

__all__ = [
    "PRESETS",
    "DegradationStageConfig",
    "RealESRGANConfig",
    "RealESRGANParams",
    "SecondStageConfig",
    "StageParams",
    "apply_realesrgan",
    "bicubic_downsample",
    "bicubic_matlab_downsample",
    "bicubic_matlab_upsample",
    "imresize",
    "quantize_8bit",
    "realesrgan_target",
    "sample_realesrgan_params",
    "upsample_to",
    "usm_sharpen",
]
