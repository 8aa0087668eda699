"""Every flag of every console script explains itself (issue 35): a one-line help that says more than
its default, and `--help` of each command's `main` works."""

from __future__ import annotations

import argparse
import importlib
import re

import pytest

# console script -> (the module of its `main`, the module of its `build_parser`)
COMMANDS = {
    "hf-detr-train": ("hf_detr.training.cli", "hf_detr.training.arguments"),
    "hf-detr-evaluate": ("hf_detr.evaluation.cli", "hf_detr.evaluation.cli"),
    "hf-detr-predict": ("hf_detr.predict", "hf_detr.predict"),
    "hf-detr-export": ("hf_detr.export", "hf_detr.export"),
    "hf-detr-convert": ("hf_detr.convert", "hf_detr.convert"),
    "hf-detr-demo": ("hf_detr.demo", "hf_detr.demo"),
}
ONLY_DEFAULT = re.compile(r"^\(?\s*default\b", re.IGNORECASE)


def test_every_console_script_is_checked_here():
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(pyproject["project"]["scripts"]) == set(COMMANDS)


def _parser(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(COMMANDS[command][1]).build_parser()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_a_one_line_help(command):
    parser = _parser(command)
    assert parser.prog == command
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        text = (action.help or "").strip()
        if not text or text == argparse.SUPPRESS:
            problems.append(f"{name}: no help")
        elif ONLY_DEFAULT.match(text):
            problems.append(f"{name}: only its default ({text!r})")
        elif "\n" in text:
            problems.append(f"{name}: more than one line")
        elif len(re.sub(r"\s*\(default:.*\)$", "", text)) > 110:
            problems.append(f"{name}: longer than a line ({text!r})")
    assert not problems, f"{command}:\n" + "\n".join(problems)


def test_training_help_shows_the_default_and_the_papers_value():
    helps = {a.dest: a.help for a in _parser("hf-detr-train")._actions}
    assert helps["learning_rate"].endswith("(default: 0.0001, the paper's)")
    assert helps["image_scale"].endswith("(default: none)")
    assert helps["train_split"].endswith("train, train2017 that exists (default: none)")
    assert helps["report_to"].endswith("(default: none)")
    assert helps["ema"].endswith("(default: false)")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_of_each_command_exits_zero(command, capsys):
    main = importlib.import_module(COMMANDS[command][0]).main
    with pytest.raises(SystemExit) as raised:
        main(["--help"])
    assert raised.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {command}")
    assert "default: None" not in out
