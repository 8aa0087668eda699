"""COCO box AP of an hf_detr model on a detection dataset (see hf_detr.evaluation.cli).

Not named evaluate.py: that would shadow the `evaluate` package."""

import sys

from hf_detr.commands import evaluate_command

if __name__ == "__main__":
    sys.exit(evaluate_command())
