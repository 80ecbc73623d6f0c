"""Image file I/O: reading any common image file with its alpha, gray-ness and bit depth (or as 8-bit RGB), listing
image folders, writing atomically (8 or 16 bits, PNG text metadata).

Pillow reads every format, except the samples of 16-bit colour PNGs (it keeps 8 bits of them): those are decoded by
imagecodecs (libpng). Pillow writes 8-bit files; 16-bit PNGs go through :class:`yonos.png_stream.PngRowWriter`, the
band writer of ``yonos upscale``. No training logic here; datasets, prediction writers and the CLI use these.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

from yonos.files import atomic_write
from yonos.png_stream import PNG_SIGNATURE, PngRowWriter

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def is_readable_image(path: Path) -> bool:
    """Whether PIL recognises the file's header as an image (cheap: pixels are not decoded). A decompression
    bomb (more than twice PIL's ``Image.MAX_IMAGE_PIXELS``) counts as unreadable."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - forces header parsing
        return True
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
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


def paired_subfolders(root: Path) -> tuple[str, str] | None:
    """THE paired-folder rule: the (HR, LR) subfolder names when ``root`` holds ``hr/`` + ``lr/`` or StableSR's
    ``gt/`` + ``lq/`` (in that order of preference), else None (an HR-only folder)."""
    for hr_name, lr_name in (("hr", "lr"), ("gt", "lq")):
        if (root / hr_name).is_dir() and (root / lr_name).is_dir():
            return hr_name, lr_name
    return None


def save_image_atomic(
    image: Tensor, path: str | Path, *, bit_depth: int = 8, metadata: dict[str, str] | None = None
) -> Path:
    """Write an image in [0, 1] to a temporary file beside ``path``, then rename it into place.

    An interrupted write therefore never leaves a truncated file under the final name.

    Args:
        image: (3, H, W) RGB, or (1, H, W) gray, (2, H, W) gray + alpha, (4, H, W) RGBA.
        bit_depth: 8, or 16 (PNG only).
        metadata: PNG text chunks (key -> value, Latin-1); PNG only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not torch.isfinite(image).all():
        raise ValueError(f"refusing to write {path}: the image contains NaN or inf")
    if image.ndim != 3 or image.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"cannot write {path}: expected a (1|2|3|4, H, W) image, got {tuple(image.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"cannot write {path}: bit_depth must be 8 or 16, got {bit_depth}")
    is_png = path.suffix.lower() == ".png"
    if (bit_depth == 16 or metadata) and not is_png:
        raise ValueError(f"cannot write {path}: 16-bit images and text metadata need a .png file")
    peak = 255 if bit_depth == 8 else 65535
    levels = image.detach().float().clamp(0, 1).mul(peak).round().permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    array = levels.astype(np.uint8 if bit_depth == 8 else np.uint16)
    if bit_depth == 16:
        with PngRowWriter(path, *array.shape, bit_depth=16) as png:
            png.write(array)
            return png.close(metadata)
    with atomic_write(path) as temporary:
        pil_image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        pil_image.save(temporary, **({"pnginfo": _png_text(metadata)} if metadata else {}))
    return path


def _png_text(metadata: dict[str, str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)
    return info


# Files as planes: alpha, gray and 16-bit depth kept, so a result can be written back like its source.


@dataclass
class DecodedImage:
    """An image file as float planes in [0, 1] plus what it takes to write a result back in the same kind."""

    rgb: Tensor
    """(3, H, W) float32; gray images are replicated to three channels."""
    alpha: Tensor | None
    """(1, H, W) float32, or None when the file has no transparency."""
    bit_depth: int
    """8 or 16: the precision of the source file's samples."""
    gray: bool
    """Whether the source is single-channel (L, LA, I;16, ...)."""


def read_image(source: str | Path | BinaryIO) -> DecodedImage:
    """Read an image file (a path, or a binary file object) with its alpha, gray-ness and bit depth: 16-bit PNGs
    and 16-bit gray at full precision.

    EXIF orientation is applied, except to 16-bit colour PNGs (their samples come from imagecodecs, not Pillow).
    """
    start = None if isinstance(source, (str, Path)) else source.tell()
    if start is None:
        with open(source, "rb") as file:
            head = file.read(_PNG_HEAD)
    else:
        head = source.read(_PNG_HEAD)
        source.seek(start)
    if _is_png16_colour(head):
        data = Path(source).read_bytes() if start is None else source.read()
        try:
            Image.open(io.BytesIO(data)).close()  # Pillow's header checks, its decompression-bomb limit included
            samples = imagecodecs.png_decode(data)
        except (imagecodecs.PngError, UnidentifiedImageError) as err:
            raise OSError(f"cannot decode the PNG {source}: {err}") from err
        return _planes(samples.astype(np.float32) / 65535.0, bit_depth=16)
    with Image.open(source) as image:
        image.load()  # decode now: a truncated or corrupt file fails here
        return decode_pil(image)


def decode_pil(image: Image.Image) -> DecodedImage:
    """A PIL image as planes: EXIF orientation applied; palette, CMYK and the other modes converted; gray (also
    16-bit / 32-bit integer and float gray) and alpha kept."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = _gray_peak(image.mode, array)
        return _planes((np.clip(array / peak, 0, 1)[..., None]).astype(np.float32), 8 if peak <= 255 else 16)
    has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    gray = image.mode in ("1", "L", "LA", "La")
    target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    array = np.asarray(image.convert(target), dtype=np.float32) / 255.0
    return _planes(array if array.ndim == 3 else array[..., None], bit_depth=8)


def read_rgb(source: str | Path | BinaryIO) -> Tensor:
    """Read an image file as a (3, H, W) float tensor in [0, 1] on the 256 levels of 8-bit RGB: :func:`read_image`
    with gray replicated, alpha dropped (not composited) and 16-bit samples rounded to 8 bits."""
    return rgb8(read_image(source))


def rgb8(image: DecodedImage) -> Tensor:
    """The colour planes of ``image`` rounded to the 256 levels of 8 bits, (3, H, W) float in [0, 1]."""
    return image.rgb.mul(255.0).round_().div_(255.0)


def _gray_peak(mode: str, array: np.ndarray) -> float:
    """The white level of a 16-bit / 32-bit integer or float gray image."""
    if mode.startswith("I;16"):
        return 65535.0  # 16-bit files: the full range, so a dark image stays dark
    if mode == "I":
        return 65535.0 if array.max(initial=0) > 255 else 255.0  # 32-bit int: 16-bit data or 8-bit data
    return 1.0 if array.max(initial=0) <= 1.0 else 255.0  # float images in [0, 1] or [0, 255]


def _planes(array: np.ndarray, bit_depth: int) -> DecodedImage:
    """(H, W, C) or (H, W) float in [0, 1] with C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA -> DecodedImage."""
    array = array if array.ndim == 3 else array[..., None]
    planes = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()  # (C, H, W)
    gray = planes.shape[0] in (1, 2)
    colour = planes[:1].expand(3, -1, -1).clone() if gray else planes[:3]
    alpha = planes[-1:] if planes.shape[0] in (2, 4) else None
    return DecodedImage(rgb=colour, alpha=alpha, bit_depth=bit_depth, gray=gray)


_PNG_HEAD = 33  # the signature, then the IHDR chunk, which the format puts first


def _is_png16_colour(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a 16-bit RGB, RGBA or gray + alpha PNG (16-bit gray alone Pillow
    reads fully, as ``I;16``)."""
    if len(head) < _PNG_HEAD or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    depth, colour_type = head[24], head[25]
    return depth == 16 and colour_type in (2, 4, 6)
