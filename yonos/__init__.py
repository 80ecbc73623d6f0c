"""YONOS-SR: one-step image super-resolution on Stable Diffusion, trained by scale distillation."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``yonos.YonosSRPipeline`` on first use: importing the package stays cheap (no diffusers import)."""
    if name == "YonosSRPipeline":
        from yonos.pipeline import YonosSRPipeline

        return YonosSRPipeline
    if name == "BlockPCAAutoencoder":  # model_index.json of an exported tiny model names ["yonos", "BlockPCAAutoencoder"]
        from yonos.pca_vae import BlockPCAAutoencoder

        return BlockPCAAutoencoder
    raise AttributeError(f"module 'yonos' has no attribute {name!r}")
