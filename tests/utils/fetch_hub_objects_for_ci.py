# Copyright 2020 The HuggingFace Inc. team. Licensed under the Apache License, Version 2.0
# (tests/transformers_tests/LICENSE).
"""`url_to_local_path` of transformers' `utils/fetch_hub_objects_for_ci.py` (huggingface/transformers,
stored at commit 007927f6), which `tests/transformers_tests/test_image_processing_common.py` imports
from this folder. Only this function is kept: the rest of that script downloads CI fixtures from the
Hub, which these offline tests never do."""

import os


def url_to_local_path(url, return_url_if_not_found=True):
    filename = url.split("/")[-1]

    if not os.path.exists(filename) and return_url_if_not_found:
        return url

    return filename
