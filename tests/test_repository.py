"""The repository stands alone: its docs link only to its own files, and nothing reads from beside it."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from conftest import REPO_ROOT

# A Markdown link or image: [text](target) / ![alt](target); the target up to a space, ")" or "#".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s#>]*)")


def tracked_files() -> list[Path]:
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, text=True
    ).stdout
    return [REPO_ROOT / name for name in listing.split("\0") if name]


def local_link_targets(markdown: Path) -> list[str]:
    """The link targets of a Markdown file that are not web addresses or in-page anchors."""
    targets = LINK.findall(markdown.read_text(encoding="utf-8"))
    return [t for t in targets if t and not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_every_readme_link_resolves_to_a_file_of_the_repository():
    tracked = set(tracked_files())
    markdown_files = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    broken = [
        f"{markdown.relative_to(REPO_ROOT)} -> {target}"
        for markdown in markdown_files
        for target in local_link_targets(markdown)
        if (markdown.parent / target).resolve() not in tracked
        and not (markdown.parent / target).resolve().is_dir()
    ]
    assert local_link_targets(REPO_ROOT / "README.md"), "the link pattern found no link in the README"
    assert not broken, f"links to files the repository does not have: {broken}"


def test_no_file_of_the_repository_refers_to_a_folder_beside_the_checkout():
    pattern = re.compile(r"\.\./shared|parents\[2\]\s*/\s*\"shared\"|parent\s*/\s*\"shared\"")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in tracked_files()
        if path.suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ""}
        and path.is_file()
        and pattern.search(path.read_text(encoding="utf-8", errors="ignore"))
        and path != Path(__file__).resolve()
    ]
    assert not offenders, f"these files read from outside the repository: {offenders}"


def test_the_test_data_carries_its_attribution():
    notes = (REPO_ROOT / "tests" / "data" / "README.md").read_text(encoding="utf-8")
    for fact in ("COCO 2017 validation", "cocodataset.org", "CC BY 4.0", "Flickr"):
        assert fact in notes
    assert (REPO_ROOT / "tests" / "data" / "coco-val2017-39769" / "000000039769.png").is_file()


def test_the_not_applicable_transformers_tests_are_documented():
    from transformers_tests.not_applicable import NOT_APPLICABLE

    notes = (REPO_ROOT / "docs" / "transformers-tests.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `(test_\w+)` \|", notes, flags=re.MULTILINE))
    assert listed == {key.rsplit("::", 1)[1] for key in NOT_APPLICABLE}
    assert "Apache License" in (REPO_ROOT / "tests" / "transformers_tests" / "LICENSE").read_text()


# The package's layers, lowest first: a module imports only from its own layer and the ones below.
LAYERS = [
    {"configuration_detr", "modeling_detr", "modeling_detr_segmentation", "loss_detr", "image_processing_detr",
     "image_processing_detr_annotations", "image_processing_detr_images", "image_processing_detr_postprocessing",
     "validation_detr", "coco_panoptic_categories", "extras", "commands", "processes"},
    {"data"},
    {"evaluation"},
    {"training"},
]  # fmt: skip


def _layer_of(module: str) -> int | None:
    top = module.split(".")[0]
    return next((index for index, names in enumerate(LAYERS) if top in names), None)


def test_imports_flow_one_way_from_the_commands_down_to_the_model_files():
    """Model files < data < evaluation < training (< the commands, which may import anything)."""
    package = REPO_ROOT / "hf_detr"
    upward = []
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(package).with_suffix("").parts)
        own = _layer_of(module)
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level and node.module:
                base = path.relative_to(package).parent.parts[
                    : len(path.relative_to(package).parent.parts) - node.level + 1
                ]
                target = ".".join([*base, node.module])
                layer = _layer_of(target)
                if layer is not None and layer > own:
                    upward.append(f"{module} imports {target}")
    assert not upward, upward


def test_no_function_of_the_package_is_longer_than_80_lines():
    long = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in (REPO_ROOT / "hf_detr").rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long


def test_the_model_files_take_no_other_models_code_from_transformers():
    """The model files travel to the Hub and run against whichever transformers the user has: they use
    its base classes and utilities, never another model's module or its loss helpers
    (`transformers.models.*`, `transformers.loss.*`), whose contents change between releases."""
    package = REPO_ROOT / "hf_detr"
    names = (
        "configuration_detr.py",
        "loss_detr.py",
        "validation_detr.py",
        "modeling_detr*.py",
        "image_processing_detr*.py",
    )
    internal = [
        f"{path.name} imports {node.module}"
        for pattern in names
        for path in package.glob(pattern)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and node.module
        and re.match(r"transformers\.(models|loss)(\.|$)", node.module)
    ]
    assert not internal, internal
