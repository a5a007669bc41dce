"""``EfficientViTSamAutomaticMaskGenerator``: SAM's automatic mask generator ("segment everything") on an
EfficientViT-SAM model.

It *is* ``segment_anything.SamAutomaticMaskGenerator`` (same arguments, defaults, algorithm and output records:
``segmentation``, ``area``, ``bbox``, ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``);
only the predictor is swapped for :class:`~evit_mm.sam.predictor.EfficientViTSamPredictor`, which resizes images
to the encoder size and maps the grid points to the 1024 prompt frame. ``generate`` also accepts grayscale, RGBA,
16-bit, float and BGR images (converted by :func:`~evit_mm.sam.transforms.as_rgb_uint8`).

SAM's defaults (``points_per_side=32``, ``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``) are kept, as the
reference does; the reference's demo uses ``pred_iou_thresh=0.8, stability_score_thresh=0.85``.

Fixed against ``SamAutomaticMaskGenerator``: settings that crashed later (``points_per_side``, ``points_per_batch``,
``crop_n_points_downscale_factor`` < 1, ``crop_n_layers`` < 0, a crop layer left with 0 points per side) raise
``ValueError`` up front; with ``crop_n_layers >= 1``, crops in which no mask passes the thresholds no longer make
``generate`` raise ``IndexError`` (no mask at all gives ``[]``), and the crops of zero width or height that
segment_anything's crop grid gives an image 1 or 2 pixels high or wide are skipped. One generator can be shared
by threads (the predictor's image state is per thread).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.utils.amg import MaskData

from .predictor import EfficientViTSamPredictor
from .transforms import as_rgb_uint8

__all__ = ['EfficientViTSamAutomaticMaskGenerator']


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_settings(points_per_side, points_per_batch, crop_n_layers, crop_n_points_downscale_factor) -> None:
    """``ValueError`` for the settings ``SamAutomaticMaskGenerator`` accepts but then fails on (division by zero,
    an endless or empty point batch, negative crop layers)."""
    if points_per_side is not None and not (_is_int(points_per_side) and points_per_side >= 1):
        raise ValueError(f'points_per_side must be a positive integer (or None with point_grids), '
                         f'got {points_per_side!r}')
    if not (_is_int(points_per_batch) and points_per_batch >= 1):
        raise ValueError(f'points_per_batch must be a positive integer, got {points_per_batch!r}')
    if not (_is_int(crop_n_layers) and crop_n_layers >= 0):
        raise ValueError(f'crop_n_layers must be a non-negative integer, got {crop_n_layers!r}')
    if not (_is_int(crop_n_points_downscale_factor) and crop_n_points_downscale_factor >= 1):
        raise ValueError(f'crop_n_points_downscale_factor must be a positive integer, '
                         f'got {crop_n_points_downscale_factor!r}')
    if points_per_side is not None:
        for layer in range(1, crop_n_layers + 1):
            if int(points_per_side / crop_n_points_downscale_factor ** layer) < 1:
                raise ValueError(
                    f'crop layer {layer} would get 0 points per side ({points_per_side} // '
                    f'{crop_n_points_downscale_factor}**{layer}): raise points_per_side, or lower crop_n_layers or '
                    'crop_n_points_downscale_factor')


class EfficientViTSamAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` with an :class:`EfficientViTSamPredictor`; see SAM's docs for the arguments."""

    def __init__(self, model, points_per_side: Optional[int] = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: Optional[List[np.ndarray]] = None,
                 min_mask_region_area: int = 0, output_mode: str = 'binary_mask') -> None:
        _check_settings(points_per_side, points_per_batch, crop_n_layers, crop_n_points_downscale_factor)
        super().__init__(model, points_per_side=points_per_side, points_per_batch=points_per_batch,
                         pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                         stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
                         crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
                         crop_overlap_ratio=crop_overlap_ratio,
                         crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
                         min_mask_region_area=min_mask_region_area, output_mode=output_mode)
        self.predictor = EfficientViTSamPredictor(model)

    def generate(self, image, image_format: str = 'RGB') -> List[Dict[str, Any]]:
        """Masks for the whole image (records as ``SamAutomaticMaskGenerator.generate``; ``[]`` if none passes)."""
        return super().generate(as_rgb_uint8(image, image_format))

    def _process_crop(self, image: np.ndarray, crop_box: List[int], crop_layer_idx: int,
                      orig_size: Tuple[int, ...]) -> MaskData:
        x0, y0, x1, y1 = crop_box
        if x1 <= x0 or y1 <= y0:
            # segment_anything's crop grid of a tiny image (1 or 2 pixels a side) has crops of zero width or
            # height: no pixel, so no mask (the predictor would refuse the empty image)
            return MaskData()
        data = super()._process_crop(image, crop_box, crop_layer_idx, orig_size)
        if len(data['rles']) == 0:
            # SAM builds the crop boxes with torch.tensor([]) here: shape (0,), which the NMS across crops
            # cannot index (IndexError). Give the (0, 4) integer boxes of an empty crop instead.
            data['crop_boxes'] = torch.zeros((0, 4), dtype=torch.int64)
        return data
