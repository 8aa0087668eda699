"""Pictures of detections: boxes with class names and scores, and DETR's attention maps (paper
section 4.2, figures 3 and 6).

Boxes are drawn with `torchvision.utils.draw_bounding_boxes`; the labels are drawn with PIL in Pillow's
built-in scalable font (`ImageFont.load_default(size)`), because `draw_bounding_boxes` ignores
`font_size` without a TrueType file. Line width and font size scale with the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
import torch.nn.functional as F
from torchvision.utils import draw_bounding_boxes

# readable, distinct colours (Tableau 10), one per class id modulo 10
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip
# a perceptual heat-map (dark purple -> orange -> yellow), interpolated between these stops
HEAT_STOPS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32
)


def class_colour(label: int) -> tuple[int, int, int]:
    return PALETTE[label % len(PALETTE)]


def line_width(width: int, height: int) -> int:
    return max(2, round(min(width, height) / 200))


def font_size(width: int, height: int) -> int:
    return max(10, round(min(width, height) / 32))


def draw_detections(
    image: PIL.Image.Image,
    boxes: torch.Tensor,
    labels: Sequence[int],
    scores: Sequence[float],
    names: dict[int, str],
) -> PIL.Image.Image:
    """The image with each box ([n, 4] absolute x0, y0, x1, y1) outlined in its class colour and
    labelled "name score" on a filled tag above it (inside it when there is no room)."""
    image = image.convert("RGB")
    width, height = image.size
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, H, W] uint8
    if len(boxes):
        colours = [class_colour(int(label)) for label in labels]
        pixels = draw_bounding_boxes(pixels, boxes.float(), colors=colours, width=line_width(width, height))
    canvas = PIL.Image.fromarray(pixels.permute(1, 2, 0).numpy())
    draw = PIL.ImageDraw.Draw(canvas)
    font = PIL.ImageFont.load_default(size=font_size(width, height))
    for box, label, score in zip(boxes.tolist(), labels, scores):
        text = f"{names.get(int(label), str(int(label)))} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_width, text_height = right - left, bottom - top
        pad = max(1, text_height // 5)
        x = min(max(0, box[0]), max(0, width - text_width - 2 * pad))
        y = box[1] - text_height - 2 * pad if box[1] >= text_height + 2 * pad else box[1]
        colour = class_colour(int(label))
        draw.rectangle((x, y, x + text_width + 2 * pad, y + text_height + 2 * pad), fill=colour)
        draw.text((x + pad - left, y + pad - top), text, fill=_text_colour(colour), font=font)
    return canvas


def _text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


# ---------------------------------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------------------------------
def decoder_attention_map(outputs, image_index: int, query: int) -> torch.Tensor:
    """The last decoder layer's cross-attention of one query, averaged over heads, on the unpadded
    part of the feature map: [h, w], summing to 1 (the query's attention over the image)."""
    attention = outputs.cross_attentions[-1][image_index].float().mean(0)[query]  # [H*W]
    return _unpadded(attention, outputs.feature_mask[image_index])


def encoder_attention_map(outputs, image_index: int, row: int, column: int) -> torch.Tensor:
    """The last encoder layer's self-attention of the feature cell (row, column), averaged over heads:
    where that position of the image looks (paper figure 3). [h, w], summing to 1."""
    mask = outputs.feature_mask[image_index]  # [H, W]
    attention = outputs.encoder_attentions[-1][image_index].float().mean(0)  # [H*W, H*W]
    return _unpadded(attention[row * mask.shape[1] + column], mask)


def _unpadded(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    full = attention.reshape(mask.shape)  # [H, W]
    rows, columns = int(mask[:, 0].sum()), int(mask[0].sum())
    return full[:rows, :columns]


def feature_cell(
    x: float, y: float, image_size: tuple[int, int], feature_size: tuple[int, int]
) -> tuple[int, int]:
    """(row, column) of the feature cell covering pixel (x, y) of an image of (width, height)."""
    width, height = image_size
    rows, columns = feature_size
    return min(rows - 1, max(0, int(y / height * rows))), min(columns - 1, max(0, int(x / width * columns)))


def upsample(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[h, w] attention -> [height, width] (size = (width, height)), bilinear."""
    width, height = size
    return F.interpolate(attention[None, None], size=(height, width), mode="bilinear", align_corners=False)[
        0, 0
    ]


def heat_overlay(image: PIL.Image.Image, attention: torch.Tensor, alpha: float = 0.55) -> PIL.Image.Image:
    """The image with an attention map (any [h, w]) as a heat map over it, normalised to its maximum."""
    image = image.convert("RGB")
    heat = upsample(attention, image.size)
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-12)
    positions = heat.numpy() * (len(HEAT_STOPS) - 1)
    lower = np.clip(np.floor(positions).astype(int), 0, len(HEAT_STOPS) - 2)
    fraction = (positions - lower)[..., None]
    colours = HEAT_STOPS[lower] * (1 - fraction) + HEAT_STOPS[lower + 1] * fraction  # [H, W, 3]
    blended = np.asarray(image, np.float32) * (1 - alpha) + colours * alpha
    return PIL.Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))


def side_by_side(left: PIL.Image.Image, right: PIL.Image.Image, gap: int = 8) -> PIL.Image.Image:
    canvas = PIL.Image.new(
        "RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255)
    )
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    return canvas


def mark_pixel(image: PIL.Image.Image, x: float, y: float) -> PIL.Image.Image:
    image = image.copy()
    radius = max(3, line_width(*image.size) * 2)
    PIL.ImageDraw.Draw(image).ellipse(
        (x - radius, y - radius, x + radius, y + radius),
        outline=(255, 255, 255),
        width=radius // 2 + 1,
        fill=(214, 39, 40),
    )
    return image


__all__ = [
    "PALETTE",
    "class_colour",
    "decoder_attention_map",
    "draw_detections",
    "encoder_attention_map",
    "feature_cell",
    "heat_overlay",
    "side_by_side",
    "upsample",
]
