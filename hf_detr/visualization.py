"""Pictures of detections: boxes with class names and scores, panoptic segments with class names
(paper section 4.4, figure 9), and DETR's attention maps (paper section 4.2, figures 3 and 6).

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
    track_ids: Sequence[int] | None = None,
) -> PIL.Image.Image:
    """The image with each box ([n, 4] absolute x0, y0, x1, y1) outlined in its class colour and
    labelled "name score" ("#track name score" with `track_ids`) on a filled tag above it (inside it
    when there is no room)."""
    image = image.convert("RGB")
    width, height = image.size
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # [3, H, W] uint8
    if len(boxes):
        colours = [class_colour(int(label)) for label in labels]
        pixels = draw_bounding_boxes(pixels, boxes.float(), colors=colours, width=line_width(width, height))
    canvas = PIL.Image.fromarray(pixels.permute(1, 2, 0).numpy())
    draw = PIL.ImageDraw.Draw(canvas)
    font = PIL.ImageFont.load_default(size=font_size(width, height))
    prefixes = [f"#{int(track)} " for track in track_ids] if track_ids is not None else [""] * len(labels)
    for box, label, score, prefix in zip(boxes.tolist(), labels, scores, prefixes):
        text = f"{prefix}{names.get(int(label), str(int(label)))} {float(score):.2f}"
        tag_width, tag_height = _tag_size(draw, text, font)
        x = min(max(0, box[0]), max(0, width - tag_width))
        y = box[1] - tag_height if box[1] >= tag_height else box[1]
        _draw_tag(draw, (x, y), text, class_colour(int(label)), font)
    return canvas


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _tag_padding(draw: PIL.ImageDraw.ImageDraw, text: str, font) -> tuple[tuple[int, int, int, int], int]:
    """The text's bounding box at (0, 0) and the padding around it inside a tag."""
    bbox = draw.textbbox((0, 0), text, font=font)
    return bbox, max(1, (bbox[3] - bbox[1]) // 5)


def _tag_size(draw: PIL.ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    """(width, height) of the tag `_draw_tag` draws for `text`."""
    (left, top, right, bottom), pad = _tag_padding(draw, text, font)
    return right - left + 2 * pad, bottom - top + 2 * pad


def _draw_tag(
    draw: PIL.ImageDraw.ImageDraw, corner: tuple[float, float], text: str, colour: tuple[int, int, int], font
) -> None:
    """A tag filled with `colour` whose top-left corner is `corner`, with `text` in black or white."""
    (left, top, _, _), pad = _tag_padding(draw, text, font)
    tag_width, tag_height = _tag_size(draw, text, font)
    x, y = corner
    draw.rectangle((x, y, x + tag_width, y + tag_height), fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=text_colour(colour), font=font)


# ---------------------------------------------------------------------------------------------------
# Panoptic segments (paper figure 9)
# ---------------------------------------------------------------------------------------------------
def segment_colour(label: int, instance: int = 0) -> tuple[int, int, int]:
    """The colour of the `instance`-th segment (0, 1, ...) of class `label` in one picture: the class
    colour, then alternately lighter and darker shades of it, so that segments differ and keep their
    class's hue."""
    base = class_colour(label)
    if instance == 0:
        return base
    amount = min(0.75, 0.25 * ((instance + 1) // 2))
    target = 255 if instance % 2 else 0
    return tuple(round(c + (target - c) * amount) for c in base)


def segment_labels(segments: Sequence[dict]) -> dict[int, int]:
    """Segment id -> label id, in id order, from `segments_info` (where fused queries repeat an id)."""
    labels: dict[int, int] = {}
    for segment in segments:
        labels.setdefault(int(segment["id"]), int(segment["label_id"]))
    return dict(sorted(labels.items()))


def label_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) where to write a segment's name: its centre of mass when that lies inside the mask
    [H, W] bool, else the mask pixel farthest from the mask's border (a ring, a "C")."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("`mask` has no pixel; a segment to label needs at least one.")
    y, x = ys.mean(), xs.mean()
    if mask[int(y), int(x)]:
        return float(x) + 0.5, float(y) + 0.5
    from scipy.ndimage import distance_transform_edt

    row, column = np.unravel_index(np.argmax(distance_transform_edt(np.pad(mask, 1))), np.add(mask.shape, 2))
    return float(column - 1) + 0.5, float(row - 1) + 0.5


def _segment_edges(ids: np.ndarray, radius: int) -> np.ndarray:
    """[H, W] bool: pixels within `radius` of a change of segment id (both sides of each boundary)."""
    edges = np.zeros(ids.shape, dtype=bool)
    horizontal = ids[:, 1:] != ids[:, :-1]  # [H, W-1]
    vertical = ids[1:] != ids[:-1]  # [H-1, W]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    edges[1:] |= vertical
    edges[:-1] |= vertical
    if radius > 0:
        grown = F.max_pool2d(torch.from_numpy(edges)[None, None].float(), 2 * radius + 1, 1, radius)
        edges = grown[0, 0].bool().numpy()
    return edges


def draw_panoptic(
    image: PIL.Image.Image,
    segmentation: torch.Tensor,
    segments: Sequence[dict],
    names: dict[int, str],
    alpha: float = 0.5,
) -> PIL.Image.Image:
    """The image with each segment of `segmentation` ([H, W] segment ids of the image's size; ids not
    in `segments`, such as 0 and -1, are left as they are) filled with its colour blended over the
    image (`alpha`), outlined in it and tagged with its class name at `label_point` (paper figure 9).
    `segments`: dicts with "id" and "label_id", as `post_process_panoptic_segmentation`'s
    `segments_info`. A class keeps its hue (`class_colour`); its segments get shades of it."""
    image = image.convert("RGB")
    width, height = image.size
    ids = segmentation.cpu().numpy()
    if ids.shape != (height, width):
        raise ValueError(
            f"`segmentation` must be [H, W] = [{height}, {width}] (the image's size), got {list(ids.shape)}."
        )
    labels = segment_labels(segments)
    instances: dict[int, int] = {}
    colours = {}
    for segment_id, label in labels.items():
        colours[segment_id] = segment_colour(label, instances.get(label, 0))
        instances[label] = instances.get(label, 0) + 1
    inside = np.isin(ids, list(colours))  # [H, W]
    known = np.where(inside, ids, 0)
    table = np.zeros((max(colours, default=0) + 1, 3), dtype=np.float32)
    for segment_id, colour in colours.items():
        table[segment_id] = colour
    fill = table[known]  # [H, W, 3]
    pixels = np.asarray(image, dtype=np.float32)
    blended = np.where(inside[..., None], pixels * (1 - alpha) + fill * alpha, pixels)
    outline = _segment_edges(known, line_width(width, height) // 2 - 1) & inside
    blended[outline] = fill[outline]
    canvas = PIL.Image.fromarray(np.clip(blended.round(), 0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(canvas)
    font = PIL.ImageFont.load_default(size=font_size(width, height))
    for segment_id, label in labels.items():
        mask = ids == segment_id  # [H, W]
        if not mask.any():
            continue
        x, y = label_point(mask)
        text = names.get(label, str(label))
        tag_width, tag_height = _tag_size(draw, text, font)
        corner = (
            min(max(0.0, x - tag_width / 2), max(0, width - tag_width)),
            min(max(0.0, y - tag_height / 2), max(0, height - tag_height)),
        )
        _draw_tag(draw, corner, text, colours[segment_id], font)
    return canvas


# ---------------------------------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------------------------------
def decoder_attention_map(outputs, image_index: int, query: int) -> torch.Tensor:
    """The last decoder layer's cross-attention of one query, averaged over heads, on the unpadded
    part of the feature map: [h, w], summing to 1 (the query's attention over the image). `outputs`
    come from a model called with `output_attentions=True, output_feature_mask=True`."""
    attention = _attentions(outputs, "cross_attentions")[-1][image_index].float().mean(0)[query]  # [H*W]
    return _unpadded(attention, outputs.feature_mask[image_index])


def encoder_attention_map(outputs, image_index: int, row: int, column: int) -> torch.Tensor:
    """The last encoder layer's self-attention of the feature cell (row, column), averaged over heads:
    where that position of the image looks (paper figure 3). [h, w], summing to 1."""
    attention = _attentions(outputs, "encoder_attentions")[-1][image_index].float().mean(0)  # [H*W, H*W]
    mask = outputs.feature_mask[image_index]  # [H, W]
    return _unpadded(attention[row * mask.shape[1] + column], mask)


def _attentions(outputs, name: str) -> tuple[torch.Tensor, ...]:
    """`outputs.<name>`, once the outputs are known to carry it and the feature mask."""
    if getattr(outputs, name, None) is None or getattr(outputs, "feature_mask", None) is None:
        raise ValueError(
            f"These outputs lack {name} or feature_mask: call the model with "
            "output_attentions=True, output_feature_mask=True."
        )
    return getattr(outputs, name)


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


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape [...]) -> RGB float colours [..., 3] of the heat map."""
    positions = np.clip(values, 0.0, 1.0) * (len(HEAT_STOPS) - 1)
    lower = np.clip(np.floor(positions).astype(int), 0, len(HEAT_STOPS) - 2)
    fraction = (positions - lower)[..., None]
    return HEAT_STOPS[lower] * (1 - fraction) + HEAT_STOPS[lower + 1] * fraction


def heat_overlay(image: PIL.Image.Image, attention: torch.Tensor, alpha: float = 0.55) -> PIL.Image.Image:
    """The image with an attention map (any [h, w]) as a heat map over it, normalised to its maximum."""
    image = image.convert("RGB")
    heat = upsample(attention, image.size)
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-12)
    colours = heat_colours(heat.numpy())  # [H, W, 3]
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
    "draw_panoptic",
    "encoder_attention_map",
    "feature_cell",
    "heat_colours",
    "heat_overlay",
    "label_point",
    "segment_colour",
    "segment_labels",
    "side_by_side",
    "text_colour",
    "upsample",
]
