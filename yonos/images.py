"""Image file I/O: reading any common image file as 8-bit RGB (or with alpha, gray and 16-bit kept), listing
image folders, writing atomically (8 or 16 bits, PNG text metadata).

No training logic here; datasets, prediction writers and the CLI use these.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL image as (H, W, 3) uint8 RGB: EXIF orientation applied; gray, palette, RGBA (alpha dropped),
    CMYK and 16-bit / 32-bit integer and float modes converted."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(np.round(array / _gray_peak(image.mode, array) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _gray_peak(mode: str, array: np.ndarray) -> float:
    """The white level of a 16-bit / 32-bit integer or float gray image."""
    if mode.startswith("I;16"):
        return 65535.0  # 16-bit files: the full range, so a dark image stays dark
    if mode == "I":
        return 65535.0 if array.max(initial=0) > 255 else 255.0  # 32-bit int: 16-bit data or 8-bit data
    return 1.0 if array.max(initial=0) <= 1.0 else 255.0  # float images in [0, 1] or [0, 255]


def read_rgb(path: str | Path) -> Tensor:
    """Read an image file as a (3, H, W) float tensor in [0, 1]."""
    with Image.open(path) as image:
        array = to_rgb8(image)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(descriptor)
    try:
        if bit_depth == 16:
            Path(temporary).write_bytes(encode_png(array, metadata or {}))
        else:
            pil_image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            pil_image.save(temporary, **({"pnginfo": _png_text(metadata)} if metadata else {}))
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
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


def read_image(path: str | Path) -> DecodedImage:
    """Read an image file with its alpha, gray-ness and bit depth (16-bit PNG and 16-bit gray at full precision).

    EXIF orientation is applied, except to 16-bit colour PNGs (decoded here, as Pillow keeps only 8 bits of them;
    interlaced ones fall back to Pillow's 8 bits).
    """
    path = Path(path)
    with Image.open(path) as image:
        image.load()  # decode now: a truncated or corrupt file fails here
        if image.format == "PNG" and _is_png16_colour(path):
            return _planes(decode_png(path.read_bytes()).astype(np.float32) / 65535.0, bit_depth=16)
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


def _planes(array: np.ndarray, bit_depth: int) -> DecodedImage:
    """(H, W, C) float in [0, 1] with C = 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA -> DecodedImage."""
    planes = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()  # (C, H, W)
    gray = planes.shape[0] in (1, 2)
    colour = planes[:1].expand(3, -1, -1).clone() if gray else planes[:3]
    alpha = planes[-1:] if planes.shape[0] in (2, 4) else None
    return DecodedImage(rgb=colour, alpha=alpha, bit_depth=bit_depth, gray=gray)


# A minimal PNG codec for 16-bit colour, which Pillow reads as 8 bits and cannot write.

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_PNG_COLOUR_TYPE = {channels: colour_type for colour_type, channels in _PNG_CHANNELS.items()}


def _is_png16_colour(path: Path) -> bool:
    """A non-interlaced 16-bit RGB, RGBA or gray + alpha PNG (16-bit gray alone Pillow reads fully, as ``I;16``)."""
    with open(path, "rb") as file:
        head = file.read(33)  # signature, then the IHDR chunk, which the format puts first
    if len(head) < 33 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    depth, colour_type, interlace = head[24], head[25], head[28]
    return depth == 16 and colour_type in (2, 4, 6) and interlace == 0


def encode_png(array: np.ndarray, text: dict[str, str]) -> bytes:
    """(H, W, C) uint8 / uint16 array (C = 1, 2, 3, 4) -> PNG bytes (no filtering, zlib level 6, tEXt chunks)."""
    height, width, channels = array.shape
    depth = 16 if array.dtype == np.uint16 else 8
    rows = np.ascontiguousarray(array.astype(">u2" if depth == 16 else np.uint8)).view(np.uint8).reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, depth, _PNG_COLOUR_TYPE[channels], 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", header)]
    chunks += [_png_text_chunk(key, value) for key, value in text.items()]
    chunks += [_png_chunk(b"IDAT", zlib.compress(raw, 6)), _png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


def decode_png(data: bytes) -> np.ndarray:
    """Non-interlaced 8 / 16-bit gray, gray + alpha, RGB or RGBA PNG bytes -> (H, W, C) uint8 / uint16 array."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file")
    position, compressed, header = len(PNG_SIGNATURE), [], None
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    if header is None or header[3] not in _PNG_CHANNELS or header[2] not in (8, 16) or header[6] != 0:
        raise ValueError(f"unsupported PNG layout (IHDR {header})")
    width, height, depth, colour_type = header[:4]
    pixel_bytes = _PNG_CHANNELS[colour_type] * depth // 8
    filtered = np.frombuffer(zlib.decompress(b"".join(compressed)), np.uint8)
    rows = _unfilter(filtered.reshape(height, width * pixel_bytes + 1), pixel_bytes)  # (H, W * bytes)
    samples = rows.view(">u2").astype(np.uint16) if depth == 16 else rows
    return samples.reshape(height, width, _PNG_CHANNELS[colour_type])


def _unfilter(filtered: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """Undo the PNG row filters (None, Sub, Up, Average, Paeth); the last two run byte by byte."""
    height, row_bytes = filtered.shape[0], filtered.shape[1] - 1
    out = np.zeros((height, row_bytes), np.uint8)
    previous = np.zeros(row_bytes, np.int64)
    for y in range(height):
        kind, line = filtered[y, 0], filtered[y, 1:].astype(np.int64)
        if kind == 0:
            row = line
        elif kind == 1:
            row = np.cumsum(line.reshape(-1, pixel_bytes), axis=0).reshape(-1) % 256
        elif kind == 2:
            row = (line + previous) % 256
        elif kind in (3, 4):
            row = np.asarray(_unfilter_sequential(line.tolist(), previous.tolist(), pixel_bytes, kind), np.int64)
        else:
            raise ValueError(f"bad PNG filter type {kind} in row {y}")
        out[y], previous = row, row
    return out


def _unfilter_sequential(line: list[int], above: list[int], pixel_bytes: int, kind: int) -> list[int]:
    row = [0] * len(line)
    for i, value in enumerate(line):
        left = row[i - pixel_bytes] if i >= pixel_bytes else 0
        up, up_left = above[i], (above[i - pixel_bytes] if i >= pixel_bytes else 0)
        if kind == 3:
            predictor = (left + up) // 2
        else:  # Paeth
            estimate = left + up - up_left
            to_left, to_up, to_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
            if to_left <= to_up and to_left <= to_up_left:
                predictor = left
            else:
                predictor = up if to_up <= to_up_left else up_left
        row[i] = (value + predictor) & 255
    return row


def _png_text_chunk(key: str, value: str) -> bytes:
    """tEXt when the value is Latin-1, else iTXt (UTF-8), as Pillow does."""
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
