"""``EfficientViTSamAutomaticMaskGenerator``: SAM's automatic mask generator ("segment everything") on an
EfficientViT-SAM model.

It *is* ``segment_anything.SamAutomaticMaskGenerator`` (same arguments, defaults, algorithm and output records:
``segmentation``, ``area``, ``bbox``, ``predicted_iou``, ``point_coords``, ``stability_score``, ``crop_box``);
only the predictor is swapped for :class:`~evit_mm.sam.predictor.EfficientViTSamPredictor`, which resizes images
to the encoder size and maps the grid points to the 1024 prompt frame. ``generate`` also accepts grayscale, RGBA,
16-bit, float and BGR images (converted by :func:`~evit_mm.sam.transforms.as_rgb_uint8`).

SAM's defaults (``points_per_side=32``, ``pred_iou_thresh=0.88``, ``stability_score_thresh=0.95``) are kept, as the
reference does; the reference's demo uses ``pred_iou_thresh=0.8, stability_score_thresh=0.85``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from segment_anything import SamAutomaticMaskGenerator

from .predictor import EfficientViTSamPredictor
from .transforms import as_rgb_uint8

__all__ = ['EfficientViTSamAutomaticMaskGenerator']


class EfficientViTSamAutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` with an :class:`EfficientViTSamPredictor`; see SAM's docs for the arguments."""

    def __init__(self, model, points_per_side: Optional[int] = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: Optional[List[np.ndarray]] = None,
                 min_mask_region_area: int = 0, output_mode: str = 'binary_mask') -> None:
        super().__init__(model, points_per_side=points_per_side, points_per_batch=points_per_batch,
                         pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                         stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
                         crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
                         crop_overlap_ratio=crop_overlap_ratio,
                         crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
                         min_mask_region_area=min_mask_region_area, output_mode=output_mode)
        self.predictor = EfficientViTSamPredictor(model)

    def generate(self, image, image_format: str = 'RGB') -> List[Dict[str, Any]]:
        """Masks for the whole image (records as ``SamAutomaticMaskGenerator.generate``)."""
        return super().generate(as_rgb_uint8(image, image_format))
