"""Test helper: the official DETR's panoptic post-processing, transcribed statement by statement.

From facebookresearch/detr (Apache License 2.0), models/segmentation.py: `PostProcessPanoptic.forward`
and its `get_ids_area`, with panopticapi's `id2rgb` / `rgb2id` (cocodataset/panopticapi,
panopticapi/utils.py). Only what a test cannot run was changed: `box_ops` (the boxes are computed and
never used), the PNG bytes (the id map is returned instead of `png_string`), `torch.ByteStorage`
(numpy reads the PIL image). Used by tests/test_panoptic_postprocess.py.
"""

# ruff: noqa: B023  (transcribed as it is: the helper reads the loop's variables)
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from PIL import Image
from torch.nn.functional import interpolate


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    id_map_copy = id_map.copy()
    rgb_shape = (*id_map.shape, 3)
    rgb_map = np.zeros(rgb_shape, dtype=np.uint8)
    for i in range(3):
        rgb_map[..., i] = id_map_copy % 256
        id_map_copy //= 256
    return rgb_map


def rgb2id(color: np.ndarray) -> np.ndarray:
    color = color.astype(np.int32)
    return color[:, :, 0] + 256 * color[:, :, 1] + 256 * 256 * color[:, :, 2]


def official_post_process_panoptic(outputs, processed_sizes, target_sizes, is_thing_map, threshold=0.85):
    """[{"ids": [H, W] official segment ids, "segments_info": [{"id", "isthing", "category_id", "area"}]}]"""
    if target_sizes is None:
        target_sizes = processed_sizes
    assert len(processed_sizes) == len(target_sizes)
    out_logits, raw_masks = outputs["pred_logits"], outputs["pred_masks"]
    assert len(out_logits) == len(raw_masks) == len(target_sizes)
    preds = []

    def to_tuple(tup):
        if isinstance(tup, tuple):
            return tup
        return tuple(tup.cpu().tolist())

    for cur_logits, cur_masks, size, target_size in zip(out_logits, raw_masks, processed_sizes, target_sizes):
        # we filter empty queries and detection below threshold
        scores, labels = cur_logits.softmax(-1).max(-1)
        keep = labels.ne(outputs["pred_logits"].shape[-1] - 1) & (scores > threshold)
        cur_scores, cur_classes = cur_logits.softmax(-1).max(-1)
        cur_scores = cur_scores[keep]
        cur_classes = cur_classes[keep]
        cur_masks = cur_masks[keep]
        cur_masks = interpolate(cur_masks[:, None], to_tuple(size), mode="bilinear").squeeze(1)

        h, w = cur_masks.shape[-2:]

        # It may be that we have several predicted masks for the same stuff class.
        # In the following, we track the list of masks ids for each stuff class (they are merged later on)
        cur_masks = cur_masks.flatten(1)
        stuff_equiv_classes = defaultdict(lambda: [])
        for k, label in enumerate(cur_classes):
            if not is_thing_map[label.item()]:
                stuff_equiv_classes[label.item()].append(k)

        def get_ids_area(masks, scores, dedup=False):
            # This helper function creates the final panoptic segmentation image
            # It also returns the area of the masks that appears on the image

            m_id = masks.transpose(0, 1).softmax(-1)

            if m_id.shape[-1] == 0:
                # We didn't detect any mask :(
                m_id = torch.zeros((h, w), dtype=torch.long, device=m_id.device)
            else:
                m_id = m_id.argmax(-1).view(h, w)

            if dedup:
                # Merge the masks corresponding to the same stuff class
                for equiv in stuff_equiv_classes.values():
                    if len(equiv) > 1:
                        for eq_id in equiv:
                            m_id.masked_fill_(m_id.eq(eq_id), equiv[0])

            final_h, final_w = to_tuple(target_size)

            seg_img = Image.fromarray(id2rgb(m_id.view(h, w).cpu().numpy()))
            seg_img = seg_img.resize(size=(final_w, final_h), resample=Image.NEAREST)

            np_seg_img = np.asarray(seg_img).reshape(final_h, final_w, 3)
            m_id = torch.from_numpy(rgb2id(np_seg_img))

            area = []
            for i in range(len(scores)):
                area.append(m_id.eq(i).sum().item())
            return area, seg_img

        area, seg_img = get_ids_area(cur_masks, cur_scores, dedup=True)
        if cur_classes.numel() > 0:
            # We know filter empty masks as long as we find some
            while True:
                filtered_small = torch.as_tensor(
                    [area[i] <= 4 for i, c in enumerate(cur_classes)], dtype=torch.bool, device=keep.device
                )
                if filtered_small.any().item():
                    cur_scores = cur_scores[~filtered_small]
                    cur_classes = cur_classes[~filtered_small]
                    cur_masks = cur_masks[~filtered_small]
                    area, seg_img = get_ids_area(cur_masks, cur_scores)
                else:
                    break

        else:
            cur_classes = torch.ones(1, dtype=torch.long, device=cur_classes.device)

        segments_info = []
        for i, a in enumerate(area):
            cat = cur_classes[i].item()
            segments_info.append({"id": i, "isthing": is_thing_map[cat], "category_id": cat, "area": a})
        del cur_classes

        preds.append({"ids": rgb2id(np.asarray(seg_img)), "segments_info": segments_info})
    return preds
