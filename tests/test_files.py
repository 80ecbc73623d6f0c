"""Tests of yonos.files: a target appears complete or not at all, and every writer in the package goes through it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from yonos.files import atomic_folder, atomic_write, temporary_beside, write_text_atomic

PACKAGE = Path(__file__).resolve().parents[1] / "yonos"


def test_atomic_write_publishes_only_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.csv"

    with atomic_write(target) as temporary:
        temporary.write_text("a,b\n")
        assert not target.exists()  # nothing under the target's name while writing
        assert temporary.parent == target.parent and temporary.suffix == ".csv" and temporary.name.startswith(".")

    assert target.read_text() == "a,b\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.csv"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_the_old_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    target = write_text_atomic(tmp_path / "summary.md", "old")

    with pytest.raises(type(error)), atomic_write(target) as temporary:
        temporary.write_text("half of the new")
        raise error

    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"]


def test_failure_before_anything_existed_leaves_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_write(tmp_path / "out.json") as temporary:
        temporary.write_text("{")
        raise RuntimeError("serialiser failed")

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_published_file_has_the_mode_an_ordinary_open_gives(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        ordinary = tmp_path / "ordinary.txt"
        ordinary.write_text("x")
        published = write_text_atomic(tmp_path / "published.txt", "x")
        assert oct(temporary_beside(tmp_path / "t.txt").stat().st_mode & 0o777) == oct(0o600)  # mkstemp's own mode
    finally:
        os.umask(previous)

    assert published.stat().st_mode & 0o777 == ordinary.stat().st_mode & 0o777


def test_the_package_replaces_files_in_one_place() -> None:
    """``os.replace`` appears only in yonos/files.py: every other writer goes through it."""
    callers = sorted(
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"\bos\.replace\(", path.read_text())
    )
    assert callers == ["files.py"]


def test_atomic_folder_swaps_a_whole_folder_in_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "export"
    with atomic_folder(out) as staging:
        (staging / "model_index.json").write_text("{}")
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["model_index.json"]

    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as staging:
        (staging / "unet").mkdir()
        raise KeyboardInterrupt

    assert sorted(p.name for p in out.iterdir()) == ["model_index.json"]  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder left

    with atomic_folder(out) as staging:
        (staging / "unet").mkdir()
    assert sorted(p.name for p in out.iterdir()) == ["unet"]  # replaced whole, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's 0700
