"""A PNG written band by band of rows: the whole image is never in memory, and the file appears complete or not at
all (a temporary beside the target, renamed into place by :meth:`PngRowWriter.close`, see :mod:`yonos.files`;
:meth:`abort` deletes it).

Rows are stored with PNG's "Up" filter (each byte minus the byte above; one numpy subtraction per band), which
compresses photos far better than no filter, and zlib level 6 as Pillow's default. The PNG libraries at hand write
whole arrays only (imagecodecs, OpenCV) or without filters and text chunks (pypng), hence these few lines; every
reader decodes the result (the tests read it back with imagecodecs and Pillow).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from types import TracebackType

import numpy as np

from yonos.files import publish, temporary_beside

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPE = {1: 0, 3: 2, 2: 4, 4: 6}  # samples per pixel -> PNG colour type (gray, RGB, gray + alpha, RGBA)
UP_FILTER = 2


class PngRowWriter:
    """``with PngRowWriter(path, height, width, channels, bit_depth) as png: png.write(rows); ...`` writes ``path``
    when the block ends normally and all ``height`` rows were written; on an exception nothing is left behind."""

    def __init__(self, path: str | Path, height: int, width: int, channels: int, bit_depth: int = 8) -> None:
        if channels not in _PNG_COLOUR_TYPE or bit_depth not in (8, 16):
            raise ValueError(f"cannot write {path}: {channels} channels at {bit_depth} bits")
        self.path, self.height, self.width = Path(path), height, width
        self.channels, self.bit_depth = channels, bit_depth
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = temporary_beside(self.path)
        self._file = self._temporary.open("wb")
        self._compressor = zlib.compressobj(6)
        self._previous = np.zeros((1, width * channels * bit_depth // 8), np.uint8)
        self.rows_written = 0
        header = struct.pack(">IIBBBBB", width, height, bit_depth, _PNG_COLOUR_TYPE[channels], 0, 0, 0)
        self._file.write(PNG_SIGNATURE + _png_chunk(b"IHDR", header))

    def write(self, rows: np.ndarray) -> None:
        """(n, W, C) uint8 (8-bit) or uint16 (16-bit) rows, the next ``n`` of the image."""
        expected = np.uint8 if self.bit_depth == 8 else np.uint16
        if rows.ndim != 3 or rows.shape[1:] != (self.width, self.channels) or rows.dtype != expected:
            raise ValueError(f"{self.path}: rows {rows.shape} {rows.dtype}; need (n, {self.width}, {self.channels})")
        if self.rows_written + len(rows) > self.height:
            raise ValueError(f"{self.path}: more than {self.height} rows")
        raw = np.ascontiguousarray(rows.astype(">u2") if self.bit_depth == 16 else rows).view(np.uint8)
        raw = raw.reshape(len(rows), -1)
        above = np.concatenate([self._previous, raw[:-1]])
        filtered = np.concatenate([np.full((len(rows), 1), UP_FILTER, np.uint8), raw - above], axis=1)  # mod 256
        self._previous = raw[-1:].copy()
        self._emit(self._compressor.compress(filtered.tobytes()))
        self.rows_written += len(rows)

    def close(self, text: dict[str, str] | None = None) -> Path:
        """Finish the file (``text`` as tEXt chunks, after the pixels, which PNG allows) and rename it into place."""
        if self.rows_written != self.height:
            raise ValueError(f"{self.path}: {self.rows_written} of {self.height} rows written")
        self._emit(self._compressor.flush())
        for key, value in (text or {}).items():
            self._file.write(_png_text_chunk(key, value))
        self._file.write(_png_chunk(b"IEND", b""))
        self._file.close()
        return publish(self._temporary, self.path)

    def abort(self) -> None:
        """Delete the temporary file; the target is untouched."""
        if not self._file.closed:
            self._file.close()
        self._temporary.unlink(missing_ok=True)

    def _emit(self, data: bytes) -> None:
        if data:
            self._file.write(_png_chunk(b"IDAT", data))

    def __enter__(self) -> PngRowWriter:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if kind is not None or not self._file.closed:
            self.abort()


def _png_text_chunk(key: str, value: str) -> bytes:
    """tEXt when the value is Latin-1, else iTXt (UTF-8), as Pillow does."""
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _png_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
