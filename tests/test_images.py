"""Tests of yonos.images and yonos.png_stream: reading every input kind, listing folders, atomic writes, PNGs from
other writers and the band writer read back by other decoders."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image

from yonos.images import list_images, read_image, read_rgb, save_image_atomic
from yonos.png_stream import PngRowWriter

EXIF_ORIENTATION = 0x0112


def random_rgb8(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 noise: every pixel distinct enough to catch any misplacement."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_rgb8(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 gradients: JPEG keeps these within a few levels."""
    y, x = np.mgrid[0:height, 0:width]
    channels = (x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (height + width - 2))
    return np.stack(channels, axis=-1).astype(np.uint8)


def as_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1], the reference for read_rgb."""
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def assert_rgb8(image: torch.Tensor, height: int, width: int) -> None:
    """The read_rgb contract: (3, H, W) float in [0, 1] on the 256 levels of an 8-bit image."""
    assert image.shape == (3, height, width)
    assert image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    levels = image * 255
    torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-4)


# Lossless and lossy file formats.


@pytest.mark.parametrize(
    ("suffix", "save_kwargs"),
    [(".png", {}), (".bmp", {}), (".tif", {}), (".tiff", {}), (".webp", {"lossless": True})],
)
def test_read_rgb_lossless_formats_round_trip_exactly(tmp_path: Path, suffix: str, save_kwargs: dict) -> None:
    array = random_rgb8(20, 28)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(array).save(path, **save_kwargs)

    image = read_rgb(path)

    assert_rgb8(image, 20, 28)
    torch.testing.assert_close(image, as_chw(array), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_read_rgb_jpeg_is_close_to_the_source(tmp_path: Path, suffix: str) -> None:
    array = smooth_rgb8(32, 48)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(array).save(path, quality=95)

    image = read_rgb(path)

    assert_rgb8(image, 32, 48)
    # JPEG at quality 95 on smooth gradients is within a few 8-bit levels; a channel swap or a transposed read
    # would be off by tens of levels.
    assert (image - as_chw(array)).abs().mean() < 3 / 255


# Colour modes.


def test_read_rgb_replicates_gray_to_three_channels(tmp_path: Path) -> None:
    gray = random_rgb8(16, 24)[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")

    image = read_rgb(tmp_path / "gray.png")

    assert_rgb8(image, 16, 24)
    expected = torch.from_numpy(gray).float() / 255.0
    for channel in image:
        torch.testing.assert_close(channel, expected, rtol=0, atol=0)


def test_read_rgb_drops_alpha_without_compositing(tmp_path: Path) -> None:
    rgb = random_rgb8(16, 24)
    alpha = np.zeros((16, 24, 1), dtype=np.uint8)  # fully transparent: compositing on any background would change RGB
    alpha[::2] = 255
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), mode="RGBA").save(tmp_path / "rgba.png")

    image = read_rgb(tmp_path / "rgba.png")

    assert_rgb8(image, 16, 24)
    torch.testing.assert_close(image, as_chw(rgb), rtol=0, atol=0)


@pytest.mark.parametrize("transparent_index", [None, 2])
def test_read_rgb_maps_palette_indices_to_colours(tmp_path: Path, transparent_index: int | None) -> None:
    palette = random_rgb8(1, 4, seed=1)[0]  # (4, 3): four colours
    indices = np.random.default_rng(2).integers(0, 4, (16, 24), dtype=np.uint8)
    image_p = Image.fromarray(indices, mode="P")
    image_p.putpalette(palette.flatten().tolist())
    save_kwargs = {} if transparent_index is None else {"transparency": transparent_index}
    image_p.save(tmp_path / "palette.png", **save_kwargs)
    with Image.open(tmp_path / "palette.png") as reopened:
        assert reopened.mode == "P"
        assert ("transparency" in reopened.info) == (transparent_index is not None)

    image = read_rgb(tmp_path / "palette.png")

    assert_rgb8(image, 16, 24)
    torch.testing.assert_close(image, as_chw(palette[indices]), rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_rgb_scales_16bit_gray_proportionally(tmp_path: Path, suffix: str) -> None:
    values = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / f"gray16{suffix}")
    with Image.open(tmp_path / f"gray16{suffix}") as reopened:
        assert reopened.mode.startswith("I")

    image = read_rgb(tmp_path / f"gray16{suffix}")

    assert_rgb8(image, 16, 16)
    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    for channel in image:
        # The nearest 8-bit level of v / 65535: within half a level.
        torch.testing.assert_close(channel, expected, rtol=0, atol=0.5 / 255 + 1e-6)
    assert image.min() == 0 and image.max() == 1


def test_read_rgb_keeps_dark_16bit_gray_dark(tmp_path: Path) -> None:
    values = np.linspace(0, 200, 16 * 16).round().astype(np.uint16).reshape(16, 16)  # at most 0.3 % of full scale
    Image.fromarray(values).save(tmp_path / "dark16.png")

    image = read_rgb(tmp_path / "dark16.png")

    expected = torch.from_numpy(values.astype(np.float32) / 65535.0)
    torch.testing.assert_close(image[0], expected, rtol=0, atol=0.5 / 255 + 1e-6)


CMYK_COLOURS = {  # CMYK ink -> RGB
    (0, 255, 255, 0): (255, 0, 0),
    (255, 0, 255, 0): (0, 255, 0),
    (255, 255, 0, 0): (0, 0, 255),
    (0, 0, 0, 0): (255, 255, 255),
    (0, 0, 0, 255): (0, 0, 0),
}


@pytest.mark.parametrize(("suffix", "tolerance"), [(".tif", 0.0), (".jpg", 8 / 255)])
def test_read_rgb_converts_cmyk(tmp_path: Path, suffix: str, tolerance: float) -> None:
    # Five 16 x 16 blocks of flat colour (block edges on the JPEG grid keep JPEG error small).
    cmyk = np.concatenate([np.full((16, 16, 4), ink, dtype=np.uint8) for ink in CMYK_COLOURS], axis=1)
    rgb = np.concatenate([np.full((16, 16, 3), colour, dtype=np.uint8) for colour in CMYK_COLOURS.values()], axis=1)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / f"cmyk{suffix}", quality=95)
    with Image.open(tmp_path / f"cmyk{suffix}") as reopened:
        assert reopened.mode == "CMYK"

    image = read_rgb(tmp_path / f"cmyk{suffix}")

    assert_rgb8(image, 16, 80)
    torch.testing.assert_close(image, as_chw(rgb), rtol=0, atol=tolerance)


@pytest.mark.parametrize(("orientation", "quarter_turns"), [(6, -1), (8, 1)])  # 6: 90 deg clockwise, 8: anticlockwise
def test_read_rgb_applies_exif_orientation(tmp_path: Path, orientation: int, quarter_turns: int) -> None:
    stored = np.full((16, 32, 3), 255, dtype=np.uint8)  # white, 16 high, 32 wide as stored
    stored[:8, :8] = (255, 0, 0)  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "rotated.jpg") as raw:  # PIL does not apply the orientation on open
        decoded = as_chw(np.asarray(raw.convert("RGB")))

    image = read_rgb(tmp_path / "rotated.jpg")

    assert_rgb8(image, 32, 16)
    torch.testing.assert_close(image, torch.rot90(decoded, quarter_turns, dims=(1, 2)), rtol=0, atol=0)
    # Clockwise moves the top-left corner to the top-right, anticlockwise to the bottom-left.
    corner = image[:, :8, -8:] if orientation == 6 else image[:, -8:, :8]
    red = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    assert (corner - red).abs().mean() < 0.05


# Listing folders.


def test_list_images_searches_subfolders_and_skips_non_images(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    good = [tmp_path / "top.png", tmp_path / "UPPER.JPG", tmp_path / "a" / "mid.webp"]
    good.append(tmp_path / "a" / "b" / "deep.bmp")
    for index, path in enumerate(good):
        file_format = Image.registered_extensions()[path.suffix.lower()]
        Image.fromarray(random_rgb8(16, 16, seed=index)).save(path, format=file_format)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "broken.png").write_bytes(os.urandom(64))

    images, skipped = list_images(tmp_path)

    assert images == sorted(good)
    assert sorted(skipped) == sorted([tmp_path / "notes.txt", tmp_path / "a" / "broken.png"])
    for path in images:
        assert_rgb8(read_rgb(path), 16, 16)


# Atomic writes.


def test_save_image_atomic_round_trips_at_8bit(tmp_path: Path) -> None:
    image = as_chw(random_rgb8(20, 28))

    written = save_image_atomic(image, tmp_path / "sub" / "out.png")

    assert written == tmp_path / "sub" / "out.png"
    torch.testing.assert_close(read_rgb(written), image, rtol=0, atol=0)
    assert sorted(p.name for p in written.parent.iterdir()) == ["out.png"]


def test_save_image_atomic_rounds_to_nearest_level(tmp_path: Path) -> None:
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1  # also out of range

    read_back = read_rgb(save_image_atomic(image, tmp_path / "out.png"))

    torch.testing.assert_close(read_back, image.clamp(0, 1), rtol=0, atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_save_image_atomic_refuses_non_finite(tmp_path: Path, bad_value: float) -> None:
    image = torch.rand(3, 16, 16)
    image[1, 3, 5] = bad_value

    with pytest.raises(ValueError, match="out.png"):
        save_image_atomic(image, tmp_path / "out.png")

    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def _failing_save(self: Image.Image, *args: object, **kwargs: object) -> None:
    raise OSError("disk full (simulated)")


def test_save_image_atomic_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image.Image, "save", _failing_save)

    with pytest.raises(OSError, match="disk full"):
        save_image_atomic(torch.rand(3, 16, 16), tmp_path / "out.png")

    assert list(tmp_path.iterdir()) == []


def test_save_image_atomic_failed_overwrite_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = as_chw(random_rgb8(16, 16))
    path = save_image_atomic(old, tmp_path / "out.png")
    monkeypatch.setattr(Image.Image, "save", _failing_save)

    with pytest.raises(OSError):
        save_image_atomic(torch.zeros(3, 16, 16), path)

    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    torch.testing.assert_close(read_rgb(path), old, rtol=0, atol=0)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_save_image_atomic_gives_usual_permissions(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        reference = tmp_path / "reference.txt"
        reference.write_text("created the ordinary way")
        written = save_image_atomic(torch.rand(3, 16, 16), tmp_path / "out.png")
        overwritten = save_image_atomic(torch.rand(3, 16, 16), written)
    finally:
        os.umask(previous)

    expected = reference.stat().st_mode & 0o777
    assert expected != 0o600
    assert written.stat().st_mode & 0o777 == expected
    assert overwritten.stat().st_mode & 0o777 == expected


# 16-bit PNGs from other writers, and the band writer read back by independent decoders.


def _png_bytes(header: bytes, raw_rows: bytes) -> bytes:
    """A PNG file around an IHDR body and the filtered scanlines (each prefixed with its filter type)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def _filtered(rows: np.ndarray, pixel_bytes: int, kinds: list[int]) -> bytes:
    """PNG scanline filtering of (H, row bytes) uint8 rows; row y uses filter ``kinds[y]`` (0 None ... 4 Paeth)."""
    raw = rows.astype(np.int64)
    out = []
    for y, kind in enumerate(kinds):
        up = raw[y - 1] if y > 0 else np.zeros_like(raw[y])
        left = np.concatenate([np.zeros(pixel_bytes, np.int64), raw[y, :-pixel_bytes]])
        up_left = np.concatenate([np.zeros(pixel_bytes, np.int64), up[:-pixel_bytes]])
        estimate = left + up - up_left
        to_left, to_up, to_up_left = abs(estimate - left), abs(estimate - up), abs(estimate - up_left)
        paeth = np.where((to_left <= to_up) & (to_left <= to_up_left), left, np.where(to_up <= to_up_left, up, up_left))
        predictor = [np.zeros_like(up), left, up, (left + up) // 2, paeth][kind]
        out.append(np.concatenate([[kind], (raw[y] - predictor) % 256]).astype(np.uint8).tobytes())
    return b"".join(out)


@pytest.mark.parametrize("kinds", ["paeth", "every filter"])
def test_read_image_decodes_filtered_16bit_rgb_png(tmp_path: Path, kinds: str) -> None:
    samples = (np.random.default_rng(4).integers(0, 65536, (12, 10, 3))).astype(np.uint16)
    samples[:6] = np.arange(10, dtype=np.uint16)[None, :, None] * 6000  # a smooth half: predictors matter there
    rows = samples.astype(">u2").view(np.uint8).reshape(12, -1)
    filters = [4] * 12 if kinds == "paeth" else [y % 5 for y in range(12)]
    header = struct.pack(">IIBBBBB", 10, 12, 16, 2, 0, 0, 0)
    (tmp_path / "paeth.png").write_bytes(_png_bytes(header, _filtered(rows, 6, filters)))

    image = read_image(tmp_path / "paeth.png")

    assert image.bit_depth == 16 and not image.gray and image.alpha is None
    expected = torch.from_numpy(samples.astype(np.float32) / 65535.0).permute(2, 0, 1)
    torch.testing.assert_close(image.rgb, expected, rtol=0, atol=0)


def test_read_image_reads_libpng_16bit_rgba_from_a_path_or_a_file_object(tmp_path: Path) -> None:
    samples = (np.random.default_rng(5).integers(0, 65536, (9, 14, 4))).astype(np.uint16)
    data = imagecodecs.png_encode(samples)  # libpng, adaptive filters
    (tmp_path / "rgba16.png").write_bytes(data)

    for image in (read_image(tmp_path / "rgba16.png"), read_image(io.BytesIO(data))):
        assert image.bit_depth == 16 and image.alpha is not None
        planes = torch.cat([image.rgb, image.alpha]).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(np.round(planes * 65535).astype(np.uint16), samples)
    eight_bit = read_rgb(tmp_path / "rgba16.png")  # rounded to the nearest 8-bit level, alpha dropped
    expected = torch.from_numpy(np.round(samples[..., :3] / 257.0).astype(np.float32) / 255.0).permute(2, 0, 1)
    torch.testing.assert_close(eight_bit, expected, rtol=0, atol=0)


def test_read_image_names_a_corrupt_16bit_png(tmp_path: Path) -> None:
    data = imagecodecs.png_encode(np.zeros((8, 8, 3), np.uint16))
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])

    with pytest.raises(OSError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_read_image_refuses_a_16bit_decompression_bomb(tmp_path: Path) -> None:
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 16, 2, 0, 0, 0)  # 10^10 pixels claimed
    (tmp_path / "bomb16.png").write_bytes(_png_bytes(header, b"\x00" * 64))

    with pytest.raises(Image.DecompressionBombError):
        read_image(tmp_path / "bomb16.png")


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_png_row_writer_is_read_back_by_libpng_and_pillow(tmp_path: Path, channels: int, bit_depth: int) -> None:
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    samples = np.random.default_rng(channels).integers(0, 2**bit_depth, (11, 7, channels)).astype(dtype)
    with PngRowWriter(tmp_path / "out.png", 11, 7, channels, bit_depth) as png:
        for top in range(0, 11, 4):  # bands of 4, 4 and 3 rows
            png.write(samples[top : top + 4])
        png.close({"yonos:scale": "4", "note": "ünïcode"})

    decoded = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    np.testing.assert_array_equal(decoded.reshape(samples.shape), samples)
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (7, 11) and image.text == {"yonos:scale": "4", "note": "ünïcode"}
        if bit_depth == 8:
            np.testing.assert_array_equal(np.asarray(image).reshape(samples.shape), samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_save_image_atomic_writes_16bit_with_text(tmp_path: Path) -> None:
    image = torch.rand(3, 10, 12, generator=torch.Generator().manual_seed(1))

    written = save_image_atomic(image, tmp_path / "out16.png", bit_depth=16, metadata={"yonos:seed": "7"})

    read_back = read_image(written)
    assert read_back.bit_depth == 16
    torch.testing.assert_close(read_back.rgb, image, rtol=0, atol=0.5 / 65535 + 1e-7)
    with Image.open(written) as opened:
        assert opened.text == {"yonos:seed": "7"}
