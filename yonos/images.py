"""Image file I/O: reading any common image file as 8-bit RGB, listing image folders, writing atomically.

No training logic here; datasets, prediction writers and the CLI use these.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL image as (H, W, 3) uint8 RGB: EXIF orientation applied; gray, palette, RGBA (alpha dropped),
    CMYK and 16-bit / 32-bit integer and float modes converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            peak = 65535.0  # 16-bit files: the full range, so a dark image stays dark
        elif image.mode == "I":
            peak = 65535.0 if array.max(initial=0) > 255 else 255.0  # 32-bit int: 16-bit data or 8-bit data
        else:
            peak = 1.0 if array.max(initial=0) <= 1.0 else 255.0  # float images in [0, 1] or [0, 255]
        gray = np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_rgb(path: str | Path) -> Tensor:
    """Read an image file as a (3, H, W) float tensor in [0, 1]."""
    with Image.open(path) as image:
        array = to_rgb8(image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def is_readable_image(path: Path) -> bool:
    """Whether PIL recognises the file's header as an image (cheap: pixels are not decoded)."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - forces header parsing
        return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def list_images(folder: Path, recursive: bool = True) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (sorted) and the other files that were skipped (wrong suffix or unreadable)."""
    candidates = sorted(p for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
    images, skipped = [], []
    for path in candidates:
        if path.name.startswith("."):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and is_readable_image(path):
            images.append(path)
        else:
            skipped.append(path)
    return images, skipped


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image_atomic(image: Tensor, path: str | Path) -> Path:
    """Write a (3, H, W) image in [0, 1] as an 8-bit file: to a temporary file beside ``path``, then rename.

    An interrupted write therefore never leaves a truncated file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not torch.isfinite(image).all():
        raise ValueError(f"refusing to write {path}: the image contains NaN or inf")
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(descriptor)
    try:
        Image.fromarray(array).save(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
