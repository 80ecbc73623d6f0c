"""The SRDataModule: image folders or LitData shards in, HR + LR at every configured scale out, the LR images made on
the batch's device (datasets in ``yonos.folders``, the batch contract in ``yonos.batch``).

Degradations run in ``SRDataModule.on_after_batch_transfer``, after the HR batch reached the GPU; the
LightningModules never override that hook.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from yonos.batch import LATENT_FACTOR, SRBatch, crop_hr, lr_key
from yonos.degradations import RealESRGANConfig
from yonos.degradations.batch import degrade_bicubic, degrade_realesrgan
from yonos.degradations.config import Degradation, PresetName
from yonos.degradations.realesrgan import realesrgan_target
from yonos.folders import HRFolderDataset, LRFolderDataset, evaluation_dataset
from yonos.seeds import TrainingStream, validation_generator


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
        return evaluation_dataset(self.val_dir, self.scales[-1], self.val_hr_size, key="data.val_dir")

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

