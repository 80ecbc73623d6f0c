"""A latent that is not SD's 4 channels (the block-PCA codec's 6 here) through every stage, export, a plain
``DiffusionPipeline.from_pretrained`` and a tiled upscale."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yonos.base import write_base

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = 6


def test_six_channel_base_through_the_chain_export_diffusers_loading_and_tiling(
    tmp_path: Path, sample_data: Path, monkeypatch: pytest.MonkeyPatch, one_thread
):
    from diffusers import DiffusionPipeline

    import yonos  # noqa: F401  (registers the yonos classes with diffusers)
    from yonos.chain import run_chain
    from yonos.export import export_pipeline
    from yonos.pca_vae import BlockPCAAutoencoder

    base = write_base(tmp_path / "base", train_dir=sample_data / "train", latent_channels=CHANNELS)
    monkeypatch.chdir(ROOT)  # the yamls' relative paths
    configs = [f"experiments/tiny/{name}.yaml" for name in ("teacher_x2", "distill_x2_to_x4", "decoder_finetune")]
    extra = ["--stage", "teacher_x2", f"--model.init_args.backbone.pretrained={base}"]  # the student copies it
    common = [
        f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
    ]
    finals = run_chain(configs, tmp_path / "chain", extra=[*common, *extra], isolate=False)
    assert list(finals) == ["teacher_x2", "student_x4", "decoder_x4"]

    model_dir = export_pipeline(finals["decoder_x4"], tmp_path / "model")
    pipeline = DiffusionPipeline.from_pretrained(model_dir)
    assert type(pipeline).__name__ == "YonosSRPipeline"
    assert isinstance(pipeline.vae, BlockPCAAutoencoder) and pipeline.vae.config.latent_channels == CHANNELS
    assert pipeline.unet.config.in_channels == 2 * CHANNELS and pipeline.unet.config.out_channels == CHANNELS

    lr = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    run = lambda tile_size: pipeline(  # noqa: E731
        lr, num_inference_steps=1, generator=torch.Generator().manual_seed(0), tile_size=tile_size, tile_overlap=16,
        color_fix="none", output_type="pt",
    ).images
    untiled, tiled = run(None), run(48)
    assert tiled.shape == untiled.shape == (1, 3, 96, 80)
    assert torch.isfinite(tiled).all()
    # Tiles see less context than the whole image, so the two differ a little, never wholesale.
    assert (tiled - untiled).abs().mean() < 0.1
