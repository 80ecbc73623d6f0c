"""YONOS-SR: one-step image super-resolution on Stable Diffusion, trained by scale distillation."""

__version__ = "0.1.0"
