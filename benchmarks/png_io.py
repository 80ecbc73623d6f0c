"""Seconds to write and read one 16-bit RGB PNG with yonos.images: ``save_image_atomic(bit_depth=16)`` (the band
writer of ``yonos upscale``, Up filter, zlib level 6) and ``read_image`` (imagecodecs' libpng) of that file and of
files written by libpng with its adaptive filters (as photo editors write them) and with Paeth on every row (the
filter a pure-Python decoder is slowest on).

Run: ``python benchmarks/png_io.py [--size 2048] [--repeats 3]``. The image is a photo (scikit-image's astronaut)
upsampled bicubically to the size, with sensor-like noise (sigma 60 of 65535) so the low byte is not constant. Prints
a table (best of the repeats), then as the last line one JSON object. A benchmark, not a test: nothing here gates CI.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import torch
from PIL import Image
from skimage import data as sample_photos

from yonos.images import read_image, save_image_atomic


def photo16(size: int) -> np.ndarray:
    """(size, size, 3) uint16: a real photo, upsampled, plus Gaussian noise."""
    photo = Image.fromarray(sample_photos.astronaut()).resize((size, size), Image.Resampling.BICUBIC)
    noise = np.random.default_rng(0).normal(0, 60, (size, size, 3))
    return np.clip(np.asarray(photo, np.float64) * 257 + noise, 0, 65535).astype(np.uint16)


def best_of(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    samples = photo16(args.size)
    image = torch.from_numpy(samples.astype(np.float32) / 65535.0).permute(2, 0, 1)
    folder = Path(tempfile.mkdtemp(prefix="yonos-png-bench-"))
    ours, libpng, paeth = folder / "ours.png", folder / "libpng.png", folder / "paeth.png"
    libpng.write_bytes(imagecodecs.png_encode(samples, level=6))
    paeth.write_bytes(imagecodecs.png_encode(samples, level=6, filter=imagecodecs.PNG.FILTER.PAETH))

    write = best_of(args.repeats, lambda: save_image_atomic(image, ours, bit_depth=16))
    rows = {"write (save_image_atomic, 16 bit)": write}
    reads = {"that file": ours, "libpng's file": libpng, "libpng's, Paeth only": paeth}
    for name, path in ((f"read (read_image) of {what}", path) for what, path in reads.items()):
        decoded = read_image(path)
        levels = decoded.rgb.mul(65535).round().permute(1, 2, 0).numpy().astype(np.uint16)
        assert np.array_equal(levels, samples), f"{path.name} did not round-trip"
        rows[name] = best_of(args.repeats, lambda path=path: read_image(path))
    sizes = {name: path.stat().st_size / 2**20 for name, path in (("ours", ours), ("libpng", libpng))}

    print(f"{args.size}x{args.size} 16-bit RGB PNG, best of {args.repeats}, one thread; files: ours "
          f"{sizes['ours']:.1f} MiB, libpng level 6 {sizes['libpng']:.1f} MiB")
    print(f"{'step':<42} {'seconds':>8}")
    for name, seconds in rows.items():
        print(f"{name:<42} {seconds:>8.2f}")
    print(json.dumps({"size": args.size, "seconds": {k: round(v, 3) for k, v in rows.items()},
                      "file_mib": {k: round(v, 1) for k, v in sizes.items()}}))


if __name__ == "__main__":
    main()
