"""Loading and drawing for the SAM demos (``tools/sam_demo.py``, the browser app ``evit_mm.sam.app``).

- :func:`load_image`: a file or ``skimage:NAME`` (scikit-image's sample photographs, no download);
- :data:`PALETTE`, :func:`overlay`: masks blended onto an image with an outline, one colour per mask;
- :func:`draw_prompts`: positive/negative points and a box drawn onto an image.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ['load_image', 'PALETTE', 'overlay', 'draw_prompts']


def load_image(spec: str) -> np.ndarray:
    """The pixels of a file (PNG/JPEG/TIFF ..., as PIL reads them) or of ``skimage:NAME``. ``ValueError`` for an
    unknown sample name or a missing file."""
    if spec.startswith('skimage:'):
        import skimage.data
        name = spec.split(':', 1)[1]
        if not name.isidentifier() or not callable(getattr(skimage.data, name, None)):
            raise ValueError(f'scikit-image has no sample image {name!r}')
        return getattr(skimage.data, name)()
    if not os.path.isfile(spec):
        raise ValueError(f'image not found: {spec}')
    from PIL import Image
    with Image.open(spec) as im:
        return np.asarray(im)


#: One RGB colour per mask (cycled).
PALETTE = np.array([[30, 144, 255], [255, 99, 71], [50, 205, 50], [255, 215, 0], [186, 85, 211], [0, 206, 209],
                    [255, 140, 0], [199, 21, 133], [127, 255, 0], [70, 130, 180]], np.float32)


def overlay(rgb: np.ndarray, masks, alpha: float = 0.5) -> np.ndarray:
    """``rgb`` (uint8 HWC) with each boolean mask blended in its palette colour and outlined."""
    out = rgb.astype(np.float32).copy()
    for i, m in enumerate(masks):
        color = PALETTE[i % len(PALETTE)]
        out[m] = (1 - alpha) * out[m] + alpha * color
        # outline: mask pixels with a non-mask 4-neighbour
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        out[edge] = color
    return out.clip(0, 255).astype(np.uint8)


def draw_prompts(img: np.ndarray, points, labels, box) -> np.ndarray:
    """Points (green: label 1, red: 0) and an XYXY box drawn onto ``img``."""
    from PIL import Image, ImageDraw
    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    r = max(3, round(max(img.shape[:2]) / 150))
    for (x, y), lab in zip(points, labels):
        fill = (0, 255, 0) if lab == 1 else (255, 0, 0)
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255), width=max(1, r // 3))
    if box is not None:
        d.rectangle([float(v) for v in box], outline=(0, 255, 0), width=max(2, r // 2))
    return np.asarray(im)
