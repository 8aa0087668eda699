"""Test-suite set-up: an isolated, offline Hugging Face environment.

The variables are set before transformers / huggingface_hub are imported by any test module, because
both read them at import time.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

_HF_TMP = Path(tempfile.mkdtemp(prefix="hf_detr_tests_"))
os.environ["HF_HOME"] = str(_HF_TMP / "hf_home")
os.environ["HF_MODULES_CACHE"] = str(_HF_TMP / "hf_modules")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"  # see tests/data/README.md for where each file comes from


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate's process-wide singletons reset around a test that builds an `Accelerator`."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """8 training and 3 validation images of the built-in set (COCO and COCO panoptic annotations)."""
    from hf_detr.data import write_shapes_coco

    root = tmp_path_factory.mktemp("shapes")
    write_shapes_coco(root, {"train": 8, "val": 3})
    return root


@pytest.fixture(scope="session")
def coco_image_dir() -> Path:
    """The COCO val2017 image 000000039769 (PNG) and `instances.json` with its annotations."""
    path = TEST_DATA / "coco-val2017-39769"
    if not path.is_dir():
        raise FileNotFoundError(f"The test data is missing from the checkout: {path}")
    return path


@pytest.fixture(scope="module")
def coco(coco_image_dir: Path) -> tuple:
    """The COCO val2017 test image (decoded) and its annotations in the processor's format."""
    image = PIL.Image.open(coco_image_dir / "000000039769.png")
    image.load()
    instances = json.loads((coco_image_dir / "instances.json").read_text())
    return image, {"image_id": 39769, "annotations": instances["annotations"]}


@pytest.fixture(scope="session")
def known_checkpoint(tmp_path_factory) -> Path:
    """A saved model whose one query always predicts a known box and class (see detr_testing)."""
    from detr_testing import known_prediction_model

    from hf_detr import HfDetrImageProcessor

    directory = tmp_path_factory.mktemp("known")
    known_prediction_model().save_pretrained(directory)
    HfDetrImageProcessor(size={"shortest_edge": 160, "longest_edge": 240}).save_pretrained(directory)
    return directory


def real_coco_folder(root: Path, coco_image_dir: Path, split: str) -> Path:
    """The COCO val2017 test image and its annotations laid out as a COCO folder with one split."""
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    shutil.copy(coco_image_dir / "000000039769.png", root / split)
    shutil.copy(coco_image_dir / "instances.json", root / "annotations" / f"instances_{split}.json")
    return root
