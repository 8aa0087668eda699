"""Streamed splits (`load_detection_dataset(..., streaming=True)`) as torch iterable datasets.

`StreamingDetectionDataset` yields the samples `DetectionDataset` would (the same decoding and
augmentation, seeded by (seed, epoch, sample number)), reading one process's part of the stream
(`datasets.distributed.split_dataset_by_node`). Training shuffles by shard order only: each epoch the
shards (parquet files) come in an order drawn from (seed, epoch) and are read through, without a
shuffle buffer, so the position in the epoch is all a resume needs (a buffer's content is not saved
by `datasets`: a resumed run would see other samples). A resumed run skips the records it had read
(reading them, not decoding their images). An undecodable image is replaced by the next decodable
record of the stream without consuming it (training), so the position stays the number of records
read, or dropped (evaluation: every other image once).

`StreamingLoader` puts a DataLoader over it on the device without `accelerator.prepare` (which would
dispatch one process's stream to all), and tells Accelerate where each epoch ends (gradient
accumulation syncs there, as with a prepared loader).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from datasets import IterableDataset

from .collate import DetectionCollator, DetectionDataset

logger = logging.getLogger("hf_detr.data")


class StreamingDetectionDataset(torch.utils.data.IterableDataset):
    """A streamed split of the common schema as {"image", "annotation"} samples (see module doc).

    Args:
        split: an `IterableDataset` of the common schema.
        transforms, seed, on_error: as `DetectionDataset` ("replace": the next decodable record of the
            stream takes an undecodable one's place; "skip": None, dropped by the collator).
        rank, world_size: this process's part of the stream (`split_dataset_by_node`).
        shuffle: the shards in an order drawn from (seed, epoch), each read through (no buffer).
        samples_per_epoch: this process's samples per epoch; the stream is read again from its start
            when it ends sooner (every process then steps the same number of times). None: one pass.
        batch_size: the DataLoader's, to give each DataLoader worker its batches (and to resume).
    """

    def __init__(
        self,
        split: IterableDataset,
        transforms: Callable | None = None,
        seed: int = 0,
        on_error: str = "skip",
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        samples_per_epoch: int | None = None,
        batch_size: int = 1,
    ) -> None:
        self.reader = DetectionDataset(split, transforms, seed, on_error)  # decoding and augmentation
        self.seed, self.on_error = seed, on_error
        self.rank, self.world_size = rank, world_size
        self.shuffle = shuffle
        self.samples_per_epoch = samples_per_epoch
        self.batch_size = batch_size
        self.epoch = 0
        self.start_batch = 0  # batches of this epoch already consumed (a resumed run)

    @property
    def skipped(self) -> int:
        return self.reader.skipped

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.reader.set_epoch(epoch)

    def stream(self) -> IterableDataset:
        """This process's records of the current epoch, images undecoded."""
        from datasets.distributed import split_dataset_by_node

        split = self.reader.split
        if self.shuffle:  # shard order only: buffer_size=1 keeps the order inside a shard
            generator = np.random.default_rng([self.seed, self.epoch])
            split = split.shuffle(generator=generator, buffer_size=1, max_buffer_input_shards=1)
        return split_dataset_by_node(split, self.rank, self.world_size) if self.world_size > 1 else split

    def _records(self) -> Iterator[dict[str, Any]]:
        """One pass over the stream, or passes without end when `samples_per_epoch` is set."""
        while True:
            count = 0
            for record in self.stream():
                count += 1
                yield record
            if self.samples_per_epoch is None or count == 0:
                return

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        return (info.id, info.num_workers) if info is not None else (0, 1)

    def _bounds(self, worker: int, workers: int) -> tuple[int, int | None]:
        """The records of this worker's stream to read: [start, end). Worker w of W makes batches
        w, w + W, ... (the DataLoader's round robin); `datasets` gives it its own shards."""
        size = self.batch_size
        start = len(range(worker, self.start_batch, workers)) * size
        if self.samples_per_epoch is None:
            return start, None
        total = self.samples_per_epoch
        batches = range(worker, -(-total // size), workers)
        return start, sum(min(size, total - b * size) for b in batches)

    def sample_number(self, k: int, worker: int, workers: int) -> int:
        """The augmentation's sample index of this worker's k-th record: unique in the epoch across
        workers and processes."""
        batch, within = divmod(k, self.batch_size)
        number = (worker + workers * batch) * self.batch_size + within
        return number * self.world_size + self.rank

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        worker, workers = self._worker()
        start, end = self._bounds(worker, workers)
        source = islice(self._records(), start, end)
        pending: deque[dict[str, Any]] = deque()  # records read ahead to replace an undecodable one
        k = start
        while True:
            record = pending.popleft() if pending else next(source, None)
            if record is None:
                return
            index = self.sample_number(k, worker, workers)
            batch = worker + workers * (k // self.batch_size)  # the batch's number in the epoch
            k += 1
            sample = self._sample(record, index, report=True)
            if sample is None and self.on_error == "replace":
                sample = self._replacement(source, pending, index)
                if sample is None:
                    continue  # nothing decodable left in this epoch's stream
            yield sample if sample is None else {**sample, BATCH_NUMBER: batch}

    def _replacement(self, source: Iterator, pending: deque, index: int) -> dict[str, Any] | None:
        """The next decodable record ahead, as sample `index`; it stays in the stream for its turn."""
        for position in range(10**9):
            if position == len(pending):
                record = next(source, None)
                if record is None:
                    return None
                pending.append(record)
            sample = self._sample(pending[position], index, report=False)
            if sample is not None:
                return sample
        return None

    def _sample(self, record: dict[str, Any], index: int, report: bool) -> dict[str, Any] | None:
        decoded = self.reader.decoded(record, "a streamed sample" if report else None)
        return None if decoded is None else self.reader._sample(decoded, record, index)


BATCH_NUMBER = "_hf_detr_batch"  # a streamed sample's batch number in the epoch (StreamingLoader's order)


class NumberedBatches:
    """A collate_fn giving (the batch's number in the epoch, `collate(samples)`)."""

    def __init__(self, collate: Callable) -> None:
        self.collate = collate

    def __call__(self, samples: list[dict[str, Any] | None]) -> tuple[int | None, dict[str, Any]]:
        numbers = [sample.pop(BATCH_NUMBER) for sample in samples if sample is not None]
        return (numbers[0] if numbers else None), self.collate(samples)


class StreamingLoader:
    """A DataLoader over a `StreamingDetectionDataset`, its batches sent to `device`, in the epoch's
    order (a resumed loader's workers start their round robin at worker 0, whose batch may come later
    in the epoch: batches are put back in order, holding fewer than `num_workers`); `len` is the
    batches per epoch when known. With `accelerator`, the end of each epoch is announced to its
    gradient accumulation (as a prepared loader does). `gather_at_end`: evaluation gathers the
    detections once at the end (the processes' parts of a stream may differ in length)."""

    gather_at_end = True

    def __init__(
        self,
        dataset: StreamingDetectionDataset,
        collate: Callable,
        device: Any,
        *,
        num_workers: int = 0,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        accelerator: Any = None,
    ) -> None:
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=dataset.batch_size, num_workers=num_workers, collate_fn=NumberedBatches(collate),
            generator=torch.Generator().manual_seed(seed),  # not the global RNG: an exact resume
        )  # fmt: skip
        self.dataset, self.device = dataset, device
        self.batches_per_epoch = batches_per_epoch
        self.accelerator = accelerator
        self.end_of_dataloader = False
        self.remainder = -1

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("a stream of unknown length has no len()")
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def skip_batches(self, batches: int) -> None:
        """Start the next pass after this many batches of the epoch (a resumed run)."""
        self.dataset.start_batch = batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from accelerate.utils import send_to_device

        state = self.accelerator.gradient_state if self.accelerator is not None else None
        skipped, produced = self.dataset.start_batch, 0
        self.end_of_dataloader = False
        if state is not None:
            state._add_dataloader(self)
        try:
            batches = self._in_order(iter(self.loader), skipped)
            current = next(batches, None)
            while current is not None:
                following = next(batches, None)  # one ahead: the last batch is known as such
                self.end_of_dataloader = following is None
                produced += 1
                yield send_to_device(current, self.device)
                current = following
        finally:
            self.dataset.start_batch = 0
            if state is not None:
                state._remove_dataloader(self)
        if produced == 0 and skipped == 0:
            raise ValueError(
                "The streamed split yielded no sample: it is empty, or no image could be decoded."
            )

    def _in_order(self, numbered: Iterator[tuple[int | None, Any]], expected: int) -> Iterator[Any]:
        """The batches by their number; a number missing once a batch of every worker waits (a
        worker whose stream ended) is passed over."""
        workers, waiting = max(1, self.loader.num_workers), {}
        for number, batch in numbered:
            if number is None:  # every sample of the batch was dropped (evaluation)
                yield batch
                continue
            waiting[number] = batch
            while waiting and (expected in waiting or len(waiting) >= workers):
                expected = expected if expected in waiting else min(waiting)
                yield waiting.pop(expected)
                expected += 1
        for number in sorted(waiting):
            yield waiting[number]


def streaming_eval_loader(
    split: Any, batch_size: int, num_workers: int, accelerator: Any, collator: DetectionCollator
) -> StreamingLoader:
    """Every image of a streamed split once: each process its part, undecodable images dropped."""
    dataset = StreamingDetectionDataset(
        split, rank=accelerator.process_index, world_size=accelerator.num_processes, batch_size=batch_size
    )
    return StreamingLoader(dataset, collator, accelerator.device, num_workers=num_workers)


__all__ = ["NumberedBatches", "StreamingDetectionDataset", "StreamingLoader", "streaming_eval_loader"]
