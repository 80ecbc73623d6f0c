"""Tests of the data path: image-folder datasets (scan, pad, crop), paired folders, SRDataModule and the
bicubic LR it makes."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from yonos.batch import lr_key
from yonos.data import SRDataModule
from yonos.degradations import bicubic_downsample
from yonos.folders import HRFolderDataset, PairedFolderDataset


def random_rgb8(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 noise: every pixel distinct enough to catch any misplacement."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_chw(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_folder(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """One random PNG per (H, W), named img0.png, img1.png, ..."""
    return [write_png(folder / f"img{i}.png", random_rgb8(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]


def box_average_pair(lr_height: int, lr_width: int, scale: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) uint8 pair where LR is exactly the scale x scale box-average of HR.

    Each HR block is its LR value plus a zero-mean +/- pattern, so the 8-bit average is exact.
    """
    rng = np.random.default_rng(seed)
    lr = rng.integers(0, 256, (lr_height, lr_width, 3)).astype(np.int64)
    hr = np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)
    room = np.minimum(hr, 255 - hr)
    delta = np.floor(rng.random(room.shape) * (room + 1)).astype(np.int64)
    delta[:, 1::2] = -delta[:, ::2]  # columns pair up within each block, so every block sums to zero
    hr = hr + delta
    assert (hr.reshape(lr_height, scale, lr_width, scale, 3).mean(axis=(1, 3)) == lr).all()
    return hr.astype(np.uint8), lr.astype(np.uint8)


def write_paired(root: Path, names: tuple[str, str], pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for stem, (hr, lr) in pairs.items():
        write_png(root / names[0] / f"{stem}.png", hr)
        write_png(root / names[1] / f"{stem}.png", lr)


def find_window(image: torch.Tensor, crop: torch.Tensor) -> list[tuple[int, int]]:
    """Every (top, left) where ``crop`` equals the window of ``image``."""
    size = crop.shape[-1]
    windows = image.unfold(1, size, 1).unfold(2, size, 1)  # (3, nH, nW, size, size)
    match = (windows == crop[:, None, None]).flatten(3).all(-1).all(0)
    return [tuple(p) for p in match.nonzero().tolist()]


def datamodule(**overrides: object) -> SRDataModule:
    """A small CPU datamodule: no workers, 32 px crops, x2."""
    kwargs = {"hr_size": 32, "scales": [2], "batch_size": 2, "num_workers": 0, "train_dir": None, "val_dir": None}
    kwargs.update(overrides)
    return SRDataModule(**kwargs)


def assert_lr_contract(batch: dict, scales: list[int]) -> None:
    hr = batch["hr"]
    for scale in scales:
        lr = batch[lr_key(scale)]
        assert lr.shape == (hr.shape[0], 3, hr.shape[2] // scale, hr.shape[3] // scale)
        assert lr.device == hr.device and lr.dtype == hr.dtype
        if lr.device.type != "meta":
            assert lr.min() >= 0 and lr.max() <= 1
            torch.testing.assert_close(lr * 255, (lr * 255).round(), rtol=0, atol=1e-4)


# Padding and cropping.


def test_small_image_is_padded_by_reflection_to_hr_size(tmp_path: Path) -> None:
    y, x = np.mgrid[0:20, 0:12]
    gradient = np.stack([x * 20, y * 12, (x + y) * 8], axis=-1).astype(np.uint8)  # 20 high, 12 wide
    write_png(tmp_path / "small.png", gradient)

    crop = HRFolderDataset(tmp_path, hr_size=32, train=False)[0]["hr"]

    assert crop.shape == (3, 32, 32)
    original = as_chw(gradient)
    # Mirror about the edge pixels (pad 6 + 6 rows, 10 + 10 columns), built with torch as an independent reference.
    mirrored = F.pad(original[None], (10, 10, 6, 6), mode="reflect")[0]
    torch.testing.assert_close(crop, mirrored, rtol=0, atol=0)
    torch.testing.assert_close(crop[:, 6:26, 10:22], original, rtol=0, atol=0)


@pytest.mark.parametrize(("height", "width"), [(5, 3), (1, 1), (40, 7)])
def test_tiny_images_are_padded_to_exactly_hr_size(tmp_path: Path, height: int, width: int) -> None:
    array = random_rgb8(height, width)
    write_png(tmp_path / "tiny.png", array)

    for train in (False, True):
        crop = HRFolderDataset(tmp_path, hr_size=32, train=train)[0]["hr"]
        assert crop.shape == (3, 32, 32)
        original_colours = set(map(tuple, array.reshape(-1, 3).tolist()))
        crop_colours = set(map(tuple, (crop * 255).round().long().permute(1, 2, 0).reshape(-1, 3).tolist()))
        assert crop_colours <= original_colours  # padding only repeats existing pixels


def test_evaluation_crop_is_the_centre_crop(tmp_path: Path) -> None:
    array = random_rgb8(41, 58)  # odd and even margins
    write_png(tmp_path / "image.png", array)
    dataset = HRFolderDataset(tmp_path, hr_size=16, train=False)

    first, second = dataset[0]["hr"], dataset[0]["hr"]

    (top, left), = find_window(as_chw(array), first)
    assert abs(top - (41 - 16 - top)) <= 1 and left == 58 - 16 - left  # equal margins, to the pixel
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_training_crops_are_random_windows_possibly_flipped(tmp_path: Path) -> None:
    array = random_rgb8(40, 48)
    write_png(tmp_path / "image.png", array)
    image = as_chw(array)
    torch.manual_seed(0)
    dataset = HRFolderDataset(tmp_path, hr_size=16, train=True)

    positions, flips = set(), set()
    for _ in range(16):
        crop = dataset[0]["hr"]
        assert crop.shape == (3, 16, 16)
        plain, flipped = find_window(image, crop), find_window(image, crop.flip(-1))
        assert len(plain) + len(flipped) == 1, "a crop must be exactly one window of the image, or its mirror"
        positions.update(plain + flipped)
        flips.add(bool(flipped))

    assert len(positions) > 1
    assert flips == {False, True}


def test_training_crops_are_reproducible_under_manual_seed(tmp_path: Path) -> None:
    write_folder(tmp_path, [(40, 48), (36, 64)])

    def draw(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        dataset = HRFolderDataset(tmp_path, hr_size=16, train=True)
        return [dataset[i % 2]["hr"] for i in range(6)]

    first, again, other = draw(1), draw(1), draw(2)

    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(first, other))


# Folder scanning.


def test_bad_files_are_skipped_with_one_warning(tmp_path: Path) -> None:
    good = write_folder(tmp_path / "nested" / "deeper", [(32, 32), (40, 36)])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x00garbage, not a PNG header" * 4)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = HRFolderDataset(tmp_path, hr_size=32, train=False, key="data.train_dir")

    assert sorted(dataset.paths) == sorted(good)  # nested subfolders are searched
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "data.train_dir" in message and "notes.txt" in message and "broken.png" in message
    assert re.search(r"\b2\b", message.replace(str(tmp_path), "")), "the warning gives the count"
    for index in range(len(dataset)):
        assert dataset[index]["hr"].shape == (3, 32, 32)


def decompression_bomb_png(path: Path, side: int = 100_000) -> Path:
    """A PNG whose header claims side x side pixels (10^10 for the default: beyond twice PIL's MAX_IMAGE_PIXELS)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_skipped_with_the_usual_warning(tmp_path: Path) -> None:
    good = write_folder(tmp_path, [(32, 32)])
    bomb = decompression_bomb_png(tmp_path / "bomb.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb).close()  # what PIL does with it

    with pytest.warns(UserWarning, match=r"data.train_dir: skipped 1 .*bomb.png"):
        dataset = HRFolderDataset(tmp_path, hr_size=32, train=True, key="data.train_dir")
    assert dataset.paths == good


def test_undecodable_image_is_replaced_by_the_next_one(tmp_path: Path) -> None:
    paths = write_folder(tmp_path, [(32, 32), (32, 32), (32, 32)])
    paths[1].write_bytes(paths[1].read_bytes()[:60])  # valid header, truncated pixel data
    dataset = HRFolderDataset(tmp_path, hr_size=32, train=False)
    assert len(dataset) == 3  # the header looks fine, so it is found only when decoding

    with pytest.warns(UserWarning, match="img1"):
        sample = dataset[1]

    assert sample["name"] == "img2"
    torch.testing.assert_close(sample["hr"], dataset[2]["hr"], rtol=0, atol=0)


@pytest.mark.parametrize("key", ["data.train_dir", "data.val_dir"])
def test_empty_folder_is_an_error_naming_key_and_path(tmp_path: Path, key: str) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    dm = datamodule(train_dir=str(folder), val_dir=str(folder))

    with pytest.raises(ValueError) as error:
        dm.setup("fit" if key == "data.train_dir" else "validate")

    assert key in str(error.value) and str(folder) in str(error.value)


def test_folder_of_only_non_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")

    with pytest.warns(UserWarning, match="notes.txt"), pytest.raises(ValueError, match="data.train_dir"):
        HRFolderDataset(tmp_path, hr_size=32, train=True, key="data.train_dir")


@pytest.mark.parametrize("key", ["data.train_dir", "data.val_dir"])
def test_missing_folder_is_an_error_naming_key_and_path(tmp_path: Path, key: str) -> None:
    folder = tmp_path / "does_not_exist"
    dm = datamodule(train_dir=str(folder), val_dir=str(folder))

    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit" if key == "data.train_dir" else "validate")

    assert key in str(error.value) and str(folder) in str(error.value)


# Paired folders.


@pytest.mark.parametrize("names", [("hr", "lr"), ("gt", "lq")])
def test_paired_layouts_are_read_as_pairs(tmp_path: Path, names: tuple[str, str]) -> None:
    pairs = {f"pair{i}": box_average_pair(16, 16, 2, seed=i) for i in range(2)}
    write_paired(tmp_path, names, pairs)
    dm = datamodule(val_dir=str(tmp_path), val_hr_size=32, val_batch_size=2)
    dm.setup("validate")
    assert isinstance(dm.val_set, PairedFolderDataset)

    batch = next(iter(dm.val_dataloader()))

    assert list(batch["name"]) == sorted(pairs)
    for i, stem in enumerate(batch["name"]):
        hr, lr = pairs[stem]
        torch.testing.assert_close(batch["hr"][i], as_chw(hr), rtol=0, atol=0)
        torch.testing.assert_close(batch["lr_x2"][i], as_chw(lr), rtol=0, atol=0)


def test_paired_unmatched_names_are_listed(tmp_path: Path) -> None:
    hr, lr = box_average_pair(8, 8, 2, seed=0)
    write_png(tmp_path / "hr" / "shared.png", hr)
    write_png(tmp_path / "lr" / "shared.png", lr)
    write_png(tmp_path / "hr" / "only_hr.png", hr)
    write_png(tmp_path / "lr" / "only_lr.png", lr)
    dm = datamodule(val_dir=str(tmp_path))

    with pytest.raises(ValueError) as error:
        dm.setup("validate")

    message = str(error.value)
    assert "data.val_dir" in message and "only_hr" in message and "only_lr" in message
    assert "shared" not in message.replace(str(tmp_path), "")


def test_paired_wrong_size_ratio_is_an_error(tmp_path: Path) -> None:
    write_png(tmp_path / "hr" / "pair.png", random_rgb8(32, 32))
    write_png(tmp_path / "lr" / "pair.png", random_rgb8(8, 8))  # x4, while the configured scale is x2
    dataset = PairedFolderDataset(tmp_path, scale=2, hr_size=None)

    with pytest.raises(ValueError) as error:
        dataset[0]

    assert "data.val_dir" in str(error.value) and "pair.png" in str(error.value)


@pytest.mark.parametrize(("scale", "lr_height", "lr_width"), [(2, 27, 35), (4, 11, 13)])
def test_paired_crop_keeps_alignment(tmp_path: Path, scale: int, lr_height: int, lr_width: int) -> None:
    # Odd LR margins: a centre crop computed separately on HR and LR would land half an LR pixel apart.
    write_paired(tmp_path, ("hr", "lr"), {"pair": box_average_pair(lr_height, lr_width, scale, seed=0)})
    hr_size = 32

    sample = PairedFolderDataset(tmp_path, scale=scale, hr_size=hr_size)[0]

    assert sample["hr"].shape == (3, hr_size, hr_size)
    assert sample[lr_key(scale)].shape == (3, hr_size // scale, hr_size // scale)
    torch.testing.assert_close(F.avg_pool2d(sample["hr"], scale), sample[lr_key(scale)], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("lr_height", "lr_width"), [(15, 10), (12, 16)])
def test_paired_crop_keeps_alignment_when_padding(tmp_path: Path, lr_height: int, lr_width: int) -> None:
    write_paired(tmp_path, ("hr", "lr"), {"pair": box_average_pair(lr_height, lr_width, 2, seed=0)})

    sample = PairedFolderDataset(tmp_path, scale=2, hr_size=32)[0]

    assert sample["hr"].shape == (3, 32, 32)
    torch.testing.assert_close(F.avg_pool2d(sample["hr"], 2), sample["lr_x2"], rtol=0, atol=1e-6)


# SRDataModule: configuration.


@pytest.mark.parametrize(("hr_size", "scales"), [(36, [2]), (40, [16]), (32, [3]), (32, [2, 3]), (0, [2]), (-16, [2])])
def test_invalid_hr_size_is_an_error_naming_key(hr_size: int, scales: list[int]) -> None:
    with pytest.raises(ValueError, match=r"data\.hr_size"):
        datamodule(hr_size=hr_size, scales=scales)


@pytest.mark.parametrize(("hr_size", "scales"), [(32, [2, 4]), (24, [3]), (48, [2, 3]), (64, [8, 2])])
def test_valid_hr_sizes_are_accepted(hr_size: int, scales: list[int]) -> None:
    assert datamodule(hr_size=hr_size, scales=scales).hr_size == hr_size


def test_invalid_val_hr_size_is_an_error_naming_key() -> None:
    with pytest.raises(ValueError, match=r"data\.val_hr_size"):
        datamodule(hr_size=32, val_hr_size=36, scales=[2])


@pytest.mark.parametrize("scales", [[], [0], [-2], [2, 0]])
def test_invalid_scales_are_an_error(scales: list[int]) -> None:
    with pytest.raises(ValueError, match=r"data\.scales"):
        datamodule(scales=scales)


def test_train_repeat_multiplies_the_epoch_length(tmp_path: Path) -> None:
    write_folder(tmp_path, [(32, 32)] * 3)
    folders = {"train_dir": str(tmp_path), "val_dir": str(tmp_path), "batch_size": 1}
    once, thrice = datamodule(**folders), datamodule(**folders, train_repeat=3)
    once.setup("fit")
    thrice.setup("fit")

    assert len(thrice.train_set) == 3 * len(once.train_set) == 9
    assert len(thrice.train_dataloader()) == 3 * len(once.train_dataloader())
    with pytest.raises(ValueError, match=r"data\.train_repeat"):
        datamodule(train_repeat=0)


# SRDataModule: LR images on the batch's device.


def test_on_after_batch_transfer_adds_lr_for_every_scale(tmp_path: Path) -> None:
    write_folder(tmp_path, [(40, 40), (48, 36)])
    dm = datamodule(train_dir=str(tmp_path), val_dir=str(tmp_path), hr_size=32, scales=[4, 2], batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    hr = batch["hr"].clone()

    batch = dm.on_after_batch_transfer(batch, 0)

    assert_lr_contract(batch, [2, 4])
    torch.testing.assert_close(batch["hr"], hr, rtol=0, atol=0)
    # Each LR is a downsampling of its own HR: on noise, bicubic and box averages still agree far better than
    # the box average of the other sample does (a mix-up of samples or of scales would fail this).
    for scale in (2, 4):
        lr, box = batch[lr_key(scale)], F.avg_pool2d(hr, scale)
        assert (lr - box).abs().mean() < (lr - box.flip(0)).abs().mean() / 2


def test_lr_is_made_on_the_batch_device() -> None:
    dm = datamodule(hr_size=32, scales=[2, 4])
    batch = {"hr": torch.empty(2, 3, 32, 32, device="meta"), "index": torch.arange(2), "name": ["a", "b"]}

    assert_lr_contract(dm.on_after_batch_transfer(batch, 0), [2, 4])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_lr_is_made_on_the_cuda_device() -> None:
    dm = datamodule(hr_size=32, scales=[2, 4])
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = {"hr": hr.cuda(), "index": torch.arange(2).cuda(), "name": ["a", "b"]}
    batch = dm.on_after_batch_transfer(batch, 0)

    assert_lr_contract(batch, [2, 4])
    for scale in (2, 4):
        # CUDA and CPU kernels may round a value to the neighbouring 8-bit level.
        expected = bicubic_downsample(hr, scale)
        torch.testing.assert_close(batch[lr_key(scale)].cpu(), expected, rtol=0, atol=1 / 255 + 1e-6)


def test_paired_batch_keeps_its_own_lr(tmp_path: Path) -> None:
    # The stored LR is noise, unrelated to the HR, so any re-synthesis would show.
    write_png(tmp_path / "hr" / "pair.png", random_rgb8(32, 32, seed=0))
    write_png(tmp_path / "lr" / "pair.png", random_rgb8(8, 8, seed=1))
    dm = datamodule(val_dir=str(tmp_path), hr_size=32, scales=[2, 4], val_batch_size=1)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))

    batch = dm.on_after_batch_transfer(batch, 0)

    torch.testing.assert_close(batch["lr_x4"][0], as_chw(random_rgb8(8, 8, seed=1)), rtol=0, atol=0)
    assert_lr_contract(batch, [2, 4])  # the missing x2 is synthesised from the HR


def test_validation_lr_is_identical_across_batch_sizes(tmp_path: Path) -> None:
    write_folder(tmp_path, [(48, 40), (32, 32), (40, 56), (64, 48), (36, 44)])

    def lr_per_sample(val_batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
        dm = datamodule(val_dir=str(tmp_path), hr_size=32, scales=[2, 4], val_batch_size=val_batch_size)
        dm.setup("validate")
        samples = {}
        for batch in dm.val_dataloader():
            batch = dm.on_after_batch_transfer(batch, 0)
            for i, name in enumerate(batch["name"]):
                samples[name] = {key: batch[key][i] for key in ("hr", "lr_x2", "lr_x4")}
        return samples

    single, triple = lr_per_sample(1), lr_per_sample(3)

    assert sorted(single) == sorted(triple) == [f"img{i}" for i in range(5)]
    for name in single:
        for key in ("hr", "lr_x2", "lr_x4"):
            torch.testing.assert_close(single[name][key], triple[name][key], rtol=0, atol=0)


# SRDataModule: the training generator in checkpoints.


def test_training_generator_state_round_trips() -> None:
    dm = datamodule(seed=7)
    generator = dm.stream.generator(torch.device("cpu"), 0)
    torch.rand(5, generator=generator)
    state = dm.state_dict()
    expected = torch.rand(5, generator=generator)

    restored = datamodule(seed=7)
    restored.load_state_dict(state)
    resumed = torch.rand(5, generator=restored.stream.generator(torch.device("cpu"), 0))

    torch.testing.assert_close(resumed, expected, rtol=0, atol=0)
    fresh = torch.rand(5, generator=datamodule(seed=7).stream.generator(torch.device("cpu"), 0))
    assert not torch.equal(fresh, expected)  # the state, not the seed, put the stream there


def test_state_dict_before_any_draw_is_harmless() -> None:
    dm = datamodule(seed=3)
    restored = datamodule(seed=3)
    restored.load_state_dict(dm.state_dict())

    a = torch.rand(5, generator=dm.stream.generator(torch.device("cpu"), 0))
    b = torch.rand(5, generator=restored.stream.generator(torch.device("cpu"), 0))

    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_load_state_dict_applies_to_an_existing_generator() -> None:
    dm = datamodule(seed=7)
    generator = dm.stream.generator(torch.device("cpu"), 0)
    state = dm.state_dict()
    expected = torch.rand(5, generator=generator)

    dm.load_state_dict(state)  # rewind, e.g. a second fit(ckpt_path=...) on the same datamodule
    rewound = torch.rand(5, generator=dm.stream.generator(torch.device("cpu"), 0))

    torch.testing.assert_close(rewound, expected, rtol=0, atol=0)


# Bicubic LR against a known reference.


@pytest.fixture(scope="module")
def astronaut_128() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut()).resize((128, 128), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_downsample_matches_pil_on_a_photo(astronaut_128: Image.Image, scale: int) -> None:
    hr = as_chw(np.asarray(astronaut_128))[None]  # (1, 3, 128, 128)
    size = 128 // scale
    reference = as_chw(np.asarray(astronaut_128.resize((size, size), Image.Resampling.BICUBIC)))[None]

    lr = bicubic_downsample(hr, scale)

    assert lr.shape == (1, 3, size, size)
    # Measured: 0.15 levels (x2) and 0.13 levels (x4) mean, at most 5 levels on sharp edges. The difference is
    # the kernel (torch a = -0.75, PIL a = -0.5) plus both sides rounding to 8 bits. The bound of 0.5 levels
    # leaves > 3x margin yet rejects the usual mistakes: no antialias (5.6 / 13.8 levels), a box filter
    # (2.3 / 3.3) or antialiased bilinear (3.4 / 4.1).
    bound = 0.5 / 255
    assert (lr - reference).abs().mean() < bound
    assert (lr - reference).abs().max() <= 10 / 255
    assert (F.avg_pool2d(hr, scale) - reference).abs().mean() > bound, "the bound must tell bicubic from a box filter"


@pytest.mark.parametrize(("height", "width", "scale"), [(30, 32, 4), (32, 30, 4), (33, 33, 2), (32, 32, 0)])
def test_bicubic_downsample_rejects_sizes_not_divisible_by_scale(height: int, width: int, scale: int) -> None:
    with pytest.raises(ValueError, match="scale"):
        bicubic_downsample(torch.rand(1, 3, height, width), scale)


def test_training_without_a_validation_folder(tmp_path: Path) -> None:
    write_folder(tmp_path / "train", [(32, 32)])
    dm = SRDataModule(train_dir=str(tmp_path / "train"), val_dir=None, hr_size=16, scales=[2], num_workers=0)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    with pytest.raises(ValueError, match="data.val_dir is not set"):
        dm.setup("validate")


def test_crop_generator_is_rebuilt_when_the_process_seed_changes(tmp_path: Path) -> None:
    """A DataLoader worker inherits the dataset after the main process drew from it; its seed differs."""
    write_folder(tmp_path / "train", [(64, 64)])
    dataset = HRFolderDataset(tmp_path / "train", hr_size=16, train=True)
    torch.manual_seed(1)
    dataset[0]  # the main process draws first
    torch.manual_seed(2)  # what a worker with another seed sees
    worker_crops = [dataset[0]["hr"] for _ in range(4)]
    fresh = HRFolderDataset(tmp_path / "train", hr_size=16, train=True)
    torch.manual_seed(2)
    assert all(torch.equal(a, fresh[0]["hr"]) for a in worker_crops)


@pytest.mark.parametrize(
    ("overrides", "preset", "message"),
    [
        ({"stage1": {"blur_sigma": [3.0, 0.2]}}, "stablesr", "data.realesrgan.stage1.blur_sigma: low 3.0 > high 0.2"),
        ({"stage2": {"second_blur_prob": 1.5}}, "stablesr", "data.realesrgan.stage2.second_blur_prob"),
        ({"final_sinc_prob": -1}, "realesrgan", "data.realesrgan.final_sinc_prob"),
        ({"stage1": {"blur_sigmas": [0.2, 1.0]}}, "stablesr", "data.realesrgan.stage1.blur_sigmas: unknown key"),
        (None, "strong", "data.preset: unknown preset 'strong'"),
    ],
)
def test_realesrgan_errors_name_the_datamodule_keys(overrides, preset, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        SRDataModule(degradation="realesrgan", preset=preset, realesrgan=overrides)
