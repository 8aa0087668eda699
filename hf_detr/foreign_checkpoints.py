"""Checkpoints of other formats through hf_detr's `from_pretrained`, converted on load.

`HfDetrForObjectDetection`, `HfDetrForSegmentation`, `HfDetrConfig` and `HfDetrImageProcessor`
`.from_pretrained` accept, besides hf_detr checkpoints:

- a transformers DETR checkpoint (facebook/detr-resnet-50, -101, -dc5, the panoptic ones and their
  fine-tunes): a folder or Hub repository id whose config.json has model_type "detr";
- an official facebookresearch/detr `.pth`: a file or an http(s) URL, e.g.
  `HfDetrForObjectDetection.from_pretrained("https://dl.fbaipublicfiles.com/detr/detr-r50-e632da11.pth")`;
  the architecture is the checkpoint's (its training args and weights, as `hf-detr-convert` infers it).

Each is converted once (`hf_detr.convert`, exact) into `$HF_HOME/hf_detr/converted/<name>--<hash>`,
the hash of the checkpoint's files (of a URL: of the URL), and later loads reuse that folder; a
conversion logs one INFO line. The model files hold only the hook (`HfDetrConfig.checkpoint_resolver`,
which the models follow, and `HfDetrImageProcessor.checkpoint_resolver`); importing hf_detr installs
[`resolve_foreign_checkpoint`] there. transformers' own classes are untouched:
`AutoModelForObjectDetection` still loads a "detr" checkpoint as transformers' `DetrForObjectDetection`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .configuration_detr import HfDetrConfig
from .convert import HUB_ARGUMENTS, convert_checkpoint, fetch_transformers_checkpoint, is_checkpoint_url
from .image_processing_detr import HfDetrImageProcessor

logger = logging.getLogger(__name__)

# part of every cache key: bump it when a conversion's output changes, so earlier ones are redone
CONVERSION_VERSION = 1
# (path, size, mtime) of a checkpoint's files -> their digest, so a process hashes each checkpoint once
_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}


def converted_root() -> Path:
    """The folder of the cached conversions: `$HF_HOME/hf_detr/converted`."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "hf_detr" / "converted"


def resolve_foreign_checkpoint(name_or_path: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The `checkpoint_resolver` hf_detr installs: a transformers DETR checkpoint or an official `.pth`
    becomes the folder of its conversion (and `kwargs` lose `subfolder`, which the lookup used); anything
    else is returned unchanged, for transformers to load or to refuse in its own words."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path, kwargs
    name = os.fspath(name_or_path)
    if is_checkpoint_url(name) or (name.endswith(".pth") and not os.path.isdir(name)):
        folder = converted_official_checkpoint(name, local_files_only=bool(kwargs.get("local_files_only")))
    else:
        files = fetch_transformers_checkpoint(name, **{k: kwargs[k] for k in HUB_ARGUMENTS if k in kwargs})
        if files is None:
            return name_or_path, kwargs
        folder = converted_transformers_checkpoint(name, files)
    return str(folder), {key: value for key, value in kwargs.items() if key != "subfolder"}


def converted_transformers_checkpoint(name: str, files: list[Path]) -> Path:
    """The conversion of the transformers DETR checkpoint `name`, whose `files` (config.json first) are
    local: cached by their content."""
    target = converted_root() / f"{_slug(name)}--{_digest(files)[:16]}"
    return _convert_once(target, "transformers", files[0].parent, f"the transformers DETR checkpoint {name}")


def converted_official_checkpoint(name: str, local_files_only: bool = False) -> Path:
    """The conversion of an official `.pth`: a file (cached by its content) or an http(s) URL (cached by
    the URL, downloaded only when not converted yet; `local_files_only` refuses to download)."""
    description = f"the official DETR checkpoint {name}"
    if is_checkpoint_url(name):
        key = hashlib.sha256(f"{CONVERSION_VERSION}\n{name}".encode()).hexdigest()
        target = converted_root() / f"{_slug(name)}--{key[:16]}"
        if local_files_only and not _complete(target):
            raise OSError(
                f"{name} has not been downloaded and converted yet (no {target}), and local_files_only "
                "forbids downloading it."
            )
        return _convert_once(target, "original", name, description)
    if not Path(name).is_file():
        raise FileNotFoundError(
            f"No such file: {name}. An official DETR checkpoint is a .pth file or an http(s) URL of one."
        )
    target = converted_root() / f"{_slug(name)}--{_digest([Path(name)])[:16]}"
    return _convert_once(target, "original", name, description)


def _convert_once(target: Path, source: str, checkpoint: str | Path, description: str) -> Path:
    """`target`, converting `checkpoint` there first unless an earlier load did. The conversion is
    written to a temporary folder beside `target` and renamed: a folder there is always complete."""
    if _complete(target):
        logger.debug("Loading %s from its conversion in %s", description, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as work:
        with _no_progress_bars():  # the log line says it all
            convert_checkpoint(source, checkpoint, Path(work) / "converted")
        if target.exists() and not _complete(target):  # not ours (renames are atomic): a broken copy
            shutil.rmtree(target)
        try:
            os.replace(Path(work) / "converted", target)
        except OSError:
            if not _complete(target):
                raise
            # another process converted it meanwhile: its copy is the same
    logger.info("Converted %s to hf_detr (cached in %s)", description, target)
    return target


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars (`save_pretrained`'s "Writing model shards") off for a while."""
    from transformers.utils import logging as transformers_logging

    if not transformers_logging.is_progress_bar_enabled():
        yield
        return
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _digest(files: list[Path]) -> str:
    """SHA-256 of the files' names and contents (and CONVERSION_VERSION)."""
    stats = tuple((str(p.resolve()), s.st_size, s.st_mtime_ns) for p in files for s in [p.stat()])
    if stats not in _DIGESTS:
        digest = hashlib.sha256(f"hf_detr conversion {CONVERSION_VERSION}".encode())
        for path in files:
            digest.update(f"\n{path.name}\n{path.stat().st_size}\n".encode())
            with path.open("rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
        _DIGESTS[stats] = digest.hexdigest()
    return _DIGESTS[stats]


def _slug(name: str) -> str:
    """A readable folder name for a checkpoint: a Hub id's `org--name`, a file's or folder's name."""
    if is_checkpoint_url(name):
        base = Path(urllib.parse.urlparse(name).path).stem
    elif os.path.exists(name):
        path = Path(name).resolve()
        base = path.stem if path.is_file() else path.name
    else:
        base = name.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip(".-")[:80] or "checkpoint"


def register_checkpoint_conversion() -> None:
    """Install [`resolve_foreign_checkpoint`] as the hook of hf_detr's config (so of the models too) and
    of its processor."""
    HfDetrConfig.checkpoint_resolver = staticmethod(resolve_foreign_checkpoint)
    HfDetrImageProcessor.checkpoint_resolver = staticmethod(resolve_foreign_checkpoint)


__all__ = [
    "converted_official_checkpoint",
    "converted_root",
    "converted_transformers_checkpoint",
    "register_checkpoint_conversion",
    "resolve_foreign_checkpoint",
]
