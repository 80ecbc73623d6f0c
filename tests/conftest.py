"""Shared fixtures: tiny diffusers components, a locally saved SD-layout folder, the sample images.

Nothing here downloads: the hub is forced offline for the whole test session.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YONOS_OFFLINE", "1")

import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402

from yonos.models import UNET_PRESETS, LatentCodec  # noqa: E402


def tiny_unet(in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    """The `tiny` preset's shapes with SD's 4 input channels, as a pretrained SD UNet would have."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(in_channels=in_channels, out_channels=4, **UNET_PRESETS["tiny"])


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Stable-Diffusion-layout folder (unet/, vae/, scheduler/) of tiny random models, saved by diffusers."""
    root = tmp_path_factory.mktemp("tiny-sd")
    tiny_unet(4).save_pretrained(root / "unet")
    torch.manual_seed(1)
    LatentCodec.from_preset("tiny").vae.save_pretrained(root / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1).save_pretrained(
        root / "scheduler"
    )
    return root


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded default data (scikit-image photos), small for speed: data/samples layout."""
    from yonos.samples import prepare_samples

    root = tmp_path_factory.mktemp("samples")
    prepare_samples(root, max_side=160)
    return root



@pytest.fixture()
def make_tiny_unet():
    """Factory of tiny SD-shaped UNets: ``make_tiny_unet(in_channels=4, seed=0)``."""
    return tiny_unet


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny x2 TeacherModule checkpoint (two optimizer steps on random images)."""
    import lightning.pytorch as pl

    from yonos.degradations import bicubic_downsample
    from yonos.models import BackboneConfig
    from yonos.modules import TeacherModule

    root = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    module = TeacherModule(backbone=BackboneConfig(preset="tiny"), scale=2, lpips_net="none", log_images=0)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batches = [{"hr": images[i : i + 2], "lr_x2": bicubic_downsample(images[i : i + 2], 2)} for i in (0, 2)]
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=root,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    path = root / "teacher.ckpt"
    trainer.save_checkpoint(path)
    return path


def _import_reference(module: str):
    """A reference package's module, or a skip when it is not installed; with ``YONOS_REQUIRE_REFERENCES=1``
    (``make test-parity``) a missing package fails the test instead, so a broken install cannot pass by skipping."""
    if os.environ.get("YONOS_REQUIRE_REFERENCES") == "1":
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="session")
def ema_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, torch.Tensor]]]:
    """A tiny x2 teacher trained as every shipped yaml trains, with Lightning's EMAWeightAveraging (decay 0.5 here),
    saved by ModelCheckpoint at its last step; returns the checkpoint and the live denoiser weights after each of
    the three optimizer steps."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    from yonos.degradations import bicubic_downsample
    from yonos.models import BackboneConfig
    from yonos.modules import TeacherModule

    live: list[dict[str, torch.Tensor]] = []

    class RecordLiveWeights(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            live.append({k: v.detach().clone() for k, v in pl_module.denoiser.state_dict().items()})

    root = tmp_path_factory.mktemp("ema-teacher")
    torch.manual_seed(0)
    module = TeacherModule(
        backbone=BackboneConfig(preset="tiny"), scale=2, lpips_net="none", log_images=0,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
    )
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batches = [{"hr": images[i : i + 2], "lr_x2": bicubic_downsample(images[i : i + 2], 2)} for i in (0, 2, 4)]
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=3)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=[RecordLiveWeights(), EMAWeightAveraging(decay=0.5), checkpoint],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return root / "last.ckpt", live


@pytest.fixture(scope="session")
def import_basicsr():
    """``import_basicsr("basicsr.utils")``: a BasicSR 1.4.2 module, or a skip when BasicSR is not installed.

    BasicSR 1.4.2 imports ``torchvision.transforms.functional_tensor``, which newer torchvision removed; a test-only
    stand-in exposing ``rgb_to_grayscale`` is registered first.
    """

    def load(module: str):
        if "torchvision.transforms.functional_tensor" not in sys.modules:
            from torchvision.transforms import functional

            shim = types.ModuleType("torchvision.transforms.functional_tensor")
            shim.rgb_to_grayscale = functional.rgb_to_grayscale
            sys.modules["torchvision.transforms.functional_tensor"] = shim
        return _import_reference(module)

    return load


@pytest.fixture(scope="session")
def import_reference():
    """``import_reference("cleanfid.resize")``: a reference package's module, skipped or failed as above."""
    return _import_reference


@pytest.fixture(scope="session")
def pyiqa():
    """The pyiqa package, or a skip when it is not installed (a failure under ``YONOS_REQUIRE_REFERENCES=1``)."""
    return _import_reference("pyiqa")


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors gain nothing from threads, and OpenMP threads oversubscribed on a busy machine crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
