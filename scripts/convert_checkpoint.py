"""Convert an official DETR .pth or a transformers DETR checkpoint to hf_detr (see hf_detr.convert)."""

import sys

from hf_detr.commands import convert_command

if __name__ == "__main__":
    sys.exit(convert_command())
