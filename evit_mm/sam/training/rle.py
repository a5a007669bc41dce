"""Checked decoding of COCO/SA-1B segmentations (RLE and polygons): kept under this name for the training code;
the implementation, shared with the zero-shot evaluation, is :mod:`evit_mm.sam.coco_masks` (which needs no
mm library). Every segmentation is validated in Python before pycocotools decodes it (RLE run lengths that add up
to ``height x width``, polygon coordinates that are finite and within a small margin of the image); anything
wrong raises :class:`BadAnnotation` with the reason.
"""
from ..coco_masks import (POLYGON_MARGIN_FRACTION, POLYGON_MARGIN_PX, BadAnnotation, check_segmentation,
                          decode_segmentation, polygon_margin, rle_counts)

__all__ = ['BadAnnotation', 'rle_counts', 'check_segmentation', 'decode_segmentation', 'polygon_margin',
           'POLYGON_MARGIN_PX', 'POLYGON_MARGIN_FRACTION']
