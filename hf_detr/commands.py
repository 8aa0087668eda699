"""The console scripts: their entry points and error handling.

Every console script (and `scripts/*.py`) runs its `main` through [`run_command`]: an uncaught error is
one `error: ...` line on stderr and exit code 1 (argparse's usage errors keep their exit code 2); the
traceback only with `--traceback` (a flag of every command) or `HF_DETR_TRACEBACK=1`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "HF_DETR_TRACEBACK"
TRACEBACK_HINT = f"run with {TRACEBACK_FLAG} or {TRACEBACK_ENV}=1 for the details"
# under a multi-process launch, a process stays silent about an error another process of the same
# launch reported this recently (seconds): one line per distinct error, not one per process
REPORTED_RECENTLY_S = 600

Main = Callable[[Sequence[str] | None], int | None]


def add_traceback_argument(parser: argparse.ArgumentParser) -> None:
    """The `--traceback` flag of every command ([`run_command`] reads it from the raw arguments)."""
    parser.add_argument(
        TRACEBACK_FLAG, action="store_true",
        help=f"on an error, print the Python traceback, not one line (also: {TRACEBACK_ENV}=1)",
    )  # fmt: skip


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a batch size, a count)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number from 0 to 1 (a score or IoU threshold)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def wants_traceback(argv: Sequence[str]) -> bool:
    """`--traceback` among the arguments (before a `--`), or HF_DETR_TRACEBACK set to a true value."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True
    arguments = list(argv)
    return TRACEBACK_FLAG in arguments[: arguments.index("--") if "--" in arguments else None]


def describe_error(error: BaseException) -> str:
    """An exception as one line: its message, after its type's name unless the message speaks for
    itself (a plain ValueError, an OSError, hf_detr's own errors)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    kind = type(error)
    plain = kind is ValueError or isinstance(error, OSError) or kind.__module__.split(".")[0] == "hf_detr"
    if not text:
        return kind.__name__
    return text if plain else f"{kind.__name__}: {text}"


def report_error(error: BaseException, show_traceback: bool = False) -> None:
    """`error: <one line>` on stderr, after the traceback when `show_traceback`, else with the hint
    naming the switches. Under a multi-process launch, only the first process to hit an error says so."""
    message = f"error: {describe_error(error)}"
    if not _first_to_report(message):
        return
    line = message + _process_note()
    if show_traceback:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        print(line, file=sys.stderr)
    else:
        print(f"{line} ({TRACEBACK_HINT})", file=sys.stderr)


def run_command(main: Main | str, argv: Sequence[str] | None = None) -> int:
    """Run a command's `main(argv)` (or, given a module name, import the module then run its `main`, so
    that a missing extra is reported alike). Any exception becomes [`report_error`]'s line and exit code
    1; SystemExit (argparse: 2 for usage errors) and KeyboardInterrupt pass through."""
    raw = sys.argv[1:] if argv is None else argv
    try:
        if isinstance(main, str):
            main = importlib.import_module(main).main
        code = main(argv)
    except Exception as error:
        report_error(error, wants_traceback(raw))
        return 1
    return 0 if code is None else code


def _world() -> tuple[int, int]:
    """(rank, world size) of a torchrun / accelerate launch, from its environment; (0, 1) otherwise."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def _process_note() -> str:
    rank, world = _world()
    return f" [process {rank} of {world}]" if world > 1 else ""


def _first_to_report(message: str) -> bool:
    """Whether this process reports `message`: always alone; under a multi-process launch, unless another
    process of the launch (the same parent, the launcher) reported the same message recently. A marker
    file per (launcher, message) in the temporary directory keeps count; without one, everyone reports."""
    if _world()[1] <= 1:
        return True
    digest = hashlib.sha256(f"{os.getppid()}\0{message}".encode()).hexdigest()[:20]
    marker = Path(tempfile.gettempdir()) / f"hf_detr-error-{digest}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        try:
            if time.time() - marker.stat().st_mtime < REPORTED_RECENTLY_S:
                return False
            marker.touch()  # left by an earlier launch whose launcher had the same process id
        except OSError:
            pass
        return True
    except OSError:
        return True


def convert_command() -> int:
    """`hf-detr-convert`."""
    return run_command("hf_detr.convert")


def predict_command() -> int:
    """`hf-detr-predict`."""
    return run_command("hf_detr.predict")


def train_command() -> int:
    """`hf-detr-train`."""
    return run_command("hf_detr.training.cli")


def export_command() -> int:
    """`hf-detr-export`."""
    return run_command("hf_detr.export")


def demo_command() -> int:
    """`hf-detr-demo`."""
    return run_command("hf_detr.demo")


def evaluate_command() -> int:
    """`hf-detr-evaluate`."""
    return run_command("hf_detr.evaluation.cli")


__all__ = [
    "TRACEBACK_ENV",
    "add_traceback_argument",
    "convert_command",
    "demo_command",
    "describe_error",
    "evaluate_command",
    "export_command",
    "positive_int",
    "predict_command",
    "probability",
    "report_error",
    "run_command",
    "train_command",
]
