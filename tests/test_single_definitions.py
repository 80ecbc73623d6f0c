"""Concepts declared once and shared: the device rule, the paired-folder rule, the degradation and kernel names."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import get_args

import pytest
import torch

from yonos.data import SRDataModule
from yonos.degradations.config import KERNEL_TYPES, Degradation, KernelType
from yonos.evaluation.data import is_paired
from yonos.images import paired_subfolders
from yonos.models import resolve_device


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_device_prefers_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch, cuda: bool, mps: bool, expected: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")  # a named device is taken as it is
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_upscale_and_evaluate_use_the_one_device_rule():
    from yonos import upscale
    from yonos.evaluation import runner

    assert upscale.resolve_device is resolve_device and runner.resolve_device is resolve_device


@pytest.mark.parametrize(
    ("folders", "expected"),
    [(("hr", "lr"), ("hr", "lr")), (("gt", "lq"), ("gt", "lq")), (("hr", "lr", "gt", "lq"), ("hr", "lr")),
     (("hr", "gt", "lq"), ("gt", "lq")), (("hr",), None), (("lq", "lr"), None), ((), None)],
)
def test_paired_folders_are_hr_lr_or_gt_lq(tmp_path: Path, folders: tuple[str, ...], expected):
    for name in folders:
        (tmp_path / name).mkdir()
    (tmp_path / "gt.png").write_bytes(b"")  # a file of that name is not a subfolder

    assert paired_subfolders(tmp_path) == expected
    assert is_paired(tmp_path) is (expected is not None)


def test_degradation_and_kernel_names_have_one_declaration():
    assert KERNEL_TYPES == get_args(KernelType)
    assert inspect.signature(SRDataModule).parameters["degradation"].annotation in (Degradation, "Degradation")
    assert get_args(Degradation) == ("bicubic", "bicubic_matlab", "realesrgan")
