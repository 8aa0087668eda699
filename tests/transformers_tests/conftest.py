"""transformers' test files, run on hf_detr: the pytest markers they use (transformers registers them
in its pyproject.toml and conftest.py), and the deselection of the tests that do not apply by design
(not_applicable.py)."""

from pathlib import Path

from .not_applicable import NOT_APPLICABLE

HERE = Path(__file__).resolve().parent

MARKERS = (
    "slow", "order", "timeout",
    "accelerate_tests", "generate", "bitsandbytes",
    "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "all_flash_attn_test",
    "torch_compile_test", "torch_export_test", "onnx_export_test", "executorch_export_test",
    "is_agent_test", "is_pipeline_test", "is_staging_test", "is_training_test",
    "is_tensor_parallel_test", "is_expert_parallel_test", "is_fsdp_test",
)  # fmt: skip


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", f"{marker}: a marker of transformers' test suite")


def pytest_collection_modifyitems(config, items):
    """Deselect the by-design list; a listed test of a collected file that no longer exists is an
    error, so that the list cannot outlive the tests it names."""
    found, keep, dropped = set(), [], []
    for item in items:
        path = Path(str(item.path)).resolve()
        if HERE not in path.parents:
            keep.append(item)
            continue
        key = f"{path.relative_to(HERE).as_posix()}::{item.parent.name}::{item.name.split('[')[0]}"
        if key in NOT_APPLICABLE:
            found.add(key)
            dropped.append(item)
        else:
            keep.append(item)
    collected_files = {Path(str(item.path)).resolve() for item in items}
    stale = [
        key for key in NOT_APPLICABLE if HERE / key.split("::")[0] in collected_files and key not in found
    ]
    if stale:
        raise ValueError(f"tests/transformers_tests/not_applicable.py names tests that do not exist: {stale}")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
