"""The image-folder datasets (CPU side: decode, crop, flip): HR crops for training and validation, paired HR/LR
folders, LR-only prediction inputs. Every error and warning names the config key that gave the folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from yonos.batch import SRBatch, crop_hr, lr_key, pad_reflect_to
from yonos.images import list_images, paired_subfolders, read_rgb


def require_folder(path: str | None, key: str) -> Path:
    if not path:
        raise ValueError(f"{key} is not set: give the folder of images")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{key}: folder {folder} does not exist")
    return folder


def _scan(folder: Path, key: str) -> list[Path]:
    """The readable images of a folder; one warning lists what was skipped; no images is an error."""
    images, skipped = list_images(folder)
    if skipped:
        shown = ", ".join(p.name for p in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        warnings.warn(f"{key}: skipped {len(skipped)} non-image or unreadable file(s) in {folder}: {shown}", stacklevel=3)
    if not images:
        raise ValueError(f"{key}: no readable images in {folder} (extensions png/jpg/jpeg/webp/bmp/tif)")
    return images


class HRFolderDataset(Dataset):
    """HR crops from a folder of images (searched recursively).

    Training: a random ``hr_size`` crop and a random horizontal flip, drawn from a per-worker generator seeded
    from ``torch.initial_seed()`` (which Lightning's ``seed_everything(workers=True)`` makes distinct per worker and
    rank). Evaluation: the centre crop. Images smaller than the crop are padded by reflection.
    """

    def __init__(self, root: str | Path, hr_size: int, train: bool, key: str = "data.train_dir") -> None:
        self.root = require_folder(str(root), key)
        self.paths = _scan(self.root, key)
        self.hr_size, self.train, self.key = hr_size, train, key
        self._generator: torch.Generator | None = None
        self._generator_seed: int | None = None
        self._failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self) -> torch.Generator:
        # Rebuilt when the process seed changes: a generator made in the main process before the DataLoader
        # workers started must not be inherited (every worker would draw the same crops).
        seed = torch.initial_seed()
        if self._generator is None or self._generator_seed != seed:
            self._generator, self._generator_seed = torch.Generator().manual_seed(seed), seed
        return self._generator

    def _read(self, index: int) -> tuple[int, Tensor]:
        """Decode image ``index``; an image whose pixels fail to decode is replaced by the next one."""
        for offset in range(len(self.paths)):
            candidate = (index + offset) % len(self.paths)
            try:
                return candidate, read_rgb(self.paths[candidate])
            except (OSError, ValueError) as err:
                if candidate not in self._failed:
                    self._failed.add(candidate)
                    warnings.warn(f"{self.key}: cannot decode {self.paths[candidate]} ({err}); using the next image")
        raise RuntimeError(f"{self.key}: no image in {self.root} could be decoded")

    def __getitem__(self, index: int) -> SRBatch:
        index, image = self._read(index)
        crop = crop_hr(image, self.hr_size, self._rng() if self.train else None)
        return {"hr": crop, "index": torch.tensor(index), "name": self.paths[index].stem}


class PairedFolderDataset(Dataset):
    """Validation/test pairs: ``hr/`` and ``lr/`` (or StableSR's ``gt/`` and ``lq/``) with matching file stems.

    With ``hr_size`` the pair is centre-cropped to it (and hr_size / scale on the LR); otherwise full images
    (use batch size 1 when sizes differ).
    """

    def __init__(self, root: str | Path, scale: int, hr_size: int | None, key: str = "data.val_dir") -> None:
        root = require_folder(str(root), key)
        hr_name, lr_name = paired_subfolders(root) or ("hr", "lr")
        hr_paths = {p.stem: p for p in _scan(require_folder(str(root / hr_name), f"{key}/{hr_name}"), key)}
        lr_paths = {p.stem: p for p in _scan(require_folder(str(root / lr_name), f"{key}/{lr_name}"), key)}
        unmatched = sorted(set(hr_paths) ^ set(lr_paths))
        if unmatched:
            raise ValueError(f"{key}: {len(unmatched)} file(s) in {root} have no partner in {hr_name}/ or {lr_name}/: {unmatched[:10]}")
        self.names = sorted(hr_paths)
        self.hr_paths, self.lr_paths = hr_paths, lr_paths
        self.scale, self.hr_size, self.key = scale, hr_size, key

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> SRBatch:
        name = self.names[index]
        hr, lr = read_rgb(self.hr_paths[name]), read_rgb(self.lr_paths[name])
        if tuple(hr.shape[-2:]) != (lr.shape[-2] * self.scale, lr.shape[-1] * self.scale):
            raise ValueError(
                f"{self.key}: {self.hr_paths[name].name} is {tuple(hr.shape[-2:])}, not {self.scale} x the LR "
                f"{tuple(lr.shape[-2:])} (data.scales[-1] = {self.scale})"
            )
        if self.hr_size is not None:
            # Symmetric padding by whole LR pixels keeps LR pixel i aligned with HR pixels [i*s, (i+1)*s).
            lr = pad_reflect_to(lr, self.hr_size // self.scale, mode="symmetric")
            hr = pad_reflect_to(hr, self.hr_size, mode="symmetric", unit=self.scale)
            top, left = (lr.shape[-2] - self.hr_size // self.scale) // 2, (lr.shape[-1] - self.hr_size // self.scale) // 2
            lr = lr[:, top : top + self.hr_size // self.scale, left : left + self.hr_size // self.scale]
            hr = hr[:, top * self.scale : top * self.scale + self.hr_size, left * self.scale : left * self.scale + self.hr_size]
        return {"hr": hr.contiguous(), lr_key(self.scale): lr.contiguous(), "index": torch.tensor(index), "name": name}


class LRFolderDataset(Dataset):
    """Prediction inputs: every image of a folder, full size, no HR."""

    def __init__(self, root: str | Path, key: str = "data.predict_dir") -> None:
        self.paths = _scan(require_folder(str(root), key), key)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> SRBatch:
        return {"lr": read_rgb(self.paths[index]), "name": self.paths[index].stem}


def evaluation_dataset(path: str | None, scale: int, hr_size: int | None, key: str) -> Dataset:
    """A validation or test folder: a paired one (``hr/`` + ``lr/`` or ``gt/`` + ``lq/``) gives its pairs at
    ``scale``, any other folder its HR images (centre crops of ``hr_size``), the LR to be made from them."""
    folder = require_folder(path, key)
    if paired_subfolders(folder):
        return PairedFolderDataset(folder, scale, hr_size, key=key)
    return HRFolderDataset(folder, hr_size, train=False, key=key)
