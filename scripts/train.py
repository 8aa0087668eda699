"""Train DETR: `python scripts/train.py ...` or `accelerate launch scripts/train.py ...` (see hf_detr.training)."""

import sys

from hf_detr.commands import train_command

if __name__ == "__main__":
    sys.exit(train_command())
