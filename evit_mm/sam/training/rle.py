"""Checked decoding of COCO/SA-1B segmentations (RLE and polygons) with pycocotools.

pycocotools decodes RLE in C without bounds checks: run lengths that add up to more than ``height x width``
write past the output buffer (a crash, or silent memory corruption), and illegal characters are read as if they
were valid. A single broken annotation must not take down a training run over 11M images, so every
segmentation is validated in Python first (cheap: one pass over the counts string) and only then decoded.
Anything wrong raises :class:`BadAnnotation` with the reason.
"""
from __future__ import annotations

import math
from typing import Any, List

import numpy as np

__all__ = ['BadAnnotation', 'rle_counts', 'decode_segmentation']


class BadAnnotation(ValueError):
    """A segmentation that cannot be decoded into a valid mask (the message says why)."""


def rle_counts(counts: str) -> List[int]:
    """The run lengths of a compressed COCO RLE string (the format of pycocotools' ``rleToString``: each count
    is a little-endian sequence of 6-bit characters offset by 48, 5 payload bits plus a continuation bit; from
    the third count on, counts are stored as differences to the count two places earlier)."""
    runs: List[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                raise BadAnnotation('RLE counts string ends in the middle of a number')
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise BadAnnotation(f'illegal character {counts[p]!r} at position {p} of the RLE counts')
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _check_size(size: Any, height: int, width: int) -> None:
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size)):
        raise BadAnnotation(f'RLE "size" must be [height, width], got {size!r}')
    if tuple(size) != (height, width):
        raise BadAnnotation(f'RLE size {list(size)} does not match the image size [{height}, {width}]')


def _check_runs(runs, height: int, width: int) -> None:
    if any(r < 0 for r in runs):
        raise BadAnnotation('negative run length in the RLE counts')
    total = sum(runs)
    if total != height * width:
        raise BadAnnotation(f'RLE run lengths add up to {total}, not height x width = {height * width}')


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A ``(height, width)`` bool mask from a COCO segmentation: compressed RLE (SA-1B, COCO crowd), uncompressed
    RLE (``counts`` a list) or polygons (a list of ``[x0, y0, x1, y1, ...]``). Raises :class:`BadAnnotation`
    for anything malformed; the mask may be empty (the caller decides what to do with that)."""
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, dict):
        if 'counts' not in segmentation or 'size' not in segmentation:
            raise BadAnnotation(f'RLE needs "counts" and "size", got keys {sorted(segmentation)}')
        _check_size(segmentation['size'], height, width)
        counts = segmentation['counts']
        if isinstance(counts, list):
            if not all(isinstance(c, int) for c in counts):
                raise BadAnnotation('uncompressed RLE counts must be integers')
            _check_runs(counts, height, width)
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(counts, (str, bytes)):
            text = counts.decode('ascii', 'replace') if isinstance(counts, bytes) else counts
            _check_runs(rle_counts(text), height, width)
            rle = {'size': [height, width], 'counts': text.encode('ascii')}
        else:
            raise BadAnnotation(f'RLE counts must be a string or a list, got {type(counts).__name__}')
        return mask_utils.decode(rle).astype(bool)
    if isinstance(segmentation, list):
        if not segmentation:
            raise BadAnnotation('empty polygon list')
        for poly in segmentation:
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0):
                raise BadAnnotation('a polygon must be a flat list of at least 3 (x, y) pairs')
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly):
                raise BadAnnotation('polygon coordinates must be finite numbers')
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise BadAnnotation(f'a segmentation must be an RLE dict or a polygon list, got {type(segmentation).__name__}')
