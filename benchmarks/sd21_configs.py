"""The component configs of Stable Diffusion 2.1-base (stabilityai/stable-diffusion-2-1-base), written out from the
values its public config files hold, to build the real architecture with random weights where the weights cannot
be downloaded. ``build_folder`` writes a diffusers folder in SD's layout (unet/, vae/, scheduler/, model_index.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SCHEDULER: dict[str, Any] = {  # PNDM, epsilon prediction: what SD 2.1-base ships
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

TEXT_ENCODER: dict[str, Any] = {  # OpenCLIP ViT-H/14's text tower as transformers' CLIPTextModel (23 layers used)
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


def text_encoder_parameters() -> int:
    """Parameter count of the text encoder (built once, then dropped: the folder below has none, see build_folder)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    model = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER))
    return sum(p.numel() for p in model.parameters())


def build_folder(root: Path, seed: int = 0, unet: dict[str, Any] = UNET, vae: dict[str, Any] = VAE) -> dict[str, int]:
    """Random-weight UNet and VAE of SD 2.1-base saved in SD's layout; returns their parameter counts.

    No text_encoder/ or tokenizer/: the tokenizer's vocabulary cannot be built here, and yonos then stores a zero
    empty-prompt embedding (the text encoder runs once at load time in a real folder and is not kept)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    from yonos.base import write_model_index

    torch.manual_seed(seed)
    counts = {}
    network = UNet2DConditionModel(**unet)
    counts["unet"] = sum(p.numel() for p in network.parameters())
    network.save_pretrained(root / "unet")
    del network
    network = AutoencoderKL(**vae)
    counts["vae"] = sum(p.numel() for p in network.parameters())
    network.save_pretrained(root / "vae")
    del network
    (root / "scheduler").mkdir(parents=True, exist_ok=True)  # as shipped (clip_sample is a DDIM key PNDM ignores)
    config = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", **SCHEDULER}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2))
    PNDMScheduler.from_pretrained(root / "scheduler")  # it loads
    write_model_index(root, "PNDMScheduler")
    return counts
