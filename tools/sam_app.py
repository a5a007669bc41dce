#!/usr/bin/env python
"""EfficientViT-SAM in the browser: click to segment, drag a box, "segment everything", download the masks.

    python tools/sam_app.py [--model efficientvit_sam_l0] [--checkpoint efficientvit_sam_l0.pt] [--port 8000]

then open http://127.0.0.1:8000/ (``--host 0.0.0.0`` to serve other machines). Needs ``pip install ".[app]"``
(FastAPI, uvicorn). The same as the ``evit-sam-app`` command; ``--help`` lists every option; docs/sam_app.md.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from evit_mm.sam.app import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
