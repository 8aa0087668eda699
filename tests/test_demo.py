"""hf-detr-demo in a real browser (Debian's chromium through chromedriver, headless): load the page, upload
a picture, detect, click a detection and a pixel, read what the page shows; upload a video and get it
back annotated. In CI (CI set) a missing browser fails the test rather than skipping it."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
from detr_testing import LABELS, known_score

from hf_detr.data.builtin import shapes_clip_frames
from hf_detr.demo import DetrDemo, build_demo
from hf_detr.video import read_frames, write_video

REPO_ROOT = Path(__file__).resolve().parents[1]
PHOTO = REPO_ROOT / "tests" / "data" / "coco-val2017-39769" / "000000039769.png"  # 640x480
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def page(known_checkpoint):
    """The demo of the known model served locally, and a headless browser on it."""
    if not (CHROMIUM and CHROMEDRIVER):
        message = "Debian's chromium and chromium-driver are needed for the demo's browser test"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; .ci/run installs them (apt-get install chromium chromium-driver).")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port = _free_port()
    app = build_demo(str(known_checkpoint), threshold=0.5)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1600"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.get(f"http://127.0.0.1:{port}/")
    yield browser
    browser.quit()
    app.close()


def _wait(browser, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, TIMEOUT_S).until(lambda _: condition())


def _find(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def _click_at(browser, image, fx: float, fy: float) -> tuple[float, float]:
    """Click the displayed image at a fraction of its size; returns that point in the picture's pixels."""
    from selenium.webdriver.common.action_chains import ActionChains

    width, height = image.size["width"], image.size["height"]
    natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    ActionChains(browser).move_to_element_with_offset(image, (fx - 0.5) * width, (fy - 0.5) * height).click().perform()
    return fx * natural[0], fy * natural[1]


def test_the_page_detects_an_uploaded_picture_and_shows_attention_where_clicked(page):
    browser = page
    _wait(browser, lambda: _find(browser, "#picture input[type=file]"))
    _find(browser, "#picture input[type=file]")[0].send_keys(str(PHOTO))
    _wait(browser, lambda: _find(browser, "#picture img"))
    _find(browser, "#detect")[0].click()
    _wait(browser, lambda: _find(browser, "#detections img") and _find(browser, "#summary")[0].text)
    assert _find(browser, "#summary")[0].text == f"{LABELS[2]} {known_score():.2f}"

    drawn = _find(browser, "#detections img")[0]
    _click_at(browser, drawn, 0.5, 0.5)  # inside the known box (x 0.25-0.75, y 0.1-0.7)
    info = lambda: _find(browser, "#attention-info")[0].text  # noqa: E731
    _wait(browser, lambda: info().startswith("Decoder attention"))
    assert info() == f"Decoder attention of detection 1: {LABELS[2]} {known_score():.2f} (query 0)"
    assert _find(browser, "#attention img")

    x, y = _click_at(browser, drawn, 0.1, 0.9)  # outside it: the encoder's attention of that pixel
    _wait(browser, lambda: info().startswith("Encoder attention"))
    shown = info().split("(")[1].split(")")[0].split(", ")
    assert abs(float(shown[0]) - x) <= 8 and abs(float(shown[1]) - y) <= 8, (info(), x, y)


def test_the_page_annotates_an_uploaded_video(page, tmp_path):
    browser = page
    clip = tmp_path / "shapes.mp4"
    write_video(clip, shapes_clip_frames(6), rate=10)
    tab = next(b for b in _find(browser, "button[role=tab]") if b.text == "Video")
    tab.click()
    _wait(browser, lambda: _find(browser, "#video input[type=file]"))
    _find(browser, "#video input[type=file]")[0].send_keys(str(clip))
    _wait(browser, lambda: _find(browser, "#video video"))
    next(button for button in _find(browser, "button") if button.text == "Detect" and button.is_displayed()).click()
    _wait(browser, lambda: _find(browser, "#annotated video"))
    source = _find(browser, "#annotated video")[0].get_attribute("src")
    assert source and "annotated.mp4" in source


def test_a_click_inside_two_boxes_explains_the_smaller_one(known_checkpoint):
    import PIL.Image

    from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor

    demo = DetrDemo(
        HfDetrForObjectDetection.from_pretrained(known_checkpoint), HfDetrImageProcessor.from_pretrained(known_checkpoint)
    )
    _, analysis, _ = demo.detect(PIL.Image.open(PHOTO), 0.5)
    big = analysis.detections["boxes"][0]
    cx, cy = float(big[0] + big[2]) / 2, float(big[1] + big[3]) / 2
    small = torch.tensor([cx - 5, cy - 5, cx + 5, cy + 5])  # inside the big one
    analysis.detections = {
        "boxes": torch.stack([big, small]),
        "labels": analysis.detections["labels"].repeat(2),
        "scores": analysis.detections["scores"].repeat(2),
    }
    analysis.queries = analysis.queries * 2
    x0, y0, x1, y1 = small.tolist()
    _, text = demo.explain(analysis, (x0 + x1) / 2, (y0 + y1) / 2)
    assert text.startswith("Decoder attention of detection 2")


def test_the_video_function_writes_a_playable_mp4_and_json_lines(known_checkpoint, tmp_path):
    from hf_detr import HfDetrForObjectDetection, HfDetrImageProcessor

    clip = tmp_path / "shapes.mp4"
    write_video(clip, shapes_clip_frames(5), rate=10)
    demo = DetrDemo(
        HfDetrForObjectDetection.from_pretrained(known_checkpoint), HfDetrImageProcessor.from_pretrained(known_checkpoint)
    )
    video, lines = demo.video(str(clip), 0.5)
    assert len(list(read_frames(video))) == 5
    assert len(Path(lines).read_text().splitlines()) == 5  # the known box in every frame
