"""Pictures of metrics, drawn with PIL like the rest of hf_detr's pictures (`hf_detr.visualization`):
the confusion matrix and the precision-recall curves of a COCO evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from ..visualization import class_colour, heat_colours, text_colour
from .per_class import RECALL_THRESHOLDS

WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (215, 215, 215)
MAX_LEGEND_CLASSES = 20
MAX_LABEL_CHARACTERS = 24


def _font(size: float) -> PIL.ImageFont.FreeTypeFont:
    return PIL.ImageFont.load_default(size=max(8, round(size)))


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL_CHARACTERS else label[: MAX_LABEL_CHARACTERS - 1] + "…"


def _paste_text(
    canvas: PIL.Image.Image, xy: tuple[float, float], text: str, font, fill=BLACK, vertical: bool = False
) -> None:
    """`text` with its top-left corner at `xy`, read bottom to top when `vertical`."""
    left, top, right, bottom = font.getbbox(text)
    stamp = PIL.Image.new("L", (right - left + 2, bottom - top + 2), 0)
    PIL.ImageDraw.Draw(stamp).text((1 - left, 1 - top), text, fill=255, font=font)
    if vertical:
        stamp = stamp.rotate(90, expand=True)
    canvas.paste(PIL.Image.new("RGB", stamp.size, fill), (round(xy[0]), round(xy[1])), stamp)


def draw_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], title: str = "") -> PIL.Image.Image:
    """The matrix [n, n] as a grid: rows ground truth, columns prediction (last of each: background).

    A cell's colour is its share of its row (how the objects of one class were detected; zero cells
    white), its text the count (when the cells are large enough to hold it).
    """
    matrix = np.asarray(matrix)
    n = len(labels)
    if matrix.shape != (n, n):
        raise ValueError(f"The matrix is {matrix.shape} but there are {n} labels.")
    cell = int(np.clip(1100 // n, 14, 60))
    label_font, count_font, title_font = _font(np.clip(cell * 0.45, 10, 16)), _font(cell * 0.32), _font(16)
    short = [_short(label) for label in labels]
    label_extent = max(_text_size(label_font, label)[0] for label in short) + 10
    axis_font = _font(14)
    left = label_extent + 30
    top = 40
    grid = cell * n
    width = max(left + grid + 20, _text_size(title_font, title)[0] + 30)
    canvas = PIL.Image.new("RGB", (width, top + grid + label_extent + 30), WHITE)
    draw = PIL.ImageDraw.Draw(canvas)
    _paste_text(canvas, (min(left, width - _text_size(title_font, title)[0] - 10), 10), title, title_font)

    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.nan_to_num(matrix / matrix.sum(axis=1, keepdims=True))  # [n, n]
    colours = heat_colours(1.0 - shares)  # pale for small shares, dark for large ones
    for row in range(n):
        for column in range(n):
            x, y = left + column * cell, top + row * cell
            colour = WHITE if matrix[row, column] == 0 else tuple(int(v) for v in colours[row, column])
            draw.rectangle((x, y, x + cell, y + cell), fill=colour, outline=GRID)
            count = str(int(matrix[row, column]))
            width, height = _text_size(count_font, count)
            if matrix[row, column] and cell >= 24 and width < cell - 2:
                _paste_text(canvas, (x + (cell - width) / 2, y + (cell - height) / 2 - 1), count, count_font,
                            text_colour(colour))  # fmt: skip
    edge = left + (n - 1) * cell  # the background row and column, set apart
    draw.line((edge, top, edge, top + grid), fill=BLACK, width=2)
    draw.line((left, top + (n - 1) * cell, left + grid, top + (n - 1) * cell), fill=BLACK, width=2)
    draw.rectangle((left, top, left + grid, top + grid), outline=BLACK, width=1)

    for index, label in enumerate(short):
        width, height = _text_size(label_font, label)
        _paste_text(canvas, (left - width - 6, top + index * cell + (cell - height) / 2), label, label_font)
        _paste_text(canvas, (left + index * cell + (cell - height) / 2, top + grid + 6), label, label_font,
                    vertical=True)  # fmt: skip
    _paste_text(canvas, (left + grid / 2 - 30, top + grid + label_extent + 8), "prediction", axis_font)
    _paste_text(canvas, (6, top + grid / 2 - 40), "ground truth", axis_font, vertical=True)
    return canvas


def draw_pr_curve(curves: np.ndarray, names: Sequence[str], title: str = "") -> PIL.Image.Image:
    """Precision against recall: one line per class (`curves` [R, K] at COCO's 101 recall points; -1
    columns, classes without ground truth, are left out) and their mean, thick and black. The legend
    gives each line's area (AP); with more than 20 classes only the mean is named."""
    curves = np.asarray(curves, dtype=np.float64)
    if curves.shape != (len(RECALL_THRESHOLDS), len(names)):
        raise ValueError(
            f"Expected curves of shape [{len(RECALL_THRESHOLDS)}, {len(names)}] (recall points, classes), "
            f"got {list(curves.shape)}."
        )
    valid = (curves > -1).all(axis=0)  # [K]
    plot_width, plot_height, left, top = 560, 420, 70, 44
    legend_font, tick_font, title_font = _font(13), _font(12), _font(16)
    entries: list[tuple[str, tuple[int, int, int]]] = []
    if valid.sum() <= MAX_LEGEND_CLASSES:
        entries = [(f"{_short(names[k])} ({curves[:, k].mean():.3f})", class_colour(k))
                   for k in np.flatnonzero(valid)]  # fmt: skip
    mean = curves[:, valid].mean(axis=1) if valid.any() else None  # [R]
    entries.append(
        (f"mean of {int(valid.sum())} ({mean.mean():.3f})" if mean is not None else "no class", BLACK)
    )
    legend_width = max(_text_size(legend_font, text)[0] for text, _ in entries) + 40
    canvas = PIL.Image.new("RGB", (left + plot_width + 20 + legend_width, top + plot_height + 60), WHITE)
    draw = PIL.ImageDraw.Draw(canvas)
    _paste_text(canvas, (left, 12), title, title_font)

    def point(recall: float, precision: float) -> tuple[float, float]:
        return left + recall * plot_width, top + (1.0 - precision) * plot_height

    for tick in np.linspace(0.0, 1.0, 6):
        x, y = point(tick, tick)
        draw.line((x, top, x, top + plot_height), fill=GRID)
        draw.line((left, y, left + plot_width, y), fill=GRID)
        text = f"{tick:.1f}"
        width, height = _text_size(tick_font, text)
        _paste_text(canvas, (x - width / 2, top + plot_height + 6), text, tick_font)
        _paste_text(canvas, (left - width - 8, y - height / 2), text, tick_font)
    draw.rectangle((left, top, left + plot_width, top + plot_height), outline=BLACK)
    _paste_text(canvas, (left + plot_width / 2 - 20, top + plot_height + 26), "recall", legend_font)
    _paste_text(canvas, (14, top + plot_height / 2 - 30), "precision", legend_font, vertical=True)

    class_width = 2 if valid.sum() <= MAX_LEGEND_CLASSES else 1
    for k in np.flatnonzero(valid):
        line = [point(r, p) for r, p in zip(RECALL_THRESHOLDS, curves[:, k])]
        draw.line(line, fill=class_colour(k), width=class_width)
    if mean is not None:
        draw.line([point(r, p) for r, p in zip(RECALL_THRESHOLDS, mean)], fill=BLACK, width=4)

    x, y = left + plot_width + 20, top
    for text, colour in entries:
        draw.line((x, y + 8, x + 24, y + 8), fill=colour, width=4 if colour == BLACK else 2)
        _paste_text(canvas, (x + 30, y + 1), text, legend_font)
        y += 20
    return canvas


__all__ = ["draw_confusion_matrix", "draw_pr_curve"]
