"""Optional dependency groups: `pip install hf-detr` runs models; `hf-detr[train]` trains and evaluates;
`hf-detr[export]` writes and runs ONNX files.

The data, evaluation and training subpackages call [`require_extra`] when imported, so a missing
extra is one clear error naming the command that installs it; the console scripts print it.
"""

from __future__ import annotations

import importlib
import sys

# import name -> what pip installs, for the message
TRAIN_EXTRA = {
    "accelerate": "accelerate",
    "datasets": "datasets",
    "evaluate": "evaluate",
    "faster_coco_eval": "faster-coco-eval",
    "yaml": "pyyaml",
}


class MissingExtraError(ImportError):
    """A feature's optional dependencies are not installed."""


def require_extra(feature: str, modules: dict[str, str] = TRAIN_EXTRA, extra: str = "train") -> None:
    """Raise [`MissingExtraError`] naming `pip install 'hf-detr[extra]'` when any of `modules` is missing."""
    missing = []
    for module, package in modules.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise MissingExtraError(
            f"{feature} needs {', '.join(missing)} (hf_detr's [{extra}] extra); install it with: "
            f"pip install 'hf-detr[{extra}]'  (from a clone: pip install -e \".[{extra}]\")"
        )


def _run(module: str) -> int:
    try:
        main = importlib.import_module(module).main
    except MissingExtraError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return main()


def train_command() -> int:
    """`hf-detr-train`."""
    return _run("hf_detr.training.cli")


def export_command() -> int:
    """`hf-detr-export`."""
    return _run("hf_detr.export")


def evaluate_command() -> int:
    """`hf-detr-evaluate`."""
    return _run("hf_detr.evaluation.cli")


__all__ = ["MissingExtraError", "evaluate_command", "export_command", "require_extra", "train_command"]
