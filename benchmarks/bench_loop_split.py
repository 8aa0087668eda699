"""Where a training run's time goes: set-up, data, the step, logging, evaluation and saving.

Runs `hf-detr-train` in this process with the given flags (default: the built-in preset as the README
runs it) and times each part of the loop by wrapping the trainer's functions, so the figures are the
real run's. Prints one table: seconds and share of the whole for each part.

    python benchmarks/bench_loop_split.py                 # the main job as the README runs it
    python benchmarks/bench_loop_split.py --max-steps 300 # a shorter run
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

START = time.monotonic()
import hf_detr.training.trainer as trainer  # noqa: E402
from hf_detr.training import parse_args  # noqa: E402
from hf_detr.training.setup import TrainingRun  # noqa: E402

IMPORT_SECONDS = time.monotonic() - START
SECONDS: dict[str, float] = defaultdict(float)


def timed(part: str, function: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[part] += time.monotonic() - start

    return wrapper


def timed_batches(epoch_batches: Callable[[TrainingRun], Iterator]) -> Callable:
    """Time spent waiting for the next batch (reading, decoding, augmenting, collating)."""

    def wrapper(run: TrainingRun) -> Iterator:
        iterator = iter(epoch_batches(run))
        while True:
            start = time.monotonic()
            try:
                batch = next(iterator)
            except StopIteration:
                SECONDS["data: loading batches"] += time.monotonic() - start
                return
            SECONDS["data: loading batches"] += time.monotonic() - start
            yield batch

    return wrapper


def main() -> None:
    args = parse_args(sys.argv[1:])
    trainer.setup_run = timed("set-up: data set, model, optimizer, accelerate", trainer.setup_run)
    trainer.train_batch = timed("step: forward, loss, backward, optimizer", trainer.train_batch)
    trainer.finish_update = timed("schedule and logging", trainer.finish_update)
    trainer.evaluate_and_save_on_step = timed(
        "evaluation and checkpoints in the loop", trainer.evaluate_and_save_on_step
    )
    trainer.end_epoch = timed("evaluation and checkpoints in the loop", trainer.end_epoch)
    trainer.conclude = timed("final evaluation and saving", trainer.conclude)
    TrainingRun.epoch_batches = timed_batches(TrainingRun.epoch_batches)
    start = time.monotonic()
    result = trainer.train(args)
    total = time.monotonic() - start + IMPORT_SECONDS
    SECONDS["imports"] = IMPORT_SECONDS
    SECONDS["other"] = total - sum(SECONDS.values())
    print(f"\n{result.global_step} updates, {total:.1f} s in all, AP50 {result.stats['AP50']:.3f}")
    print("| part | seconds | share |\n|---|---|---|")
    for part, seconds in sorted(SECONDS.items(), key=lambda item: -item[1]):
        print(f"| {part} | {seconds:.1f} | {seconds / total:.0%} |")


if __name__ == "__main__":
    main()
