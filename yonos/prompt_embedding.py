"""The pipeline component that holds the stored empty-prompt embedding (SR needs no text: the UNet's cross-attention
sees the embedding of "" that was computed once, at export). A diffusers ``ModelMixin`` so that it is saved and
loaded with the other components, in ``prompt_embedding/``."""

from __future__ import annotations

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn

from yonos.models import PROMPT_LENGTH


class PromptEmbedding(ModelMixin, ConfigMixin):
    """The stored empty-prompt embedding (1, 77, D) as a pipeline component, saved in ``prompt_embedding/``."""

    @register_to_config
    def __init__(self, sequence_length: int = PROMPT_LENGTH, embedding_dim: int = 1024) -> None:
        super().__init__()
        self.prompt_embeds = nn.Parameter(torch.zeros(1, sequence_length, embedding_dim), requires_grad=False)

    @classmethod
    def from_tensor(cls, prompt_embeds: Tensor) -> PromptEmbedding:
        module = cls(sequence_length=prompt_embeds.shape[1], embedding_dim=prompt_embeds.shape[2])
        with torch.no_grad():
            module.prompt_embeds.copy_(prompt_embeds.detach())
        return module
