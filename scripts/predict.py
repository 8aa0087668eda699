"""Detect objects in images and draw them, optionally with attention maps (see hf_detr.predict)."""

import sys

from hf_detr.predict import main

if __name__ == "__main__":
    sys.exit(main())
