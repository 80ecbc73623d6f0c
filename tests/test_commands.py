"""yonos' own commands share one mechanism (yonos.commands): --help with defaults, --config files, --print_config."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from yonos import cli
from yonos.evaluation.command import config_from_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(cli.EXTRA_COMMANDS))
def test_every_command_has_help_config_and_print_config(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.run([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert f"yonos {command}" in text and "--config CONFIG" in text and "--print_config" in text


def test_print_config_round_trips_through_config(tmp_path: Path, capsys) -> None:
    flags = ["--model", "bicubic", "--label", "bi", "--model", "lanczos", "--label", "la", "--data", "d", "--out", "o"]
    flags += ["--steps", "1,2,4", "--metrics", "psnr,ssim", "--color-fix", "wavelet", "--crop-border", "4"]
    with pytest.raises(SystemExit) as stop:
        cli.run(["evaluate", *flags, "--print_config"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["models"] == ["bicubic", "lanczos"]
    path = tmp_path / "eval.yaml"
    path.write_text(printed)

    from_file = config_from_args(["--config", str(path)])

    assert from_file == config_from_args(flags)
    assert from_file.steps == [1, 2, 4] and from_file.crop_border == 4
    assert config_from_args(["--config", str(path), "--seed", "3"]).seed == 3  # later options override the file


def test_a_bad_value_or_key_in_a_config_file_is_named(tmp_path: Path, capsys) -> None:
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"models": ["bicubic"], "data": "d", "out": "o", "steps": [1, 0]}))
    with pytest.raises(SystemExit) as stop:
        config_from_args(["--config", str(path)])
    assert stop.value.code == 2 and "--steps takes positive integers, got [1, 0]" in capsys.readouterr().err
    path.write_text(yaml.safe_dump({"models": ["bicubic"], "data": "d", "out": "o", "colour_fix": "wavelet"}))
    with pytest.raises(SystemExit):
        config_from_args(["--config", str(path)])
    assert "colour_fix" in capsys.readouterr().err


def _calls(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            names.append(ast.unparse(node.func))
    return names


def test_commands_parse_through_yonos_commands_only_and_never_patch_sys_argv() -> None:
    offenders = []
    for path in sorted((ROOT / "yonos").rglob("*.py")):
        if path.name == "commands.py":
            continue
        tree = ast.parse(path.read_text())
        calls = _calls(tree)
        imports = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                   for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        if any(call.endswith("ArgumentParser") for call in calls) or "mock" in imports or "unittest.mock" in imports:
            offenders.append(path.relative_to(ROOT).as_posix())
    assert offenders == []
