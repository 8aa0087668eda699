"""`--streaming` (issue 37): training and evaluation over a streamed parquet source of several shards,
split across processes, resumed exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset
from safetensors.torch import load_file
from test_data import make_hub_parquet
from test_training import arguments

from hf_detr.data import load_detection_dataset
from hf_detr.data.streaming import StreamingDetectionDataset
from hf_detr.training import train

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A parquet dataset folder: train in 4 shards of 3 images, validation in 2 (image ids unique)."""
    root = tmp_path_factory.mktemp("stream")
    rows = Dataset.from_parquet(str(make_hub_parquet(root / "one.parquet", "xywh")))
    (root / "one.parquet").unlink()
    (root / "data").mkdir()
    for split, count in (("train", 4), ("validation", 2)):
        for shard in range(count):
            offset = 100 * (split == "validation") + 10 * shard
            moved = rows.map(lambda record, offset=offset: {"image_id": record["image_id"] + offset})
            moved.to_parquet(str(root / "data" / f"{split}-{shard:05d}-of-{count:05d}.parquet"))
    return root


def image_ids(dataset: StreamingDetectionDataset) -> list[int]:
    return [sample["annotation"]["image_id"] for sample in dataset if sample is not None]


def test_a_stream_is_split_across_processes_and_shuffled_by_shard_order(shards):
    split = load_detection_dataset(shards, streaming=True)["train"]
    parts = [
        image_ids(StreamingDetectionDataset(split, rank=rank, world_size=2, shuffle=True, seed=1))
        for rank in range(2)
    ]
    assert sorted(parts[0] + parts[1]) == sorted(r["image_id"] for r in split)  # every image once
    assert not set(parts[0]) & set(parts[1])
    ordered = StreamingDetectionDataset(split, shuffle=True, seed=1)
    epochs = []
    for epoch in range(3):
        ordered.set_epoch(epoch)
        epochs.append(image_ids(ordered))
        assert image_ids(ordered) == epochs[-1]  # an epoch's order is fixed by (seed, epoch)
        shard_runs = [epochs[-1][i : i + 3] for i in range(0, 12, 3)]  # each shard read through
        assert all(run == list(range(run[0], run[0] + 3)) for run in shard_runs)
    assert len({tuple(ids) for ids in epochs}) > 1  # the shard order changes with the epoch
    # a process's fixed number of samples per epoch: its stream read again from the start
    padded = StreamingDetectionDataset(split, rank=1, world_size=2, samples_per_epoch=8)
    unshuffled = image_ids(StreamingDetectionDataset(split, rank=1, world_size=2))
    assert image_ids(padded) == unshuffled + unshuffled[:2]


def test_streaming_needs_max_steps_when_the_source_has_no_length(tmp_path, shards):
    with pytest.raises(ValueError, match="set --max-steps"):
        train(arguments(tmp_path / "run", shards, streaming=True, epochs=1))


def test_a_resumed_streaming_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, shards):
    """4 updates of 4 images over a stream of 12 (an epoch of 3 updates, then 1 of the next, reshuffled),
    interrupted at update 2 and resumed: the same weights; the final evaluation saw every image once."""
    common = {"streaming": True, "max_steps": 4, "warmup_steps": 2, "batch_size": 4}
    full = train(arguments(tmp_path / "full", shards, **common))
    assert full.global_step == 4 and full.stop_reason == "completed"
    stopped = train(arguments(tmp_path / "resumed", shards, stop_after_steps=2, **common))
    assert stopped.stop_reason == "stop_after_steps" and stopped.global_step == 2
    resumed = train(arguments(tmp_path / "resumed", shards, resume_from_checkpoint="latest", **common))
    assert resumed.global_step == 4
    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by {worst}"
    assert full.stats == pytest.approx(resumed.stats, abs=1e-9)
    state = json.loads(
        (tmp_path / "full" / "checkpoints" / "step-00000004" / "training_state.json").read_text()
    )
    assert state["training"]["epoch"] == 1 and state["training"]["step_in_epoch"] == 1

    from hf_detr.evaluation.cli import main

    output = tmp_path / "eval.json"
    code = main(["--model", str(tmp_path / "full"), "--dataset", str(shards), "--split", "validation",
                 "--streaming", "--batch-size", "4", "--output", str(output)])  # fmt: skip
    assert code == 0
    assert json.loads(output.read_text())["num_images"] == 6


def test_the_schedule_comes_from_the_rows_the_source_states(tmp_path, shards):
    """With `dataset_info.splits` in the dataset card, --max-steps may be left out: each of 2 processes
    reads ceil(12 / 2) = 6 samples an epoch, 2 batches of 4; without it, several processes make the
    whole schedule one epoch so that they step together."""
    from types import SimpleNamespace

    from hf_detr.training.streaming import streaming_loaders

    card = tmp_path / "card"
    shutil.copytree(shards / "data", card / "data")
    (card / "README.md").write_text(
        "---\ndataset_info:\n  splits:\n  - name: train\n    num_bytes: 0\n    num_examples: 12\n"
        "  - name: validation\n    num_bytes: 0\n    num_examples: 6\n---\n"
    )
    two = SimpleNamespace(process_index=1, num_processes=2, device="cpu")
    args = arguments(tmp_path / "run", card, streaming=True, epochs=3, batch_size=4)
    data = load_detection_dataset(card, streaming=True)
    dataset, loader, eval_loader, total_steps = streaming_loaders(
        args, data, "train", "validation", None, two
    )
    assert (dataset.samples_per_epoch, len(loader), total_steps) == (6, 2, 3 * 2)
    assert eval_loader is not None and len(list(dataset)) == 6
    unknown = load_detection_dataset(shards, streaming=True)
    args = arguments(tmp_path / "run", shards, streaming=True, max_steps=5, batch_size=4)
    dataset, loader, _, total_steps = streaming_loaders(args, unknown, "train", None, None, two)
    assert (dataset.samples_per_epoch, len(loader), total_steps) == (20, 5, 5)


@pytest.mark.multiprocess
def test_two_cpu_processes_train_and_evaluate_on_a_stream(tmp_path, shards):
    """2 processes (DDP), each on its 2 of the 4 training shards, step together for the whole schedule
    (the length is unknown: one epoch, each reading its part round and round); the evaluation after
    training and `hf-detr-evaluate --streaming` count each of the 6 validation images once."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from test_training import TINY, events

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    out = tmp_path / "ddp"
    train_command = [*launch, str(REPO_ROOT / "scripts" / "train.py"), *flags, "--dataset", str(shards),
                     "--output-dir", str(out), "--streaming", "--max-steps", "4", "--batch-size", "2"]  # fmt: skip
    done = subprocess.run(train_command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    finished = events(out, "finished")
    assert finished and finished[0]["step"] == 4 and finished[0]["stats"] is not None
    result = tmp_path / "eval.json"
    evaluate_command = [*launch, str(REPO_ROOT / "scripts" / "evaluate_coco.py"), "--model", str(out),
                        "--dataset", str(shards), "--split", "validation", "--streaming",
                        "--output", str(result)]  # fmt: skip
    done = subprocess.run(
        evaluate_command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(result.read_text())
    assert record["num_processes"] == 2 and record["num_images"] == 6


def test_a_resumed_stream_with_loader_workers_continues_in_the_epochs_order(shards):
    """2 DataLoader workers (each its shards, batches in turn): a loader resumed after 1 or 3 batches
    yields the rest of the epoch in the uninterrupted order."""
    from hf_detr.data.streaming import StreamingLoader

    split = load_detection_dataset(shards, streaming=True)["train"]
    dataset = StreamingDetectionDataset(split, shuffle=True, seed=3, batch_size=2, samples_per_epoch=10)
    loader = StreamingLoader(dataset, lambda samples: [s["annotation"]["image_id"] for s in samples], "cpu",
                             num_workers=2)  # fmt: skip
    dataset.set_epoch(1)
    full = [image_id for batch in loader for image_id in batch]
    assert len(full) == 10
    for start in (1, 3):
        loader.skip_batches(start)
        assert [image_id for batch in loader for image_id in batch] == full[2 * start :]
