"""Optional dependency groups: `pip install hf-detr` runs models; `hf-detr[train]` trains and evaluates;
`hf-detr[export]` writes and runs ONNX files. The data, evaluation and training subpackages call
[`require_extra`] when imported, so a missing extra is one clear error naming the command that installs it.
"""

from __future__ import annotations

import importlib

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


# ----------------------------------------------------------------------------------------------------
# Console scripts: one line per error, the traceback when asked
# ----------------------------------------------------------------------------------------------------


__all__ = ["TRAIN_EXTRA", "MissingExtraError", "require_extra"]
