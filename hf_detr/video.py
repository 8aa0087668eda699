"""Videos, webcams and streams: frames decoded with PyAV (FFmpeg), detected in batches, written back as
an annotated video and per-frame records.

    from hf_detr.video import detect_video
    for result in detect_video(model, processor, "clip.mp4", threshold=0.7, every=2):
        print(result.frame.index, result.frame.time, result.detections["boxes"])

A source is a video file (mp4, avi, mkv, webm, mov, ...), a webcam index ("0" is /dev/video0 on Linux)
or a stream URL (rtsp, rtmp, http, https, udp, tcp). `detect_video` holds one batch of frames at a time,
so a stream of any length runs in constant memory. Needs the [video] extra (PyAV; supervision for
tracking).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from .extras import require_extra

logger = logging.getLogger(__name__)

VIDEO_EXTRA = {"av": "av"}
TRACKING_EXTRA = {"supervision": "supervision", "trackers": "trackers"}
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".ts", ".mpg", ".mpeg", ".flv", ".wmv")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_S = 15.0  # how long opening, or waiting for the next packet of, a stream may take


class VideoError(ValueError):
    """A video source that cannot be opened or read: the message names the source and what to do."""


@dataclass
class Frame:
    """One decoded frame: its position in the source (from 0), its time in seconds and its pixels."""

    index: int
    time: float
    image: np.ndarray  # [H, W, 3] uint8 RGB


@dataclass
class FrameDetections:
    """A frame and its detections: `scores` [n], `labels` [n], `boxes` [n, 4] absolute (x0, y0, x1, y1),
    and `track_ids` [n] with a tracker."""

    frame: Frame
    detections: dict[str, torch.Tensor]


def is_video_source(source: str) -> bool:
    """A webcam index, a stream URL or a file with a video suffix (a picture is anything else)."""
    text = str(source)
    return (
        text.isdigit()
        or text.lower().startswith(STREAM_SCHEMES)
        or Path(text).suffix.lower() in VIDEO_SUFFIXES
    )


def is_stream(source: str) -> bool:
    """A webcam or a network stream: no end known in advance, frames arrive in real time."""
    return str(source).isdigit() or str(source).lower().startswith(STREAM_SCHEMES)


def open_video(source: str) -> Any:
    """An `av` input container for `source` with at least one video stream, or a `VideoError`."""
    require_extra("Reading videos", VIDEO_EXTRA, "video")
    import av

    text = str(source)
    name, options, kind = text, {}, None
    if text.isdigit():  # a webcam: V4L2 on Linux
        name, kind = f"/dev/video{text}", "v4l2"
    elif text.lower().startswith("rtsp"):
        options["rtsp_transport"] = "tcp"  # no dropped UDP packets on a lossy network
    elif not text.lower().startswith(STREAM_SCHEMES) and not Path(text).is_file():
        raise VideoError(f"{text}: no such video file.")
    try:
        container = av.open(name, format=kind, options=options, timeout=OPEN_TIMEOUT_S)
    except (av.error.FFmpegError, OSError) as error:
        raise VideoError(f"{text}: cannot open it as a video ({error}).") from error
    if not container.streams.video:
        container.close()
        raise VideoError(f"{text}: holds no video stream.")
    return container


def frame_rate(container: Any) -> Fraction:
    """The first video stream's frame rate (average, else guessed; 25 when the source says nothing)."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else Fraction(25)


def read_frames(
    source: str, every: int = 1, max_frames: int | None = None, container: Any = None
) -> Iterator[Frame]:
    """Every `every`-th frame of `source` (at most `max_frames` of them) as RGB arrays, decoded one
    packet at a time. Packets that do not decode are skipped with a warning and counted; a file with
    no frame at all, or a stream that breaks off, is a `VideoError` (after the frames read before)."""
    import av

    opened = container or open_video(source)
    stream = opened.streams.video[0]
    stream.thread_type = "SLICE"  # threads within a frame: FRAME threading competed with the model here
    rate = frame_rate(opened)
    count, kept, skipped = 0, 0, 0
    try:
        for packet in _packets(opened, stream, source):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as error:
                skipped += 1
                logger.warning(
                    "%s: skipped a packet that does not decode (%s); %d so far.", source, error, skipped
                )
                continue
            for decoded in frames:
                if count % every == 0:
                    time = float(decoded.time) if decoded.time is not None else count / rate
                    yield Frame(count, time, decoded.to_ndarray(format="rgb24"))
                    kept += 1
                count += 1
                if max_frames is not None and kept >= max_frames:
                    return
    finally:
        if container is None:
            opened.close()
    if count == 0:
        raise VideoError(f"{source}: has no video frame that decodes ({skipped} packet(s) skipped).")


def _packets(container: Any, stream: Any, source: str) -> Iterator[Any]:
    """The stream's packets (the flushing empty one last), a stream breaking off as a `VideoError`."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.FFmpegError, OSError) as error:
            if isinstance(error, av.error.EOFError):
                return
            raise VideoError(f"{source}: the video broke off ({error}).") from error
        yield packet


def batched(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Lists of up to `size` consecutive frames."""
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def detect_frames(
    model: Any,
    processor: Any,
    frames: Iterable[Frame],
    threshold: float = 0.7,
    top_k: int | None = None,
    batch_size: int = 4,
    tracker: Any = None,
) -> Iterator[FrameDetections]:
    """Detections of each frame, `batch_size` frames per forward pass, exactly as pictures of the same
    pixels get them (`processor` on the RGB arrays, then `post_process_object_detection`)."""
    device = next((parameter.device for parameter in model.parameters()), torch.device("cpu"))
    for batch in batched(frames, batch_size):
        inputs = processor([frame.image for frame in batch], device=device)
        with torch.no_grad():
            outputs = model(**inputs)
        sizes = [frame.image.shape[:2] for frame in batch]
        results = processor.post_process_object_detection(outputs, threshold, sizes, top_k=top_k)
        for frame, detections in zip(batch, results):
            detections = {key: value.cpu() for key, value in detections.items()}
            yield FrameDetections(frame, tracker.update(detections) if tracker else detections)


def detect_video(
    model: Any,
    processor: Any,
    source: str,
    threshold: float = 0.7,
    top_k: int | None = None,
    batch_size: int = 4,
    every: int = 1,
    max_frames: int | None = None,
    track: bool = False,
    container: Any = None,
) -> Iterator[FrameDetections]:
    """The detections of every `every`-th frame of a video file, webcam or stream (`is_video_source`),
    in constant memory; with `track`, ByteTrack ids (`track_ids`) that follow objects across frames.
    `container`: the source already opened (`open_video`), closed at the end all the same."""
    container = container or open_video(source)
    try:
        tracker = ByteTracker(float(frame_rate(container)) / every) if track else None
        frames = read_frames(source, every, max_frames, container=container)
        yield from detect_frames(model, processor, frames, threshold, top_k, batch_size, tracker)
    finally:
        container.close()


class ByteTracker:
    """ByteTrack (Zhang et al., ECCV 2022; Roboflow's `trackers` package) over hf_detr detections: every
    detection of a frame gets a `track_ids` entry, the same for one object across frames (-1 while a new
    track is not yet confirmed)."""

    def __init__(self, frame_rate: float) -> None:
        require_extra("Tracking", TRACKING_EXTRA, "video")
        import supervision
        from trackers import ByteTrackTracker

        self.detections_class = supervision.Detections
        self.tracker = ByteTrackTracker(frame_rate=frame_rate)

    def update(self, detections: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        found = self.detections_class(
            xyxy=detections["boxes"].numpy().reshape(-1, 4).astype(np.float32),
            confidence=detections["scores"].numpy(),
            class_id=detections["labels"].numpy(),
        )
        tracked = self.tracker.update(found)
        return {
            "scores": torch.as_tensor(tracked.confidence, dtype=torch.float32).reshape(-1),
            "labels": torch.as_tensor(tracked.class_id, dtype=torch.int64).reshape(-1),
            "boxes": torch.as_tensor(tracked.xyxy, dtype=torch.float32).reshape(-1, 4),
            "track_ids": torch.as_tensor(tracked.tracker_id, dtype=torch.int64).reshape(-1),
        }


class VideoWriter:
    """Frames in, an H.264 video out at `rate` frames/s and the frames' size. The container follows the
    suffix; Matroska (.mkv, the annotated videos) stays readable when the writing stops half-way (a cut
    stream, Ctrl-C, a killed process)."""

    def __init__(self, path: str | Path, rate: Fraction, width: int, height: int) -> None:
        require_extra("Writing videos", VIDEO_EXTRA, "video")
        import av

        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.width, self.stream.height = width, height
        # 4:2:0 chroma needs even sides; 4:4:4 keeps an odd-sized source's exact size
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.stream.options = {"crf": "18", "preset": "veryfast"}

    def write(self, image: PIL.Image.Image | np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(
            np.asarray(image.convert("RGB") if isinstance(image, PIL.Image.Image) else image), format="rgb24"
        )
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode(None):  # flush the encoder's delayed frames
            self.container.mux(packet)
        self.container.close()


def write_video(path: str | Path, frames: Iterable[np.ndarray], rate: float = 25) -> int:
    """Write [H, W, 3] uint8 RGB `frames` as a video; returns how many."""
    writer, count = None, 0
    for frame in frames:
        if writer is None:
            writer = VideoWriter(path, Fraction(rate).limit_denominator(1001), frame.shape[1], frame.shape[0])
        writer.write(frame)
        count += 1
    if writer is None:
        raise ValueError(f"{path}: no frames to write.")
    writer.close()
    return count


__all__ = [
    "ByteTracker",
    "Frame",
    "FrameDetections",
    "VideoError",
    "VideoWriter",
    "detect_frames",
    "detect_video",
    "is_video_source",
    "read_frames",
    "write_video",
]
