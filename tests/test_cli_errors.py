"""Errors of the console scripts (issue 36): an uncaught error is one `error:` line on stderr and exit
code 1; the traceback only with `--traceback` or HF_DETR_TRACEBACK=1; bad numbers are argparse's usage
errors (exit code 2) naming the flag; under a multi-process launch an error is printed once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from hf_detr.commands import TRACEBACK_ENV, describe_error, report_error, run_command
from hf_detr.predict import main as predict_main

HINT = f"run with --traceback or {TRACEBACK_ENV}=1 for the details"
COMMANDS = ("hf-detr-convert", "hf-detr-evaluate", "hf-detr-export", "hf-detr-predict", "hf-detr-train")


def failing_run(command: str, tmp_path: Path) -> tuple[str, list[str]]:
    """(the module of the command's `main`, arguments that parse but fail when the command runs)."""
    missing = str(tmp_path / "no-such-model")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    settings = tmp_path / "settings.txt"
    settings.write_text("epochs: 1")
    out = str(tmp_path / "out")
    return {
        "hf-detr-convert": (
            "hf_detr.convert",
            ["--source", "original", "--checkpoint", str(garbage), "--output-dir", out],
        ),
        "hf-detr-evaluate": ("hf_detr.evaluation.cli", ["--model", missing]),
        "hf-detr-export": ("hf_detr.export", [missing, str(tmp_path / "model.pt2")]),
        "hf-detr-predict": ("hf_detr.predict", ["--model", missing, str(tmp_path), "--output-dir", out]),
        "hf-detr-train": ("hf_detr.training.cli", ["--config", str(settings)]),
    }[command]


@pytest.fixture
def quiet_env(monkeypatch):
    """No traceback switch and no multi-process launch in the environment."""
    for name in (TRACEBACK_ENV, "WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("quiet_env", "fresh_accelerator_state")
@pytest.mark.parametrize("command", COMMANDS)
def test_an_uncaught_error_is_one_line_and_exit_code_1(command, tmp_path, capsys):
    module, arguments = failing_run(command, tmp_path)
    assert run_command(module, arguments) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]  # logging may add warnings
    assert len(errors) == 1 and errors[0].endswith(f"({HINT})"), lines
    assert not any("Traceback" in line for line in lines)


@pytest.mark.usefixtures("quiet_env", "fresh_accelerator_state")
@pytest.mark.parametrize("command", COMMANDS)
def test_traceback_flag_prints_the_traceback_then_the_line(command, tmp_path, capsys):
    module, arguments = failing_run(command, tmp_path)
    assert run_command(module, [*arguments, "--traceback"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("error:") and HINT not in err


def test_environment_switch_prints_the_traceback_of_a_script(tmp_path):
    arguments = [sys.executable, str(REPO_ROOT / "scripts" / "predict.py"), "--model", str(tmp_path / "none"),
                 str(tmp_path), "--output-dir", str(tmp_path / "out")]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run(
        arguments, env={**env, TRACEBACK_ENV: "1"}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:")


def test_usage_errors_keep_exit_code_2_and_pass_through():
    def main(argv):
        raise SystemExit(2)

    with pytest.raises(SystemExit) as raised:
        run_command(main, [])
    assert raised.value.code == 2
    assert run_command(lambda argv: None, []) == 0


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "argument --batch-size: must be a whole number >= 1, got '0'"),
        ("--batch-size", "two", "argument --batch-size: must be a whole number >= 1, got 'two'"),
        ("--top-k", "-1", "argument --top-k: must be a whole number >= 1"),
        ("--threshold", "1.5", "argument --threshold: must be a number from 0 to 1, got '1.5'"),
        ("--threshold", "nan", "argument --threshold: must be a number from 0 to 1"),
    ],
)
def test_predict_checks_numbers_in_argparse(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        predict_main(["--model", "m", "x.png", "--output-dir", str(tmp_path), f"{flag}={value}"])
    assert raised.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_checks_thresholds_and_batch_size_in_argparse(capsys):
    from hf_detr.evaluation.cli import build_parser

    for arguments in (["--threshold", "-0.1"], ["--confusion-iou-threshold", "2"], ["--batch-size", "0"]):
        with pytest.raises(SystemExit) as raised:
            build_parser().parse_args(["--model", "m", *arguments])
        assert raised.value.code == 2 and f"argument {arguments[0]}: must be" in capsys.readouterr().err


def test_messages_become_one_line_and_name_unclear_types():
    assert describe_error(ValueError("first\n  second")) == "first second"
    assert describe_error(KeyError("pixel_values")) == "KeyError: 'pixel_values'"
    assert describe_error(FileNotFoundError(2, "No such file or directory", "x.png")).endswith("'x.png'")
    assert describe_error(RuntimeError()) == "RuntimeError"


def test_a_multi_process_launch_prints_each_error_once(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):  # the same error in both processes (same launcher): one line
        monkeypatch.setenv("RANK", rank)
        report_error(ValueError("the dataset has no split 'val'"))
    monkeypatch.setenv("RANK", "1")
    report_error(ValueError("another problem"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: the dataset has no split 'val' [process 0 of 2]")
    assert lines[1].startswith("error: another problem [process 1 of 2]")
