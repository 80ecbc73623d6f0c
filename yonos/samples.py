"""The embedded default data: the natural photos that ship inside the scikit-image wheel (colour photos and grey
photos and textures; PSNR-Y is measured on luma), written as PNG folders, and the held-out validation crops
(non-overlapping 128 px and 64 px tiles of the validation photos). The two views of the stereo motorcycle pair stay on one side.

No network: ``skimage.data`` reads these from its own package files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from yonos.commands import command_parser, parse
from yonos.images import save_image_atomic

TRAIN_PHOTOS = (
    "astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "retina", "motorcycle_left", "motorcycle_right",
    "brick", "grass", "camera", "moon", "coins", "cell",
)
VAL_PHOTOS = ("chelsea", "rocket", "gravel", "clock")
"""Held out from every training step (codec, prior and SR stages): two colour photos, a grey texture, a grey photo."""
TRAIN_CROPS_PER_PHOTO = 3
VAL_TILE_SIZES = {"val_crops": 128, "val_crops_64": 64}
"""Held-out tile folders and their tile sizes: the stages validate on ``val_crops``; the demo scores both."""


def _photo(name: str) -> np.ndarray:
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(data, name)()


def _resized(array: np.ndarray, max_side: int) -> torch.Tensor:
    image = Image.fromarray(array).convert("RGB")  # grey photos as three equal channels
    ratio = max_side / max(image.size)
    if ratio < 1:
        image = image.resize((round(image.width * ratio), round(image.height * ratio)), Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255.0


def tiles(image: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """The non-overlapping ``size`` tiles of (3, H, W) on a grid centred in the image, named ``r{row}c{column}``."""
    rows, columns = image.shape[-2] // size, image.shape[-1] // size
    top, left = (image.shape[-2] - rows * size) // 2, (image.shape[-1] - columns * size) // 2
    return {
        f"r{r}c{c}": image[:, top + r * size : top + (r + 1) * size, left + c * size : left + (c + 1) * size]
        for r in range(rows)
        for c in range(columns)
    }


def prepare_samples(out_dir: str | Path = "data/samples", max_side: int = 512, crop_size: int = 128) -> dict[str, list[Path]]:
    """Write ``out_dir/train``, ``out_dir/val`` (PNG, longest side <= max_side), ``out_dir/val_crops`` (every
    ``crop_size`` tile of the validation photos: more held-out crops than photos), ``out_dir/val_crops_64`` (every
    64 px tile of them) and ``out_dir/train_crops`` (a few tiles of each training photo: the curve development
    choices are made on); existing files are kept."""
    out_dir = Path(out_dir)
    sizes = {**VAL_TILE_SIZES, "val_crops": crop_size}
    written: dict[str, list[Path]] = {"train": [], "val": [], **{folder: [] for folder in sizes}}
    for split, names in (("train", TRAIN_PHOTOS), ("val", VAL_PHOTOS)):
        for name in names:
            path = out_dir / split / f"{name}.png"
            if not path.exists():
                save_image_atomic(_resized(_photo(name), max_side), path)
            written[split].append(path)
    for folder, size in sizes.items():
        for name in VAL_PHOTOS:
            for tile_name, tile in tiles(_read(out_dir / "val" / f"{name}.png"), size).items():
                path = out_dir / folder / f"{name}_{tile_name}.png"
                if not path.exists():
                    save_image_atomic(tile, path)
                written[folder].append(path)
    # Development decisions are measured on the training split: a few fixed tiles of each training photo.
    written["train_crops"] = []
    for name in TRAIN_PHOTOS:
        photo_tiles = list(tiles(_read(out_dir / "train" / f"{name}.png"), crop_size).items())
        for tile_name, tile in photo_tiles[:: max(1, len(photo_tiles) // TRAIN_CROPS_PER_PHOTO)][:TRAIN_CROPS_PER_PHOTO]:
            path = out_dir / "train_crops" / f"{name}_{tile_name}.png"
            if not path.exists():
                save_image_atomic(tile, path)
            written["train_crops"].append(path)
    return written


def _read(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1).float() / 255.0


def main(argv: list[str]) -> None:
    """Entry point of ``yonos prepare-samples``."""
    parser = command_parser("yonos prepare-samples", prepare_samples.__doc__)
    parser.add_argument("--out", default="data/samples", help="output folder")
    parser.add_argument("--max-side", type=int, default=512, help="longest image side in pixels")
    args = parse(parser, argv)
    written = prepare_samples(args.out, args.max_side)
    for split, paths in written.items():
        print(f"{split}: {len(paths)} images in {paths[0].parent}")
