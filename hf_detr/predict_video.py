"""`hf-detr-predict` on videos, webcams and streams: per source an annotated video (`<name>.mkv`, at the
source's frame rate divided by `--every`, the source's size) and one JSON line per detection (video,
frame, time, label, label_id, score, box, and track_id with `--track`) in `detections.jsonl`.

Ctrl-C ends a source cleanly: the frames written so far stay a readable video, the lines written so far
stay in `detections.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm.auto import tqdm

from .predict import detection_records
from .video import FrameDetections, VideoError, VideoWriter, detect_video, frame_rate, is_stream, open_video

INTERRUPTED = 130  # a shell's exit code after Ctrl-C


def video_stem(source: str) -> str:
    """A file name for a source's outputs: a file's stem, `webcam<N>`, or a stream URL's last part."""
    if source.isdigit():
        return f"webcam{source}"
    name = Path(source.split("?")[0].rstrip("/")).stem if "://" in source else Path(source).stem
    return re.sub(r"[^\w.-]+", "_", name) or "stream"


def frame_records(source: str, result: FrameDetections, names: dict[int, str]) -> list[dict[str, Any]]:
    """One record per detection of a frame: the video, the frame's index and time, then as pictures'
    (`detection_records`), and `track_id` with a tracker."""
    frame = {"video": source, "frame": result.frame.index, "time": round(result.frame.time, 6)}
    records = [
        {**frame, **{key: value for key, value in record.items() if key != "image"}}
        for record in detection_records(source, result.detections, names)
    ]
    for record, track_id in zip(records, result.detections.get("track_ids", torch.empty(0)).tolist()):
        record["track_id"] = int(track_id)
    return records


def predict_videos(
    sources: list[str],
    model: Any,
    processor: Any,
    args: argparse.Namespace,
    names: dict[int, str],
    out: TextIO,
    failures: list[str],
) -> tuple[int, bool]:
    """Run every source; returns (frames done, whether Ctrl-C stopped it). A source that cannot be
    read is added to `failures` and the next one runs."""
    used: set[str] = set()
    done = 0
    for source in sources:
        stem = video_stem(source)
        while stem in used:
            stem += "_"
        used.add(stem)
        try:
            frames, interrupted = predict_video(
                source, args.output_dir / f"{stem}.mkv", model, processor, args, names, out
            )
        except VideoError as error:
            failures.append(str(error))
            continue
        done += frames
        if interrupted:
            return done, True
    return done, False


def predict_video(
    source: str,
    path: Path,
    model: Any,
    processor: Any,
    args: argparse.Namespace,
    names: dict[int, str],
    out: TextIO,
) -> tuple[int, bool]:
    """One source: detections written to `out` and drawn into the video at `path`; (frames, interrupted)."""
    from .visualization import draw_detections

    container = open_video(source)
    rate = frame_rate(container) / args.every
    results = detect_video(
        model, processor, source, args.threshold, args.top_k, args.batch_size, args.every, args.max_frames,
        track=args.track, container=container,
    )  # fmt: skip
    writer, count = None, 0
    progress = tqdm(desc=f"{source}", unit="frame", total=_total(source, container, args))
    try:
        for result in results:
            image = result.frame.image
            if writer is None:
                writer = VideoWriter(path, rate, image.shape[1], image.shape[0])
            for record in frame_records(source, result, names):
                out.write(json.dumps(record) + "\n")
            found = result.detections
            track_ids = found["track_ids"].tolist() if "track_ids" in found else None
            labels, scores = found["labels"].tolist(), found["scores"].tolist()
            writer.write(draw_detections(_pil(image), found["boxes"], labels, scores, names, track_ids))
            count += 1
            progress.update()
    except KeyboardInterrupt:
        return count, True
    finally:
        progress.close()
        out.flush()
        if writer is not None:
            writer.close()
        results.close()  # ends detect_video (a started one closes the container itself)
        container.close()
    return count, False


def _total(source: str, container: Any, args: argparse.Namespace) -> int | None:
    """Frames the progress bar expects: from a file's frame count, else `--max-frames` (streams)."""
    frames = 0 if is_stream(source) else container.streams.video[0].frames
    total = -(-frames // args.every) if frames else None
    if args.max_frames is not None:
        return args.max_frames if total is None else min(total, args.max_frames)
    return total


def _pil(image: Any) -> Any:
    import PIL.Image

    return PIL.Image.fromarray(image)


__all__ = ["frame_records", "predict_video", "predict_videos", "video_stem"]
