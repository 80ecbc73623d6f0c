"""The embedded default data: photos that ship inside the scikit-image wheel, written as PNG folders.

No network: ``skimage.data`` reads these from its own package files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from yonos.images import save_image_atomic

TRAIN_PHOTOS = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "rocket", "motorcycle_left")
VAL_PHOTOS = ("chelsea", "motorcycle_right")


def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(data, name)()


def _resized(array: np.ndarray, max_side: int) -> torch.Tensor:
    image = Image.fromarray(array).convert("RGB")
    ratio = max_side / max(image.size)
    if ratio < 1:
        image = image.resize((round(image.width * ratio), round(image.height * ratio)), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def prepare_samples(out_dir: str | Path = "data/samples", max_side: int = 512) -> dict[str, list[Path]]:
    """Write ``out_dir/train`` and ``out_dir/val`` (PNG, longest side <= max_side); existing files are kept."""
    out_dir = Path(out_dir)
    written: dict[str, list[Path]] = {"train": [], "val": []}
    for split, names in (("train", TRAIN_PHOTOS), ("val", VAL_PHOTOS)):
        for name in names:
            path = out_dir / split / f"{name}.png"
            if not path.exists():
                save_image_atomic(_resized(_photo(name), max_side), path)
            written[split].append(path)
    return written
