"""Test sets for ``yonos evaluate``: paired folders (StableSR's gt/+lq/ or hr/+lr/) and HR-only folders whose LR
images are synthesised once, with a fixed seed, into a cache keyed by the degradation settings.

Model loading, metrics and reports live beside this file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor
from tqdm import tqdm

from yonos.degradations import RealESRGANConfig
from yonos.degradations.batch import degrade_bicubic, degrade_realesrgan
from yonos.degradations.config import Degradation, PresetName
from yonos.files import write_text_atomic
from yonos.folders import PairedFolderDataset
from yonos.images import list_images, paired_subfolders, read_rgb, save_image_atomic
from yonos.seeds import validation_generator

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes of one-channel images
CACHE_SETTINGS = "settings.json"


@dataclass(frozen=True)
class EvalPair:
    """One test image: its name (relative path without suffix), HR file and LR file."""

    name: str
    hr_path: Path
    lr_path: Path


@dataclass
class EvalSet:
    """The images of a test set, the scale, and how the LR images were obtained (for the summary)."""

    pairs: list[EvalPair]
    scale: int
    source: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A hash of the LR inputs (names, sizes, modification times): SR images made from other inputs differ."""
        listing = [(p.name, p.lr_path.stat().st_size, p.lr_path.stat().st_mtime_ns) for p in self.pairs]
        return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def modcrop(image: Tensor, scale: int) -> Tensor:
    """Crop the bottom/right edge so that H and W are multiples of ``scale`` (BasicSR's ``mod_crop``)."""
    height, width = image.shape[-2:]
    return image[..., : height - height % scale, : width - width % scale]


def read_hr(pair: EvalPair, scale: int) -> Tensor:
    """The HR image of a pair as the metrics see it, (1, 3, H, W) in [0, 1], cropped to a multiple of ``scale``."""
    return modcrop(read_rgb(pair.hr_path), scale)[None]


def is_paired(root: Path) -> bool:
    """Whether ``root`` holds hr/+lr/ or gt/+lq/ subfolders (yonos.images.paired_subfolders)."""
    return paired_subfolders(root) is not None


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.height, image.width


def load_paired(root: Path, scale: int | None) -> EvalSet:
    """A paired folder; names must match between the two subfolders (an error lists those that do not)."""
    probe = PairedFolderDataset(root, scale or 1, None, key="--data")  # lists and matches names; scale checked below
    pairs = [EvalPair(name, probe.hr_paths[name], probe.lr_paths[name]) for name in probe.names]
    if scale is None:  # the HR / LR height ratio of the first pair; every pair is checked against it below
        scale = _image_size(pairs[0].hr_path)[0] // _image_size(pairs[0].lr_path)[0]
    wrong = [p.name for p in pairs if _image_size(p.hr_path) != tuple(s * scale for s in _image_size(p.lr_path))]
    if wrong:
        raise ValueError(f"--data: {len(wrong)} pair(s) in {root} are not HR = {scale} x LR in size: {wrong[:10]}")
    hr_name, lr_name = paired_subfolders(root) or ("hr", "lr")
    return EvalSet(pairs, scale, {"layout": f"paired ({hr_name}/ + {lr_name}/)", "root": str(root)})


def _hr_listing(root: Path, exclude: tuple[Path, ...] = ()) -> list[tuple[str, Path]]:
    """(name, path) of the HR images under ``root``, leaving out folders in ``exclude`` (results inside --data)."""
    skip = [folder.resolve() for folder in exclude]
    images = [p for p in list_images(root)[0] if not any(p.resolve().is_relative_to(folder) for folder in skip)]
    if not images:
        raise ValueError(f"--data: no readable images in {root}")
    return [(path.relative_to(root).with_suffix("").as_posix(), path) for path in images]


def cache_key(settings: dict[str, Any]) -> str:
    """The cache folder name of an LR synthesis: readable settings plus a hash of everything that changes pixels."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    preset = f"-{settings['preset']}" if settings["degradation"] == "realesrgan" else ""
    return f"{settings['degradation']}{preset}_x{settings['scale']}_seed{settings['seed']}_{digest}"


def synthesise_lr(
    hr: Tensor, scale: int, degradation: Degradation, config: RealESRGANConfig | None, seed: int, index: int
) -> Tensor:
    """The LR image (1, 3, H/s, W/s) of HR image ``index``: bicubic (torch's or MATLAB's), or Real-ESRGAN drawn from
    (seed, index) only."""
    if degradation in ("bicubic", "bicubic_matlab"):
        return degrade_bicubic(hr, [scale], matlab=degradation == "bicubic_matlab")[scale]
    generator = validation_generator(seed, index, hr.device)
    return degrade_realesrgan(hr, [scale], config, [generator], shared=True)[scale]


def load_hr_only(
    root: Path,
    scale: int,
    cache_dir: Path,
    degradation: Degradation = "bicubic",
    preset: PresetName = "stablesr",
    seed: int = 0,
    exclude: tuple[Path, ...] = (),
) -> EvalSet:
    """An HR-only folder: LR images synthesised once into ``cache_dir/<key>/lr`` and reused by every later run.

    The key covers the degradation, its full parameter set, the scale, the seed and the HR files (names and sizes),
    so a changed setting or folder gets its own cache and every model sees the same LR images.
    """
    listing = _hr_listing(root, (cache_dir, *exclude))
    config = RealESRGANConfig.from_preset(preset) if degradation == "realesrgan" else None
    settings = {
        "degradation": degradation,
        "preset": preset if config is not None else None,
        "realesrgan": asdict(config) if config is not None else None,
        "scale": scale,
        "seed": seed,
        "hr_files": [(name, path.stat().st_size) for name, path in listing],
    }
    folder = cache_dir / cache_key(settings)
    pairs = [EvalPair(name, path, folder / "lr" / f"{name}.png") for name, path in listing]
    todo = [(index, pair) for index, pair in enumerate(pairs) if not pair.lr_path.is_file()]
    for index, pair in tqdm(todo, desc=f"LR {degradation} x{scale}", unit="img", disable=not todo):
        hr = read_hr(pair, scale)
        save_image_atomic(synthesise_lr(hr, scale, degradation, config, seed, index)[0], pair.lr_path)
    if todo or not (folder / CACHE_SETTINGS).is_file():
        write_json(folder / CACHE_SETTINGS, {**settings, "hr_root": str(root)})
    source = {
        "layout": "HR only, LR synthesised",
        "root": str(root),
        "degradation": degradation,
        "scale": scale,
        "degradation_seed": seed,
        "lr_cache": str(folder),
    }
    if config is not None:
        source["preset"] = preset
    return EvalSet(pairs, scale, source)


def load_eval_set(
    root: str | Path,
    scale: int | None,
    cache_dir: str | Path,
    degradation: Degradation = "bicubic",
    preset: PresetName = "stablesr",
    seed: int = 0,
    default_scale: int | None = None,
    exclude: tuple[Path, ...] = (),
) -> EvalSet:
    """A paired folder as it is (scale: ``scale``, else its HR/LR size ratio), or an HR-only folder with cached
    synthetic LR images (scale: ``scale``, else ``default_scale``, the models' training scale); images under
    ``exclude`` (a results folder inside the data folder) are not test images."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data: folder {root} does not exist")
    if is_paired(root):
        return load_paired(root, scale)
    scale = scale or default_scale
    if scale is None:
        raise ValueError(f"--data: {root} is HR only (no gt/+lq/ or hr/+lr/) and the models disagree on the scale; give --scale")
    return load_hr_only(root, scale, Path(cache_dir).expanduser(), degradation, preset, seed, exclude)


def hr_is_gray(path: Path) -> bool:
    """Whether an HR file is a one-channel (gray) image, which PSNR/SSIM-Y may score on its own values."""
    with Image.open(path) as image:
        return image.mode in GRAY_MODES


def list_test_names(root: str | Path, scale: int | None, exclude: tuple[Path, ...] = ()) -> tuple[list[str], bool]:
    """(names of the test images, whether the folder is HR only), from the file system alone: a paired folder is
    matched and size-checked here, an HR-only one listed, so bad ``--data`` fails before any model loads."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data: folder {root} does not exist")
    if is_paired(root):
        return [pair.name for pair in load_paired(root, scale).pairs], False
    return [name for name, _ in _hr_listing(root, exclude)], True


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (:func:`yonos.files.atomic_write`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
