"""Train DETR: `python scripts/train.py ...` or `accelerate launch scripts/train.py ...` (see hf_detr.training)."""

import sys

from hf_detr.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
