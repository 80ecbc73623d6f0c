"""The console of a run: Lightning's per-run noise stays off it and goes to the run's console.log; real warnings and
errors still reach it."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from yonos.callbacks import TrainModeCheck
from yonos.cli import CONSOLE_LOG, _is_quiet, quiet_on_console

ROOT = Path(__file__).resolve().parents[1]

NOISE = (
    "GPU available", "TPU available", "Tip", "weights_only", "eval mode", "LeafSpec", "no last checkpoint", "Seed set",
    "`Trainer.fit` stopped",
)


def test_a_chain_stage_prints_no_lightning_noise_and_logs_it_in_the_run_folder(
    tmp_path: Path, sample_data: Path, capfd: pytest.CaptureFixture[str]
):
    """One tiny fit as `yonos chain` runs a stage: its stage process (`python -m yonos.chain --stage-process`, as
    chain.run_stage starts it), `--ckpt_path=last` on a fresh folder, the final.ckpt save after fit."""
    stage = tmp_path / "chain" / "teacher_x2"
    command = [
        sys.executable, "-m", "yonos.chain", "--stage-process", str(stage / "final.ckpt"), "last",
        "fit", "-c", str(ROOT / "experiments/tiny/teacher_x2.yaml"), f"--trainer.default_root_dir={stage}",
        f"--trainer.logger.init_args.save_dir={stage}", "--ckpt_path=last",
        f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
        "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--model.init_args.zero_output_init=false",  # keeps the base's v head under the yaml's sample: a real warning
    ]
    code = subprocess.call(command, cwd=tmp_path, timeout=300)
    console = capfd.readouterr()
    printed = console.out + console.err
    assert code == 0, printed[-3000:]
    assert (stage / "final.ckpt").is_file()
    for noise in NOISE:
        assert noise not in printed, f"{noise!r} on the console:\n{printed}"
    # A warning about the user's config is not Lightning noise: it still reaches the console.
    assert "model.prediction_type = 'sample'" in printed

    log = (stage / CONSOLE_LOG).read_text(encoding="utf-8")
    assert "GPU available: False, used: False" in log
    assert "module(s) in eval mode at the start of training" in log
    assert 'ckpt_path="last") is set, but there is no last checkpoint available' in log
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in log
    assert "model.prediction_type = 'sample'" in log


def test_only_the_listed_messages_are_quiet():
    assert _is_quiet("GPU available: False, used: False")
    assert _is_quiet("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    assert _is_quiet("Found 354 module(s) in eval mode at the start of training. This may lead to ...")
    assert not _is_quiet("GPU available but not used. You can set it by doing `Trainer(accelerator='gpu')`.")
    assert not _is_quiet("The 'train_dataloader' does not have many workers which may be a bottleneck.")
    assert not _is_quiet("3 dropout / batch-norm module(s) of trained parts are in eval mode as training starts")
    # A hand-run `yonos fit --ckpt_path last` that finds nothing to resume says so; only the chain expects it.
    missing = '.fit(ckpt_path="last") is set, but there is no last checkpoint available.'
    assert not _is_quiet(missing)
    with quiet_on_console(r'ckpt_path="last"\) is set, but there is no last checkpoint'):
        assert _is_quiet(missing)
    assert not _is_quiet(missing)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trained = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.BatchNorm1d(2))
        self.frozen = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)).eval().requires_grad_(False)
        self.no_dropout = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0), nn.GroupNorm(1, 2)).eval()


def test_train_mode_check_names_only_trained_parts_whose_eval_mode_changes_training():
    net = _Net()
    assert TrainModeCheck.offending(net) == []  # frozen parts and mode-independent layers in eval mode are fine
    net.trained.eval()
    assert TrainModeCheck.offending(net) == ["trained.1", "trained.2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        TrainModeCheck().on_train_start(None, net)  # type: ignore[arg-type]
    assert len(caught) == 1 and "trained.1, trained.2" in str(caught[0].message)
    torch.nn.Module.train(net)
    assert TrainModeCheck.offending(net) == []
