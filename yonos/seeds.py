"""Every seed the project derives, in one place: the rank's training stream (timesteps, noise, Real-ESRGAN draws),
the per-sample validation seeds, and the per-crop generators of streamed training shards.

Each is a pure function of the run's seed and a position (rank, sample index, epoch), never of the batch size, the
world size or the worker count, so that evaluation is comparable across set-ups and a resumed run continues where it
stopped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


class TrainingStream:
    """A rank's random stream: seeded ``seed + rank`` on the device it is drawn on; its position can be saved and
    restored, so that a resumed run continues the same stream. The stage modules draw timesteps and noise from one,
    the DataModule its training degradations from another."""

    CHECKPOINT_KEY = "yonos_generator_state"
    """Where the stage modules keep the stream's state in a Lightning checkpoint."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._restored: Tensor | None = None

    def generator(self, device: torch.device, rank: int) -> torch.Generator:
        """The stream on ``device``; built on first use (or on a device change) from the seed or a restored state."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed + rank)
            if self._restored is not None:
                self._generator.set_state(self._restored)
                self._restored = None
        return self._generator

    def state(self) -> Tensor | None:
        """The stream's position: the live generator's, else a restored state not drawn from yet, else None (the
        stream starts from the seed)."""
        return self._restored if self._generator is None else self._generator.get_state()

    def restore(self, state: Tensor | None) -> None:
        """Continue from ``state`` (from :meth:`state`) at the next draw; None starts again from the seed."""
        self._restored, self._generator = state, None

    def save(self, checkpoint: dict[str, Any]) -> None:
        """Write the position into a Lightning checkpoint (``on_save_checkpoint``)."""
        state = self.state()
        if state is not None:
            checkpoint[self.CHECKPOINT_KEY] = state

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Read the position back from a Lightning checkpoint (``on_load_checkpoint``)."""
        self.restore(checkpoint.get(self.CHECKPOINT_KEY))


def validation_seed(seed: int, index: int) -> int:
    """The seed of one validation sample: a function of the base seed and the sample index only."""
    return seed * 1_000_003 + index


def validation_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one validation sample (see :func:`validation_seed`)."""
    return torch.Generator(device=device).manual_seed(validation_seed(seed, index))


def crop_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one streamed training crop: a function of (seed, epoch, sample), so crops survive resumes
    and do not depend on the number of ranks or workers."""
    entropy = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
