"""Datasets (CPU side: decode, crop, flip) and the SRDataModule that makes LR images on the batch's device.

Degradations run in ``SRDataModule.on_after_batch_transfer``, after the HR batch reached the GPU; the
LightningModules never override that hook. The batch contract is :class:`SRBatch`.
"""

from __future__ import annotations

import functools
import math
import warnings
from pathlib import Path
from typing import Any, Literal, TypedDict

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from yonos.degradations import RealESRGANConfig
from yonos.degradations.batch import degrade_bicubic, degrade_realesrgan
from yonos.degradations.config import Degradation, PresetName
from yonos.degradations.realesrgan import realesrgan_target
from yonos.images import list_images, paired_subfolders, read_rgb
from yonos.seeds import TrainingStream, validation_generator

LATENT_FACTOR = 8  # the SD VAE's downsampling factor


class SRBatch(TypedDict, total=False):
    """What a batch holds. Training and validation batches leave the loader with ``hr``, ``index``, ``name``;
    ``SRDataModule.on_after_batch_transfer`` adds one ``lr_x{s}`` per configured scale on the batch's device
    (paired folders bring their own). Prediction batches hold ``lr`` and ``name`` only."""

    hr: Tensor  # (B, 3, H, W) float in [0, 1]
    index: Tensor  # (B,) long: position in the dataset; seeds the validation degradation of the sample
    name: list[str]  # file stems, for writing outputs
    valid: Tensor  # (B,) bool, distributed evaluation only: False on the duplicates that pad the last round
    lr_x2: Tensor  # (B, 3, H/2, W/2) in [0, 1] on 8-bit levels
    lr_x4: Tensor  # (B, 3, H/4, W/4)
    lr_x8: Tensor  # (B, 3, H/8, W/8)
    lr: Tensor  # (1, 3, h, w): prediction input of unknown scale


def lr_key(scale: int) -> str:
    """The batch key of the LR image at ``scale``."""
    return f"lr_x{scale}"


def pad_reflect_to(image: Tensor, size: int, mode: Literal["reflect", "symmetric"] = "reflect", unit: int = 1) -> Tensor:
    """Pad (C, H, W) by reflection so that both sides are at least ``size`` (repeats the reflection if needed).

    ``unit`` > 1 pads by multiples of ``unit`` pixels per side (the HR of a pair whose LR was padded by
    pad / unit, with ``symmetric`` so that HR and LR stay aligned).
    """
    height, width = image.shape[-2:]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h == 0 and pad_w == 0:
        return image
    top, left = (pad_h // unit // 2) * unit, (pad_w // unit // 2) * unit
    array = np.pad(image.numpy(), ((0, 0), (top, pad_h - top), (left, pad_w - left)), mode)
    return torch.from_numpy(array)


def crop_hr(image: Tensor, hr_size: int, generator: torch.Generator | None) -> Tensor:
    """An ``hr_size`` crop of (3, H, W), padded by reflection when smaller: position and horizontal flip drawn from
    ``generator``, or the centre crop without one."""
    image = pad_reflect_to(image, hr_size)  # (3, H, W)
    height, width = image.shape[-2:]
    if generator is not None:
        top = int(torch.randint(0, height - hr_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - hr_size + 1, (1,), generator=generator))
        flip = bool(torch.rand((), generator=generator) < 0.5)
    else:
        top, left, flip = (height - hr_size) // 2, (width - hr_size) // 2, False
    crop = image[:, top : top + hr_size, left : left + hr_size]
    return (crop.flip(-1) if flip else crop).contiguous()


def _require_folder(path: str | None, key: str) -> Path:
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
        self.root = _require_folder(str(root), key)
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
        root = _require_folder(str(root), key)
        hr_name, lr_name = paired_subfolders(root) or ("hr", "lr")
        hr_paths = {p.stem: p for p in _scan(_require_folder(str(root / hr_name), f"{key}/{hr_name}"), key)}
        lr_paths = {p.stem: p for p in _scan(_require_folder(str(root / lr_name), f"{key}/{lr_name}"), key)}
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
        self.paths = _scan(_require_folder(str(root), key), key)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> SRBatch:
        return {"lr": read_rgb(self.paths[index]), "name": self.paths[index].stem}


def data_parallel_layout(trainer: pl.Trainer | None) -> tuple[int, int]:
    """(number of data-parallel replicas, this process's replica): what Lightning gives its distributed samplers."""
    kwargs = getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None) or {}
    return int(kwargs.get("num_replicas", 1)), int(kwargs.get("rank", 0))


class PaddedEvaluationSampler(DistributedSampler):
    """One rank's share of an evaluation set: Lightning's interleaved split with the same padding (every rank runs
    the same number of batches, so a sharded model never waits on a rank that ran out), but each item says whether
    it is a padding duplicate, so that metrics can leave it out (see :class:`FlaggedEvaluationSet`)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        size = len(self.dataset)
        return iter([(position % size, position < size) for position in range(self.rank, self.total_size, self.num_replicas)])


class FlaggedEvaluationSet(Dataset):
    """An evaluation set read through :class:`PaddedEvaluationSampler`: each sample gains ``valid``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, bool]) -> SRBatch:
        index, valid = item
        return {**self.dataset[index], "valid": torch.tensor(valid)}


class SRDataModule(pl.LightningDataModule):
    """HR image folders in, HR + LR at every configured scale out, LR made on the batch's device."""

    def __init__(
        self,
        train_dir: str | None = "data/samples/train",
        val_dir: str | None = "data/samples/val",
        predict_dir: str | None = None,
        hr_size: int = 512,
        val_hr_size: int | None = None,
        scales: list[int] = [2],  # noqa: B006 - jsonargparse needs a literal default for --help
        degradation: Degradation = "bicubic",
        preset: PresetName = "stablesr",
        realesrgan: dict[str, Any] | None = None,
        shared_degradation: bool = True,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        seed: int = 0,
        train_repeat: int = 1,
        train_shards: str | None = None,
    ) -> None:
        """
        Args:
            train_dir: folder of HR training images (recursively); required for fit unless train_shards is set.
            val_dir: HR-only folder (LR synthesised, seeded per sample) or paired folder with hr/ + lr/.
            predict_dir: folder of LR images to super-resolve with ``predict``.
            hr_size: training crop side in pixels; a multiple of 8 x every scale.
            val_hr_size: validation centre-crop side (default: hr_size).
            scales: LR scales to produce, as batch keys lr_x{s}.
            degradation: how LR images are made from HR crops: torch's antialiased bicubic, MATLAB ``imresize``
                bicubic (``bicubic_matlab``, the classic tables' LR), or Real-ESRGAN's second-order pipeline on the
                batch's device (training batches then get the USM-sharpened HR as ``hr`` unless
                ``realesrgan: {usm_target: false}``).
            preset: Real-ESRGAN parameter preset (``stablesr``: StableSR's weakened version, the default of this
                project; ``realesrgan``: Real-ESRGAN x4plus).
            realesrgan: overrides of the preset, keys as in ``RealESRGANConfig`` (e.g. ``{stage1: {blur_sigma:
                [0.2, 2.0]}, use_usm: false}``).
            shared_degradation: with several scales, make all LR images from the SAME draw (kernels, noise, JPEG),
                differing only in the final resize (docs/method.md, "Stage 2: scale distillation"); false draws each
                scale independently.
            batch_size: per-device training batch size.
            val_batch_size: per-device validation batch size (default: batch_size).
            seed: base seed; training rank r draws from seed + r, validation sample i from (seed, i).
            train_repeat: how many times an epoch visits each training image (image folders only).
            train_shards: a LitData dataset of HR images written by ``yonos shard``: its folder or an ``s3://`` /
                ``gs://`` URL (needs the ``cluster`` extra); when set, train_dir is not read.
        """
        super().__init__()
        self.save_hyperparameters()
        scales = sorted(set(scales))
        if not scales or any(s < 1 for s in scales):
            raise ValueError(f"data.scales must be positive integers, got {scales}")
        for key, size in (("data.hr_size", hr_size), ("data.val_hr_size", val_hr_size)):
            if size is None:
                continue
            multiple = math.lcm(LATENT_FACTOR, *scales)
            if size <= 0 or size % multiple:
                raise ValueError(f"{key} = {size} must be a positive multiple of {multiple} (8 x lcm of data.scales {scales})")
        self.train_dir, self.val_dir, self.predict_dir = train_dir, val_dir, predict_dir
        self.train_shards = train_shards
        self.hr_size, self.val_hr_size = hr_size, val_hr_size or hr_size
        self.scales, self.degradation, self.shared_degradation = scales, degradation, shared_degradation
        self.realesrgan_config = None
        if degradation == "realesrgan":
            self.realesrgan_config = RealESRGANConfig.from_preset(preset, realesrgan, "data.realesrgan", "data.preset")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.seed = num_workers, seed
        if train_repeat < 1:
            raise ValueError(f"data.train_repeat must be >= 1, got {train_repeat}")
        self.train_repeat = train_repeat
        self.stream = TrainingStream(seed)  # the rank's training degradations
        self.train_set = self.val_set = self.predict_set = None

    # Datasets.

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_shards:
            from yonos.shards import open_shards  # LitData: the `cluster` extra

            if self.train_repeat > 1:
                warnings.warn("data.train_repeat applies to data.train_dir only: with data.train_shards an epoch is one pass")
            self.train_set = open_shards(self.train_shards, functools.partial(crop_hr, hr_size=self.hr_size), self.seed)
        elif stage == "fit":
            train_set = HRFolderDataset(self.train_dir, self.hr_size, train=True, key="data.train_dir")
            self.train_set = ConcatDataset([train_set] * self.train_repeat) if self.train_repeat > 1 else train_set
        if stage in ("validate", "test") or (stage == "fit" and self.val_dir):
            self.val_set = self._evaluation_set()
        if stage == "predict":
            self.predict_set = LRFolderDataset(self.predict_dir, key="data.predict_dir")

    def _evaluation_set(self) -> Dataset:
        folder = _require_folder(self.val_dir, "data.val_dir")
        if paired_subfolders(folder):
            return PairedFolderDataset(folder, self.scales[-1], self.val_hr_size, key="data.val_dir")
        return HRFolderDataset(folder, self.val_hr_size, train=False, key="data.val_dir")

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=shuffle and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        if not self.train_shards:
            return self._loader(self.train_set, self.batch_size, shuffle=True)
        from yonos.shards import shard_loader

        return shard_loader(self.train_set, self.batch_size, self.num_workers, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []  # no data.val_dir: training without validation
        replicas, rank = data_parallel_layout(getattr(self, "trainer", None))
        if replicas > 1:  # each sample scored once whatever the world size
            sampler = PaddedEvaluationSampler(self.val_set, replicas, rank)
            return self._loader(FlaggedEvaluationSet(self.val_set), self.val_batch_size, shuffle=False, sampler=sampler)
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, 1, shuffle=False)

    # Degradations on the device.

    def _rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.global_rank if trainer is not None else 0

    def degrade(self, hr: Tensor, index: Tensor | None, training: bool) -> dict[int, Tensor]:
        """LR images for every configured scale: training draws from the rank's stream, evaluation from the
        per-sample generators, so evaluation LR images do not depend on batch size or world size."""
        if self.degradation in ("bicubic", "bicubic_matlab"):
            return degrade_bicubic(hr, self.scales, matlab=self.degradation == "bicubic_matlab")
        if self.degradation == "realesrgan":
            if training or index is None:
                generators = [self.stream.generator(hr.device, self._rank())]
            else:
                generators = [validation_generator(self.seed, int(i), hr.device) for i in index]
            return degrade_realesrgan(hr, self.scales, self.realesrgan_config, generators, self.shared_degradation)
        raise ValueError(f"data.degradation: unknown degradation {self.degradation!r}")

    def on_after_batch_transfer(self, batch: SRBatch, dataloader_idx: int) -> SRBatch:
        if "hr" not in batch:
            return batch
        trainer = getattr(self, "trainer", None)
        training = bool(trainer is not None and trainer.training)
        missing = [s for s in self.scales if lr_key(s) not in batch]
        if missing:
            lr_images = self.degrade(batch["hr"], batch.get("index"), training)
            for scale in missing:
                batch[lr_key(scale)] = lr_images[scale]
            if training and self.realesrgan_config is not None:
                batch["hr"] = realesrgan_target(batch["hr"], self.realesrgan_config)
        return batch

    # The training stream's position, saved in checkpoints so a resumed run continues it.

    def state_dict(self) -> dict:
        state = self.stream.state()
        return {} if state is None else {"train_generator_state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stream.restore(state_dict.get("train_generator_state"))  # rebuilt from it at the next draw

