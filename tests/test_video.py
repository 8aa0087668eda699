"""hf-detr-predict on videos and streams: per-frame records equal to the pictures of the same decoded
frames, a looped HTTP stream, Ctrl-C, tracking, broken and empty files."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from detr_testing import tiny_hf_detr_config

from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor
from hf_detr.data.builtin import shapes_clip_frames
from hf_detr.predict import main
from hf_detr.predict_video import video_stem
from hf_detr.video import VideoError, detect_video, is_video_source, read_frames, write_video

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small random detector: at threshold 0 every frame has detections of several classes."""
    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("video-model")
    HfDetrForObjectDetection(tiny_hf_detr_config(num_queries=6)).eval().save_pretrained(directory)
    HfDetrImageProcessor(size={"shortest_edge": 128, "longest_edge": 200}).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "shapes.mp4"
    assert write_video(path, shapes_clip_frames(12), rate=10) == 12
    return path


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by_frame(records: list[dict], key: str) -> dict:
    grouped: dict = {}
    for record in records:
        grouped.setdefault(record[key], []).append((record["label_id"], record["score"], record["box"]))
    return grouped


def _assert_same_detections(ours: list, theirs: list) -> None:
    assert [label for label, _, _ in ours] == [label for label, _, _ in theirs]
    for (_, score, box), (_, their_score, their_box) in zip(ours, theirs):
        assert score == pytest.approx(their_score, abs=1e-6)
        assert list(box.values()) == pytest.approx(list(their_box.values()), abs=1e-4)


def test_a_video_gives_the_detections_of_its_decoded_frames_as_pictures(tmp_path, checkpoint, clip):
    frames = list(read_frames(str(clip), every=2))
    assert [frame.index for frame in frames] == list(range(0, 12, 2))
    assert [frame.time for frame in frames] == pytest.approx([i / 10 for i in range(0, 12, 2)])
    pictures = tmp_path / "frames"
    pictures.mkdir()
    for frame in frames:
        PIL.Image.fromarray(frame.image).save(pictures / f"{frame.index:03d}.png")
    common = ["--model", str(checkpoint), "--threshold", "0", "--top-k", "4"]
    assert main([*common, str(pictures), "--output-dir", str(tmp_path / "pictures")]) == 0
    assert main([*common, str(clip), "--every", "2", "--output-dir", str(tmp_path / "video")]) == 0

    video = _by_frame(_records(tmp_path / "video" / "detections.jsonl"), "frame")
    picture = _by_frame(_records(tmp_path / "pictures" / "detections.jsonl"), "image")
    assert sorted(video) == [frame.index for frame in frames]
    for frame in frames:
        _assert_same_detections(video[frame.index], picture[str(pictures / f"{frame.index:03d}.png")])
    first = _records(tmp_path / "video" / "detections.jsonl")[0]
    assert set(first) == {"video", "frame", "time", "label", "label_id", "score", "box"}
    annotated = list(read_frames(str(tmp_path / "video" / "shapes.mkv")))
    assert len(annotated) == len(frames) and annotated[0].image.shape == frames[0].image.shape
    assert annotated[1].time == pytest.approx(0.2)  # the source's rate divided by --every


def test_the_python_api_yields_each_frame_and_respects_max_frames(checkpoint, clip):
    model = HfDetrForObjectDetection.from_pretrained(checkpoint).eval()
    processor = HfDetrImageProcessor.from_pretrained(checkpoint)
    results = list(detect_video(model, processor, str(clip), threshold=0.0, batch_size=3, max_frames=5))
    assert [result.frame.index for result in results] == [0, 1, 2, 3, 4]
    inputs = processor([result.frame.image for result in results[:2]])
    with torch.no_grad():
        expected = processor.post_process_object_detection(model(**inputs), 0.0, [(128, 128)] * 2)
    for result, alone in zip(results, expected):
        assert torch.allclose(result.detections["scores"], alone["scores"], atol=1e-6)


class _LoopingStream(http.server.BaseHTTPRequestHandler):
    """Serves one MPEG-TS clip over and over in a single endless response: a live stream."""

    clip: bytes = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        try:
            while True:
                self.wfile.write(self.clip)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


class _DroppingStream(_LoopingStream):
    """Serves the clip twice, then hangs up: a stream that drops."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.end_headers()
        self.wfile.write(self.clip * 2)


@pytest.fixture()
def live_stream(tmp_path):
    clip = tmp_path / "loop.ts"
    write_video(clip, shapes_clip_frames(8), rate=10)
    handler = type("Handler", (_LoopingStream,), {"clip": clip.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/live.ts", clip
    server.shutdown()


def test_a_looped_http_stream_runs_until_max_frames_with_the_files_detections(tmp_path, checkpoint, live_stream):
    url, clip = live_stream
    common = ["--model", str(checkpoint), "--threshold", "0", "--top-k", "3"]
    assert main([*common, url, "--max-frames", "20", "--output-dir", str(tmp_path / "stream")]) == 0
    assert main([*common, str(clip), "--output-dir", str(tmp_path / "file")]) == 0
    stream = _by_frame(_records(tmp_path / "stream" / "detections.jsonl"), "frame")
    file = _by_frame(_records(tmp_path / "file" / "detections.jsonl"), "frame")
    assert sorted(stream) == list(range(20))
    for index in range(20):  # the stream repeats the file's 8 frames
        _assert_same_detections(stream[index], file[index % 8])
    assert len(list(read_frames(str(tmp_path / "stream" / "live.mkv")))) == 20


def test_ctrl_c_on_a_stream_keeps_a_readable_video_and_the_lines_written(tmp_path, checkpoint, live_stream):
    url, _ = live_stream
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_detr.predict", "--model", str(checkpoint), url, "--output-dir", str(out)]
    process = subprocess.Popen([*command, "--threshold", "0", "--batch-size", "1"], stderr=subprocess.PIPE, text=True)
    lines = out / "detections.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not lines.exists() or len(lines.read_text().splitlines()) < 30):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    records = _records(lines)  # every line whole
    written = list(read_frames(str(out / "live.mkv")))
    assert len(written) >= 1 and {r["frame"] for r in records} >= {frame.index for frame in written}


def test_tracking_gives_one_object_one_id_across_frames(tmp_path, known_checkpoint, clip):
    out = tmp_path / "tracked"
    assert main(["--model", str(known_checkpoint), str(clip), "--track", "--output-dir", str(out)]) == 0
    records = _records(out / "detections.jsonl")
    assert {record["frame"] for record in records} == set(range(12))  # the known box in every frame
    confirmed = {record["track_id"] for record in records if record["track_id"] >= 0}
    assert len(confirmed) == 1 and sum(record["track_id"] >= 0 for record in records) >= 10


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("random.mp4", lambda path, clip: path.write_bytes(os.urandom(4096)), "cannot open it as a video"),
        ("cut.mp4", lambda path, clip: path.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2]), "cannot open"),
        ("empty.mkv", lambda path, clip: path.write_bytes(b""), "cannot open it as a video"),
        ("missing.mp4", lambda path, clip: None, "no such video file"),
    ],
)
def test_unreadable_videos_are_one_error_line_and_the_other_sources_still_run(
    tmp_path, checkpoint, clip, capsys, name, make, message
):
    bad = tmp_path / name
    make(bad, clip)
    code = main(["--model", str(checkpoint), str(bad), str(clip), "--threshold", "0", "--output-dir", str(tmp_path / "out")])
    assert code == 1
    captured = capsys.readouterr()
    assert "0 image(s) and 12 video frame(s) written" in captured.out  # the bad video is no picture
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and message in errors[0]
    assert {r["video"] for r in _records(tmp_path / "out" / "detections.jsonl")} == {str(clip)}


def test_a_video_cut_in_the_middle_of_a_frame_gives_the_frames_before(tmp_path, clip):
    mkv = tmp_path / "whole.mkv"
    write_video(mkv, shapes_clip_frames(12), rate=10)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 2 // 3])
    frames = list(read_frames(str(cut)))
    assert 1 <= len(frames) < 12


def test_a_file_with_a_video_stream_but_no_frame_is_an_error_naming_it(tmp_path):
    whole = tmp_path / "whole.mkv"
    write_video(whole, shapes_clip_frames(3), rate=10)
    data = whole.read_bytes()
    path = tmp_path / "noframes.mkv"
    path.write_bytes(data[: data.index(bytes.fromhex("1F43B675")) + 8])  # the header and a cluster's start
    with pytest.raises(VideoError, match=r"noframes\.mkv: has no video frame"):
        list(read_frames(str(path)))


def test_sources_are_told_apart_and_named():
    assert all(map(is_video_source, ["clip.MP4", "a.webm", "0", "rtsp://cam/stream", "http://host/live.ts"]))
    assert not any(map(is_video_source, ["photo.jpg", "photos/", "*.png"]))
    assert video_stem("rtsp://user@cam:554/stream1?x=1") == "stream1"
    assert video_stem("3") == "webcam3" and video_stem("dir/clip.mp4") == "clip"


def test_videos_refuse_panoptic_and_attention(tmp_path, checkpoint, clip):
    with pytest.raises(SystemExit) as error:
        main(["--model", str(checkpoint), str(clip), "--attention", "--output-dir", str(tmp_path)])
    assert error.value.code == 2


def test_the_shapes_clip_is_a_smooth_pan():
    frames = list(shapes_clip_frames(4, speed=2))
    assert frames[0].shape == (128, 128, 3) and frames[0].dtype == np.uint8
    assert np.array_equal(frames[1][:-1, :-2], frames[0][1:, 2:])  # moved 2 pixels right, 1 down


def test_frame_detections_go_straight_into_supervision(checkpoint, clip):
    """The README's supervision example: `sv.Detections.from_transformers` reads hf_detr's detections."""
    import supervision as sv

    model = HfDetrForObjectDetection.from_pretrained(checkpoint).eval()
    processor = HfDetrImageProcessor.from_pretrained(checkpoint)
    result = next(detect_video(model, processor, str(clip), threshold=0.0))
    detections = sv.Detections.from_transformers(result.detections, id2label=model.config.id2label)
    assert np.array_equal(detections.xyxy, result.detections["boxes"].numpy())
    assert list(detections.data["class_name"]) == [model.config.id2label[int(i)] for i in result.detections["labels"]]
    annotated = sv.BoxAnnotator().annotate(result.frame.image.copy(), detections)
    assert annotated.shape == result.frame.image.shape and not np.array_equal(annotated, result.frame.image)


def test_a_stream_that_drops_is_one_error_line_and_keeps_the_frames_before(tmp_path, checkpoint, capsys):
    clip = tmp_path / "loop.ts"
    write_video(clip, shapes_clip_frames(8), rate=10)
    handler = type("Handler", (_DroppingStream,), {"clip": clip.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/live.ts"
    try:
        assert main(["--model", str(checkpoint), url, "--threshold", "0", "--output-dir", str(tmp_path / "out")]) == 1
    finally:
        server.shutdown()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and errors[0].startswith(f"error: {url}: the video broke off")
    kept = list(read_frames(str(tmp_path / "out" / "live.mkv")))
    lines = _records(tmp_path / "out" / "detections.jsonl")
    assert len(kept) >= 8 and {record["frame"] for record in lines} == {frame.index for frame in kept}
