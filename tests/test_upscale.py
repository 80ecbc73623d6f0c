"""`yonos export` from a real TeacherModule checkpoint and `yonos upscale` on folders of awkward files."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from yonos import export, upscale
from yonos.images import read_image, save_image_atomic
from yonos.models import LatentCodec
from yonos.pipeline import YonosSRPipeline
from yonos.png_stream import PngRowWriter

SCALE = 2


@pytest.fixture(scope="module")
def model_dir(teacher_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from yonos.cli import main

    out = tmp_path_factory.mktemp("export") / "tiny-x2"
    main(["export", "--ckpt", str(teacher_ckpt), "--out", str(out)])  # through the `yonos` command's dispatch
    return out


def rgb8(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def run(*args: str | Path) -> int:
    """``yonos upscale ARGS``; the exit code (0 when main returns)."""
    try:
        upscale.main([str(arg) for arg in args])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# Export.


def test_exported_pipeline_samples_like_the_teacher_module(teacher_ckpt: Path, model_dir: Path):
    from yonos.modules import TeacherModule

    module = TeacherModule.load_from_checkpoint(teacher_ckpt).eval()
    pipe = YonosSRPipeline.from_pretrained(model_dir)
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))

    out = pipe(lr, generator=torch.Generator().manual_seed(7), output_type="pt").images

    torch.testing.assert_close(out, module.sample(lr, seeds=[7]), rtol=0, atol=1e-6)
    assert pipe.config.scale == SCALE and pipe.scheduler.config.prediction_type == module.prediction_type


def test_export_never_replaces_a_folder_unasked_and_never_leaves_a_partial_one(
    teacher_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit):
        export.main(["--ckpt", str(teacher_ckpt), "--out", str(out)])
    assert all_files(tmp_path) == ["model/keep.txt"]

    def crash(self: YonosSRPipeline, folder: Path, **kwargs: object) -> None:
        (Path(folder) / "model_index.json").write_text("{}")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(YonosSRPipeline, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        export.export_pipeline(teacher_ckpt, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"] and all_files(out) == ["keep.txt"]

    monkeypatch.undo()
    export.export_pipeline(teacher_ckpt, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or set-aside folder left


# Upscale.


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    """A corrupt file, RGBA, 16-bit RGB, 16-bit gray, 8-bit gray and a JPEG in a subfolder, plus a non-image."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    rgba = np.concatenate([rgb8(16, 16), np.linspace(0, 255, 16 * 16).reshape(16, 16, 1).astype(np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    save_image_atomic(torch.from_numpy(rgb8(16, 16, 1)).permute(2, 0, 1) / 255.0, folder / "rgb16.png", bit_depth=16)
    Image.fromarray(np.linspace(0, 65535, 16 * 20).astype(np.uint16).reshape(16, 20)).save(folder / "gray16.png")
    Image.fromarray(rgb8(20, 16, 2)[..., 0], mode="L").save(folder / "gray.png")
    Image.fromarray(rgb8(16, 16, 3)).save(folder / "sub" / "photo.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_upscale_folder_keeps_alpha_depth_and_gray_and_reports_the_corrupt_file(
    model_dir: Path, mixed_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    out = tmp_path / "out"

    code = run(mixed_folder, "-o", out, "--model", model_dir, "--tile-size", "32", "--tile-overlap", "8")

    printed = capsys.readouterr()
    assert code == 1
    assert "broken.png" in printed.out + printed.err
    assert "5 written, 0 skipped (already exist), 1 failed, of 6 inputs" in printed.out
    assert all_files(out) == ["gray.png", "gray16.png", "rgb16.png", "rgba.png", "sub/photo.png"]
    with Image.open(out / "rgba.png") as image:
        assert image.mode == "RGBA" and image.size == (32, 32)
        assert image.text["yonos:color_fix"] == "wavelet" and image.text["yonos:scale"] == "2"
        source_alpha = torch.from_numpy(np.asarray(Image.open(mixed_folder / "rgba.png"))[..., 3].astype(np.float32))
        expected = F.interpolate(source_alpha[None, None] / 255, size=(32, 32), mode="bicubic").clamp(0, 1)[0, 0]
        alpha = torch.from_numpy(np.asarray(image)[..., 3].astype(np.float32)) / 255
        torch.testing.assert_close(alpha, expected, rtol=0, atol=0.5 / 255 + 1e-6)
    rgb16 = imagecodecs.png_decode((out / "rgb16.png").read_bytes())
    assert rgb16.dtype == np.uint16 and rgb16.shape == (32, 32, 3)
    assert read_image(out / "rgb16.png").bit_depth == 16
    with Image.open(out / "gray16.png") as image:
        assert image.mode.startswith("I;16") and image.size == (40, 32)
    with Image.open(out / "gray.png") as image:
        assert image.mode == "L" and image.size == (32, 40) and "yonos:color_fix" in image.text
    with Image.open(out / "sub" / "photo.png") as image:
        assert image.mode == "RGB" and image.size == (32, 32)


def test_upscale_refuses_to_write_over_its_inputs(model_dir: Path, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb8(16, 16)).save(folder / "a.png")

    assert run(folder, "-o", folder, "--model", model_dir) == 2  # the output folder is the input folder
    assert run(folder / "a.png", "-o", folder, "--model", model_dir) == 2  # an output path is an input
    assert all_files(folder) == ["a.png"]


def test_existing_outputs_are_skipped_unless_overwrite(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    source = tmp_path / "a.png"
    Image.fromarray(rgb8(16, 16)).save(source)
    out = tmp_path / "out"
    assert run(source, "-o", out, "--model", model_dir, "--color-fix", "none") == 0
    first = (out / "a.png").read_bytes()
    os.utime(out / "a.png", (1, 1))

    assert run(source, "-o", out, "--model", model_dir, "--color-fix", "adain") == 0
    assert "1 skipped" in capsys.readouterr().out and (out / "a.png").stat().st_mtime == 1

    assert run(source, "-o", out, "--model", model_dir, "--color-fix", "adain", "--overwrite") == 0
    assert (out / "a.png").read_bytes() != first
    with Image.open(out / "a.png") as image:
        assert image.text["yonos:color_fix"] == "adain" and image.text["yonos:seed"] == "42"


def test_interrupted_run_leaves_no_partial_file_and_a_rerun_resumes(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(rgb8(16, 16, seed=ord(name))).save(folder / f"{name}.png")
    real_write, files = PngRowWriter.write, []

    def killed_during_second_file(self: PngRowWriter, rows: np.ndarray) -> None:
        files.append(self.path) if self.path not in files else None
        real_write(self, rows)  # some bytes reach the disk, then Ctrl-C arrives
        if len(files) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(PngRowWriter, "write", killed_during_second_file)
    assert run(folder, "-o", out, "--model", model_dir) == 130
    assert all_files(out) == ["a.png"]  # b never appears half-written; no temporary is left behind
    monkeypatch.undo()
    a_written = (out / "a.png").stat().st_mtime_ns

    assert run(folder, "-o", out, "--model", model_dir) == 0

    assert "2 written, 1 skipped" in capsys.readouterr().out
    assert all_files(out) == ["a.png", "b.png", "c.png"] and (out / "a.png").stat().st_mtime_ns == a_written
    with Image.open(out / "b.png") as image:
        image.load()  # a complete file


def test_nan_output_is_reported_and_nothing_is_written(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    source = tmp_path / "a.png"
    Image.fromarray(rgb8(16, 16)).save(source)
    real_decode = LatentCodec.decode
    monkeypatch.setattr(LatentCodec, "decode", lambda self, z: real_decode(self, z) * float("nan"))

    assert run(source, "-o", tmp_path / "out", "--model", model_dir) == 1

    printed = capsys.readouterr()
    assert f"FAILED {source}: NonFiniteOutputError" in printed.out + printed.err
    assert not (tmp_path / "out").exists() or all_files(tmp_path / "out") == []


def test_exported_folder_has_a_model_card_with_the_training_record(model_dir: Path):
    card = (model_dir / "README.md").read_text()

    assert card.startswith("---\nlibrary_name: diffusers\npipeline_tag: image-to-image\n")
    assert "optimizer steps: 2" in card and "trained scale: x2" in card and "`teacher.ckpt`" in card
    assert "import yonos" in card and "pip install yonos" in card


def test_ctrl_c_during_a_large_image_stops_at_once_and_leaves_no_file(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    source, out = tmp_path / "big.png", tmp_path / "out"
    Image.fromarray(rgb8(48, 40)).save(source)  # 96 x 80 output in 32 px tiles: several bands
    real_write, bands = PngRowWriter.write, []

    def sigint_after_first_band(self: PngRowWriter, rows: np.ndarray) -> None:
        real_write(self, rows)
        bands.append(len(rows))
        if len(bands) == 1:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C delivers; Python raises KeyboardInterrupt next

    monkeypatch.setattr(PngRowWriter, "write", sigint_after_first_band)

    code = run(source, "-o", out, "--model", model_dir, "--tile-size", "32", "--tile-overlap", "8")

    assert code == 130 and len(bands) == 1 and bands[0] < 96  # stopped after the first band, not at the end
    assert not out.exists() or all_files(out) == []  # no partial file, no temporary
