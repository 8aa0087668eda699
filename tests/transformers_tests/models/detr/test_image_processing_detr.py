# Copyright 2021 HuggingFace Inc.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""transformers' DETR image-processing tests, run on `HfDetrImageProcessor` (see ../../README.md).

Adapted from `tests/models/detr/test_image_processing_detr.py` of huggingface/transformers (the copy
stored at remi-or/transformers@96b5839, the newest found here; the tag v5.25.0 could not be fetched):
its tester is rewritten on the v5.25.0 `ImageProcessingTester` (the mixins are the release's own);
`DetrImageProcessor` is `HfDetrImageProcessor`, the single ("pil") backend, and
`DetrImageProcessor.from_pretrained("facebook/detr-resnet-50")` is `HfDetrImageProcessor()` (the same
settings, offline). The tests that read transformers' own COCO panoptic fixture values are @slow there
and stay so.
"""

import json
import pathlib
import unittest

from transformers.testing_utils import require_torch, require_vision, slow
from transformers.utils import is_torch_available, is_vision_available

from ...test_image_processing_common import (
    AnnotationFormatTestMixin,
    ImageProcessingTester,
    ImageProcessingTestMixin,
)


if is_torch_available():
    import torch

if is_vision_available():
    from PIL import Image

    from hf_detr import HfDetrImageProcessor as DetrImageProcessor


FIXTURES = pathlib.Path(__file__).parents[2] / "fixtures" / "tests_samples" / "COCO"


class DetrImageProcessingTester(ImageProcessingTester):
    def __init__(self, **kwargs):
        # by setting size["longest_edge"] > max_resolution we're effectively not testing this :p
        kwargs.setdefault("size", {"shortest_edge": 18, "longest_edge": 1333})
        kwargs.setdefault("do_resize", True)
        kwargs.setdefault("do_rescale", True)
        kwargs.setdefault("rescale_factor", 1 / 255)
        kwargs.setdefault("do_normalize", True)
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("do_pad", True)
        super().__init__(**kwargs)

    def _get_image_processing_classes(self):
        return {"pil": DetrImageProcessor}


@require_torch
@require_vision
class DetrImageProcessingTest(AnnotationFormatTestMixin, ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = DetrImageProcessingTester

    def test_image_processor_properties(self):
        image_processing = DetrImageProcessor(**self.image_processor_dict)
        self.assertTrue(hasattr(image_processing, "image_mean"))
        self.assertTrue(hasattr(image_processing, "image_std"))
        self.assertTrue(hasattr(image_processing, "do_normalize"))
        self.assertTrue(hasattr(image_processing, "do_rescale"))
        self.assertTrue(hasattr(image_processing, "rescale_factor"))
        self.assertTrue(hasattr(image_processing, "do_resize"))
        self.assertTrue(hasattr(image_processing, "size"))
        self.assertTrue(hasattr(image_processing, "do_pad"))

    def test_image_processor_from_dict_with_kwargs(self):
        image_processor = DetrImageProcessor.from_dict(self.image_processor_dict)
        self.assertEqual(image_processor.size, {"shortest_edge": 18, "longest_edge": 1333})
        self.assertEqual(image_processor.do_pad, True)

        # transformers 5 ignores the legacy `max_size` and `pad_and_return_pixel_mask` (its own
        # processors give the values below); an int size keeps the longest-edge cap
        image_processor = DetrImageProcessor.from_dict(
            self.image_processor_dict, size=42, max_size=84, pad_and_return_pixel_mask=False
        )
        self.assertEqual(image_processor.size, {"shortest_edge": 42, "longest_edge": 1333})
        self.assertEqual(image_processor.do_pad, True)

    def test_should_raise_if_annotation_format_invalid(self):
        image_processor_dict = self.image_processor_tester.prepare_image_processor_dict()

        with open(FIXTURES / "coco_annotations.txt", "r") as f:
            detection_target = json.loads(f.read())

        annotations = {"image_id": 39769, "annotations": detection_target}

        params = {
            "images": Image.open(FIXTURES / "000000039769.png"),
            "annotations": annotations,
            "return_tensors": "pt",
        }

        image_processor_params = {**image_processor_dict, **{"format": "_INVALID_FORMAT_"}}
        image_processor = DetrImageProcessor(**image_processor_params)

        with self.assertRaises(ValueError) as e:
            image_processor(**params)

        self.assertTrue(str(e.exception).startswith("_INVALID_FORMAT_ is not a valid AnnotationFormat"))

    def test_valid_coco_detection_annotations(self):
        # prepare image and target
        image = Image.open(FIXTURES / "000000039769.png")
        with open(FIXTURES / "coco_annotations.txt", "r") as f:
            target = json.loads(f.read())

        params = {"image_id": 39769, "annotations": target}

        # encode them
        image_processing = DetrImageProcessor()

        # legal encodings (single image)
        _ = image_processing(images=image, annotations=params, return_tensors="pt")
        _ = image_processing(images=image, annotations=[params], return_tensors="pt")

        # legal encodings (batch of one image)
        _ = image_processing(images=[image], annotations=params, return_tensors="pt")
        _ = image_processing(images=[image], annotations=[params], return_tensors="pt")

        # legal encoding (batch of more than one image)
        n = 5
        _ = image_processing(images=[image] * n, annotations=[params] * n, return_tensors="pt")

        # example of an illegal encoding (missing the 'image_id' key)
        with self.assertRaises(ValueError) as e:
            image_processing(images=image, annotations={"annotations": target}, return_tensors="pt")

        self.assertTrue(str(e.exception).startswith("Invalid COCO detection annotations"))

        # example of an illegal encoding (unequal lengths of images and annotations)
        with self.assertRaises(ValueError) as e:
            image_processing(images=[image] * n, annotations=[params] * (n - 1), return_tensors="pt")

        self.assertTrue(str(e.exception) == "The number of images (5) and annotations (4) do not match.")

    @slow
    def test_call_pytorch_with_coco_detection_annotations(self):
        # prepare image and target
        image = Image.open(FIXTURES / "000000039769.png")
        with open(FIXTURES / "coco_annotations.txt", "r") as f:
            target = json.loads(f.read())

        target = {"image_id": 39769, "annotations": target}

        # encode them
        image_processing = DetrImageProcessor()
        encoding = image_processing(images=image, annotations=target, return_tensors="pt")

        # verify pixel values
        expected_shape = torch.Size([1, 3, 800, 1066])
        self.assertEqual(encoding["pixel_values"].shape, expected_shape)

        expected_slice = torch.tensor([0.2796, 0.3138, 0.3481])
        self.assertTrue(torch.allclose(encoding["pixel_values"][0, 0, 0, :3], expected_slice, atol=1e-4))

        # verify area
        expected_area = torch.tensor([5887.9600, 11250.2061, 489353.8438, 837122.7500, 147967.5156, 165732.3438])
        self.assertTrue(torch.allclose(encoding["labels"][0]["area"], expected_area))
        # verify boxes
        expected_boxes_shape = torch.Size([6, 4])
        self.assertEqual(encoding["labels"][0]["boxes"].shape, expected_boxes_shape)
        expected_boxes_slice = torch.tensor([0.5503, 0.2765, 0.0604, 0.2215])
        self.assertTrue(torch.allclose(encoding["labels"][0]["boxes"][0], expected_boxes_slice, atol=1e-3))
        # verify image_id
        expected_image_id = torch.tensor([39769])
        self.assertTrue(torch.allclose(encoding["labels"][0]["image_id"], expected_image_id))
        # verify is_crowd
        expected_is_crowd = torch.tensor([0, 0, 0, 0, 0, 0])
        self.assertTrue(torch.allclose(encoding["labels"][0]["iscrowd"], expected_is_crowd))
        # verify class_labels
        expected_class_labels = torch.tensor([75, 75, 63, 65, 17, 17])
        self.assertTrue(torch.allclose(encoding["labels"][0]["class_labels"], expected_class_labels))
        # verify orig_size
        expected_orig_size = torch.tensor([480, 640])
        self.assertTrue(torch.allclose(encoding["labels"][0]["orig_size"], expected_orig_size))
        # verify size
        expected_size = torch.tensor([800, 1066])
        self.assertTrue(torch.allclose(encoding["labels"][0]["size"], expected_size))
