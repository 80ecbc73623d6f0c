"""Image degradations that make LR training inputs from HR crops (pure torch + kornia, no Lightning)."""

from yonos.degradations.bicubic import bicubic_downsample, quantize_8bit, upsample_to

__all__ = ["bicubic_downsample", "quantize_8bit", "upsample_to"]
