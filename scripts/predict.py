"""Detect objects in images and draw them, optionally with attention maps (see hf_detr.predict)."""

import sys

from hf_detr.commands import predict_command

if __name__ == "__main__":
    sys.exit(predict_command())
