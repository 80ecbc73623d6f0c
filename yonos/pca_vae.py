"""The tiny base's codec: a block-PCA autoencoder with diffusers' VAE interface (``encode(...).latent_dist``,
``decode(...).sample``, ``config.scaling_factor``), saved and loaded like any diffusers model.

Each ``patch_size`` x ``patch_size`` RGB block maps linearly to ``latent_channels`` numbers (the top principal
components of the training photos' blocks, :func:`fit_block_pca`) and back; the decoder adds a zero-initialised
convolutional residual, so the base decodes exactly linearly and decoder fine-tuning has non-linear capacity to
train. Stock ``AutoencoderKL`` cannot start linear (GroupNorm and SiLU sit before its ``conv_out``). No training here.
"""

from __future__ import annotations

from collections.abc import Iterable

import diffusers
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


class BlockDecoder(nn.Module):
    """latent (B, C, h, w) -> image (B, 3, p*h, p*w) in [-1, 1] units: the transposed block map plus a residual CNN
    at latent resolution whose last conv (``conv_out``) starts at zero."""

    def __init__(self, latent_channels: int, out_channels: int, patch_size: int, refine_channels: int, refine_layers: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.linear = nn.ConvTranspose2d(latent_channels, out_channels, patch_size, stride=patch_size)
        layers: list[nn.Module] = []
        width = latent_channels
        for _ in range(refine_layers):
            layers += [nn.Conv2d(width, refine_channels, 3, padding=1), nn.SiLU()]
            width = refine_channels
        self.refine = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, out_channels * patch_size**2, 3, padding=1) if refine_layers else None
        if self.conv_out is not None:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, latent: Tensor) -> Tensor:
        image = self.linear(latent)  # (B, 3, p*h, p*w)
        if self.conv_out is None:
            return image
        return image + F.pixel_shuffle(self.conv_out(self.refine(latent)), self.patch_size)


class BlockPCAAutoencoder(ModelMixin, ConfigMixin):
    """Deterministic block codec: ``encoder`` is a stride-``patch_size`` conv (the PCA projection with the mean
    folded into its bias), ``decoder`` a :class:`BlockDecoder`. The posterior has zero variance (mode = sample)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 8,
        patch_size: int = 4,
        refine_channels: int = 64,
        refine_layers: int = 2,
        sample_size: int = 128,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
    ) -> None:
        super().__init__()
        self.encoder = nn.Conv2d(in_channels, latent_channels, patch_size, stride=patch_size)
        self.decoder = BlockDecoder(latent_channels, out_channels, patch_size, refine_channels, refine_layers)
        self.post_quant_conv = None  # the attribute diffusers' VAEs have; nothing between latent and decoder here

    def encode(self, x: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """(B, 3, H, W) in [-1, 1] (H, W multiples of ``patch_size``) -> the posterior over (B, C, H/p, W/p)."""
        mean = self.encoder(x)
        posterior = DiagonalGaussianDistribution(torch.cat([mean, torch.zeros_like(mean)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        image = self.decoder(z)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: Tensor, return_dict: bool = True) -> DecoderOutput | tuple[Tensor]:
        return self.decode(self.encode(sample).latent_dist.mode(), return_dict)

    @torch.no_grad()
    def set_basis(self, components: Tensor, channel_mean: Tensor) -> None:
        """Load an orthonormal block basis ``components`` (C, 3*p*p, rows in ``pixel_unshuffle`` order) and the
        per-channel mean (3,) of the [-1, 1] images: encode z = W (x - mean), decode x = W^T z + mean."""
        p, c = self.config.patch_size, self.config.latent_channels
        if tuple(components.shape) != (c, self.config.in_channels * p * p):
            raise ValueError(f"basis of shape {tuple(components.shape)}; this codec needs ({c}, {self.config.in_channels * p * p})")
        weight = components.reshape(c, self.config.in_channels, p, p).to(self.encoder.weight)
        mean = channel_mean.to(weight)
        self.encoder.weight.copy_(weight)
        self.encoder.bias.copy_(-(weight * mean.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)))
        self.decoder.linear.weight.copy_(weight)
        self.decoder.linear.bias.copy_(mean)


def fit_block_pca(images: Iterable[Tensor], patch_size: int, channels: int) -> tuple[Tensor, Tensor]:
    """The top ``channels`` principal components of the ``patch_size`` blocks of ``images`` ((3, H, W) in [-1, 1]),
    after removing the per-channel mean: returns (components (C, 3*p*p), channel mean (3,)), in float64 maths."""
    blocks = []
    for image in images:
        height, width = (s - s % patch_size for s in image.shape[-2:])
        unshuffled = F.pixel_unshuffle(image[None, :, :height, :width].double(), patch_size)  # (1, 3p², h, w)
        blocks.append(unshuffled.flatten(2)[0].T)  # (h*w, 3p²)
    data = torch.cat(blocks)
    mean = data.view(data.shape[0], -1, patch_size * patch_size).mean(dim=(0, 2))  # (3,)
    centred = data - mean.repeat_interleave(patch_size * patch_size)
    covariance = centred.T @ centred / centred.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    components = eigenvectors[:, eigenvalues.argsort(descending=True)[:channels]].T
    # A sign convention, so the basis does not depend on the eigensolver: the largest entry of each is positive.
    signs = components.gather(1, components.abs().argmax(dim=1, keepdim=True)).sign()
    return (components * signs).float(), mean.float()


# Exported folders name this class in model_index.json (["yonos", "BlockPCAAutoencoder"]); diffusers' loader looks it
# up in its own namespace, as for YonosSRPipeline (yonos.pipeline), so importing this module is all it needs.
setattr(diffusers, BlockPCAAutoencoder.__name__, BlockPCAAutoencoder)
