"""The command line: every experiment yaml parses with the real CLI; the demo's pieces run end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import yaml

from yonos.cli import EXTRA_COMMANDS, YonosCLI, main, nulls_as_json
from yonos.data import SRDataModule
from yonos.demo import run_demo, stage_gates
from yonos.images import read_rgb

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))


def test_there_are_experiments():
    names = {p.relative_to(ROOT / "experiments").as_posix() for p in EXPERIMENTS}
    stages = {"teacher_x2", "distill_x2_to_x4", "distill_x4_to_x8", "direct_x4", "direct_x8", "decoder_finetune"}
    assert {f"{name}.yaml" for name in stages} <= names
    assert {"tiny/teacher_x2.yaml", "tiny/distill_x2_to_x4.yaml", "tiny/decoder_finetune.yaml"} <= names


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.relative_to(ROOT / "experiments").as_posix())
def test_each_yaml_parses_with_the_real_cli(config: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("yonos.modules.")
    assert printed["data"]["scales"]
    callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert "yonos.callbacks.PreemptionCheckpoint" in callbacks  # SIGTERM saves last.ckpt with the yaml alone
    assert "lightning.pytorch.callbacks.EMAWeightAveraging" not in callbacks  # it averages frozen weights too


def test_a_typo_in_a_choice_fails_at_parse_time(capsys):
    config = ROOT / "experiments" / "tiny" / "teacher_x2.yaml"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(config), "--model.init_args.prediction_type=v_predction", "--print_config"])
    assert exit_info.value.code != 0
    assert "v_predction" in capsys.readouterr().err


def test_python_dash_m_yonos_lists_every_command_with_one_line():
    result = subprocess.run([sys.executable, "-m", "yonos", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert set(lines) == {"fit", "validate", "test", "predict", *EXTRA_COMMANDS}
    assert all(len(line.split()) > 3 for line in lines.values())  # a description, not just the name


def _parsed(*args: str) -> YonosCLI:
    """The CLI's parse and instantiation, without running a subcommand."""
    return YonosCLI(pl.LightningModule, SRDataModule, subclass_mode_model=True, run=False, args=nulls_as_json(list(args)))


def test_one_seed_for_the_run_the_module_and_the_data():
    real = str(ROOT / "experiments" / "teacher_x2.yaml")  # seed_everything 42 (the modules default to 0)
    cli = _parsed("-c", real, "--trainer.accelerator=cpu", "--model.init_args.backbone.preset=tiny",
                  "--model.init_args.backbone.pretrained", "null", "--seed_everything=7")
    assert cli.model.hparams.seed == cli.datamodule.seed == 7
    assert cli.model.hparams.backbone["pretrained"] is None  # `null` means None, not the string 'None'
    with pytest.raises(SystemExit):
        _parsed("-c", real, "--data.seed=3")  # a second seed is refused: seed_everything is the run's seed


def test_null_inside_init_args_becomes_a_json_object():
    assert nulls_as_json(["fit", "--model.init_args.backbone.pretrained", "null", "--trainer.max_steps=null"]) == [
        "fit", "--model.init_args.backbone", '{"pretrained": null}', "--trainer.max_steps=null"
    ]
    assert nulls_as_json(["--model.init_args.a.b.c=null", "--model.init_args.seed", "null"]) == [
        "--model.init_args.a", '{"b": {"c": null}}', "--model.init_args.seed", "null"
    ]


@pytest.mark.slow
def test_console_command_exits_zero_after_a_successful_fit(tmp_path: Path, sample_data: Path):
    """The console script exits with main()'s return value: a successful run must exit 0."""
    command = [
        sys.executable, "-m", "yonos", "fit", "-c", str(ROOT / "experiments/tiny/teacher_x2.yaml"),
        f"--data.train_dir={sample_data / 'train'}", f"--data.val_dir={sample_data / 'val'}", "--data.hr_size=32",
        "--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_demo_pieces_run_end_to_end_on_a_small_budget(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the demo's config paths are relative to the repository root
    result = run_demo(data_dir=str(tmp_path / "samples"), out_dir=str(tmp_path / "out"), max_steps=2, hr_size=32)
    assert list(result["checkpoints"]) == ["teacher_x2", "student_x4", "decoder_x4"]
    assert all(Path(path).is_file() for path in result["checkpoints"].values())
    gate = {"val/latent_mse", "val/latent_mse_copy", "val/psnr_copy", "val/ssim_copy"}
    assert {"val/psnr", "val/ssim"} | gate <= set(result["metrics"]["teacher_x2"])
    assert {"val/psnr", "val/psnr_4steps"} | gate <= set(result["metrics"]["student_x4"])
    assert {"val/psnr", "val/psnr_original_decoder"} <= set(result["metrics"]["decoder_x4"])
    assert list(result["tables"]) == ["val_crops", "val_crops_64"]
    table = result["tables"]["val_crops"]
    assert list(table) == [
        "bicubic", "codec ceiling: decode(E(HR))", "copying the condition: decode(z_lr)",
        "1 step, original decoder", "1 step, original decoder, colour fix",
        "1 step, fine-tuned decoder", "1 step, fine-tuned decoder, colour fix",
    ]
    # The pipeline's one-step numbers are the decoder stage's own validation numbers (same crops, LR and noise),
    # and the table's condition-copy and latent MSE rows are the student's own gate.
    decoder, student = result["metrics"]["decoder_x4"], result["metrics"]["student_x4"]
    assert table["1 step, fine-tuned decoder"]["val/psnr"] == pytest.approx(decoder["val/psnr"], abs=1e-3)
    assert table["1 step, original decoder"]["val/psnr"] == pytest.approx(decoder["val/psnr_original_decoder"], abs=1e-3)
    assert table["1 step, original decoder"]["latent_mse"] == pytest.approx(student["val/latent_mse"], rel=1e-3)
    assert table["copying the condition: decode(z_lr)"]["latent_mse"] == pytest.approx(student["val/latent_mse_copy"], rel=1e-3)
    assert table["copying the condition: decode(z_lr)"]["val/psnr"] == pytest.approx(student["val/psnr_copy"], abs=1e-3)
    assert all(line.split()[0] in ("teacher_x2", "student_x4") for line in stage_gates(result["metrics"]))
    side = read_rgb(result["side_by_side"])
    assert side.shape[-1] > 3 * read_rgb(result["sr_output"]).shape[-1]  # bicubic | SR | HR
    assert (Path(result["model"]) / "model_index.json").is_file()

    lr, sr = read_rgb(result["lr_input"]), read_rgb(result["sr_output"])
    assert sr.shape[-2:] == (4 * lr.shape[-2], 4 * lr.shape[-1])
    assert list((tmp_path / "out" / "teacher_x2").glob("events.out.tfevents.*"))
    # A second run finds the finished stages and trains nothing.
    again = run_demo(data_dir=str(tmp_path / "samples"), out_dir=str(tmp_path / "out"), max_steps=2, hr_size=32)
    for stage, values in result["metrics"].items():
        assert again["metrics"][stage] == pytest.approx(values)
