"""Checked decoding of COCO/SA-1B/LVIS segmentations (RLE and polygons) with pycocotools, shared by SAM training
(:mod:`evit_mm.sam.training.datasets`) and the zero-shot evaluation (:mod:`evit_mm.sam.zero_shot.data`).

pycocotools works in C without bounds checks:

* RLE run lengths that add up to more than ``height x width`` write past the output buffer (a crash, or silent
  memory corruption), and illegal characters are read as if they were valid;
* a polygon is rasterised by walking its edges at 5x resolution, however far outside the image they run: a
  coordinate of ``1e7`` allocates over a gigabyte for a 64 x 64 mask, and ``1e9`` overflows its integers and
  crashes the process.

A single broken annotation must not take down a training run over 11M images or a whole evaluation, so every
segmentation is validated in Python first (:func:`check_segmentation`: one pass over the counts string or the
coordinates) and only then decoded. Anything wrong raises :class:`BadAnnotation` with the reason.

**Polygon tolerance.** A coordinate is valid if it is a finite number within :func:`polygon_margin` of the image,
i.e. ``-m <= x <= width + m`` and ``-m <= y <= height + m`` with ``m = max(4 px, 5 % of that side)``. Real
annotations overshoot by a pixel or so (a vertex on the far edge, ``x = width + 0.5``); points within the margin
are passed to pycocotools unchanged (it clips the mask to the image, so the result is exactly pycocotools'),
anything farther is not a drawing of this image (wrong size, wrong units, corruption) and the annotation is
rejected. The margin also bounds the cost of rasterising a polygon by the image's size.

This module imports numpy only (pycocotools when decoding), no mm library.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np

__all__ = ['BadAnnotation', 'rle_counts', 'polygon_margin', 'check_segmentation', 'decode_segmentation',
           'usable_polygons', 'POLYGON_MARGIN_PX', 'POLYGON_MARGIN_FRACTION']

#: A polygon vertex may lie this far outside the image (pixels, at least) ...
POLYGON_MARGIN_PX = 4.0
#: ... or this fraction of the image's side, whichever is larger.
POLYGON_MARGIN_FRACTION = 0.05


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


def polygon_margin(side: int) -> float:
    """How far (pixels) a polygon vertex may lie outside an image side of ``side`` pixels (module docstring)."""
    return max(POLYGON_MARGIN_PX, POLYGON_MARGIN_FRACTION * side)


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


def _check_rle(rle: dict, height: int, width: int) -> None:
    if 'counts' not in rle or 'size' not in rle:
        raise BadAnnotation(f'RLE needs "counts" and "size", got keys {sorted(rle)}')
    _check_size(rle['size'], height, width)
    counts = rle['counts']
    if isinstance(counts, list):
        if not all(isinstance(c, int) for c in counts):
            raise BadAnnotation('uncompressed RLE counts must be integers')
        _check_runs(counts, height, width)
    elif isinstance(counts, (str, bytes)):
        text = counts.decode('ascii', 'replace') if isinstance(counts, bytes) else counts
        _check_runs(rle_counts(text), height, width)
    else:
        raise BadAnnotation(f'RLE counts must be a string or a list, got {type(counts).__name__}')


def _check_polygons(polygons: list, height: int, width: int) -> None:
    if not polygons:
        raise BadAnnotation('empty polygon list')
    mx, my = polygon_margin(width), polygon_margin(height)
    for i, poly in enumerate(polygons):
        if not (isinstance(poly, (list, tuple)) and len(poly) >= 6 and len(poly) % 2 == 0):
            raise BadAnnotation('a polygon must be a flat list of at least 3 (x, y) pairs')
        xy = np.asarray(poly)
        if xy.ndim != 1 or xy.dtype.kind not in 'iuf' or not np.isfinite(xy).all():
            raise BadAnnotation('polygon coordinates must be finite numbers')
        xs, ys = xy[0::2], xy[1::2]
        if xs.min() < -mx or xs.max() > width + mx or ys.min() < -my or ys.max() > height + my:
            raise BadAnnotation(f'polygon {i} reaches x in [{xs.min():g}, {xs.max():g}], y in [{ys.min():g}, '
                                f'{ys.max():g}]: farther than {mx:g}/{my:g} px outside the {width}x{height} image')


def check_segmentation(segmentation: Any, height: int, width: int) -> None:
    """Raise :class:`BadAnnotation` unless ``segmentation`` (compressed or uncompressed RLE, or polygons) can be
    decoded safely into a ``(height, width)`` mask: RLE of this size whose runs add up to ``height x width``, or
    polygons of finite coordinates within :func:`polygon_margin` of the image. Decodes nothing."""
    if isinstance(segmentation, dict):
        _check_rle(segmentation, height, width)
    elif isinstance(segmentation, list):
        _check_polygons(segmentation, height, width)
    else:
        raise BadAnnotation('a segmentation must be an RLE dict or a polygon list, got '
                            f'{type(segmentation).__name__}')


def usable_polygons(segmentation: Any) -> Any:
    """A polygon list without its parts of fewer than 3 points (which pycocotools cannot draw, and COCO has some
    of); anything else (an RLE) as it is."""
    if isinstance(segmentation, list):
        return [p for p in segmentation if isinstance(p, (list, tuple)) and len(p) >= 6]
    return segmentation


def decode_segmentation(segmentation: Any, height: int, width: int, skip_short_polygons: bool = False) -> np.ndarray:
    """A ``(height, width)`` bool mask from a COCO segmentation: compressed RLE (SA-1B, COCO crowd), uncompressed
    RLE (``counts`` a list) or polygons (a list of ``[x0, y0, x1, y1, ...]``), checked first
    (:func:`check_segmentation`). Raises :class:`BadAnnotation` for anything malformed; the mask may be empty
    (the caller decides what to do with that).

    ``skip_short_polygons`` (the zero-shot evaluation's reading of COCO/LVIS): polygons of fewer than 3 points
    are ignored instead of rejected (:func:`usable_polygons`), and a polygon list with none left decodes to an
    empty mask."""
    from pycocotools import mask as mask_utils
    if skip_short_polygons:
        segmentation = usable_polygons(segmentation)
        if isinstance(segmentation, list) and not segmentation:
            return np.zeros((height, width), bool)
    check_segmentation(segmentation, height, width)
    if isinstance(segmentation, dict):
        counts = segmentation['counts']
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            text = counts.decode('ascii', 'replace') if isinstance(counts, bytes) else counts
            rle = {'size': [height, width], 'counts': text.encode('ascii')}
        return mask_utils.decode(rle).astype(bool)
    polygons = [[float(v) for v in poly] for poly in segmentation]
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)
