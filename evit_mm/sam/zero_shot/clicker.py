"""The interactive clicker of the point-prompted protocol (RITM's, as used by EfficientViT-SAM's evaluation).

Given the ground-truth mask and the current prediction, the next click goes to the point of the larger error
region that is farthest from that region's boundary:

* false negatives (GT and not predicted) vs false positives (predicted and not GT): whichever region's
  distance-transform maximum is larger; **ties go to the false positives** (a negative click), as in the
  reference (``is_positive = fn_max > fp_max``);
* the distance transform is the exact Euclidean one (``scipy.ndimage.distance_transform_edt``, equal to the
  reference's ``cv2.distanceTransform(DIST_L2, 0)``) of the region **padded by one background pixel**, so the
  image border counts as boundary: a region touching the border has its deepest point inside, not on the edge;
* already clicked pixels are excluded (their distance is set to 0);
* among equally distant pixels the first in row-major order wins (smallest y, then smallest x), as
  ``np.where(dt == max)[0]`` in the reference.

The first click (empty prediction) is therefore the interior point of the GT mask farthest from its boundary.

Two differences from the reference:

* **The clicker stops** when no error pixel is left to click: the prediction is perfect, *or every error pixel
  was already clicked* (e.g. a 1-pixel mask whose click the model ignored). :meth:`Clicker.next_click` then
  returns ``None``, and the evaluation keeps the last prediction for the remaining rounds (no new click, no new
  model call). The reference would place a negative click at pixel (0, 0) (the first pixel of an all-zero
  distance map), whatever lies there, and ask the model again.
* **Ties are broken on exact distances.** scipy's transform is float64 and exact: pixels at the same distance
  (e.g. 7 and 7) compare equal, and the first in row-major order wins. The reference's
  ``cv2.distanceTransform`` returns float32 values with rounding noise (7.0 at one pixel, 7.0000005 at an
  equally distant one), so where several pixels are equally deep it may pick another of them (e.g. the row
  below), and an exact tie between the FN and FP maxima may go either way. The click then lands on a pixel as
  deep as ours, but elsewhere, and a real model's answer can differ. This happens on about 2 % of random
  blob-shaped masks (a 14 x 17 rectangle is one); the values agree to 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

__all__ = ['Click', 'Clicker', 'padded_distance']


@dataclass(frozen=True)
class Click:
    """A click at pixel ``(x, y)``; ``positive`` = foreground (label 1), else background (label 0)."""
    x: int
    y: int
    positive: bool

    @property
    def label(self) -> int:
        return int(self.positive)


def padded_distance(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each pixel of ``region`` to the nearest pixel outside it, the image border counting
    as outside (0 outside the region)."""
    padded = np.pad(region.astype(bool), 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


class Clicker:
    """Simulated user for one ground-truth mask (``(H, W)`` bool); see the module docstring for the rules."""

    def __init__(self, gt_mask: np.ndarray) -> None:
        gt = np.asarray(gt_mask)
        if gt.ndim != 2:
            raise ValueError(f'gt_mask must be (H, W), got {gt.shape}')
        self.gt = gt.astype(bool)
        self.not_clicked = np.ones_like(self.gt)
        self.clicks: List[Click] = []

    def next_click(self, pred_mask: Optional[np.ndarray] = None) -> Optional[Click]:
        """The next click for prediction ``pred_mask`` (None: nothing predicted yet); it is recorded. ``None``
        when no error pixel is left to click: the prediction is perfect, or every error pixel was clicked
        already (module docstring)."""
        pred = np.zeros_like(self.gt) if pred_mask is None else np.asarray(pred_mask).astype(bool)
        if pred.shape != self.gt.shape:
            raise ValueError(f'prediction {pred.shape} and ground truth {self.gt.shape} differ in size')
        fn = padded_distance(self.gt & ~pred) * self.not_clicked
        fp = padded_distance(~self.gt & pred) * self.not_clicked
        fn_max, fp_max = fn.max(), fp.max()
        if fn_max == 0 and fp_max == 0:
            return None
        positive = bool(fn_max > fp_max)
        dist, dmax = (fn, fn_max) if positive else (fp, fp_max)
        ys, xs = np.nonzero(dist == dmax)  # row-major: the first is the smallest y, then x
        click = Click(int(xs[0]), int(ys[0]), positive)
        self.clicks.append(click)
        self.not_clicked[click.y, click.x] = False
        return click

    def prompt(self) -> Tuple[np.ndarray, np.ndarray]:
        """All clicks so far as SAM prompts: ``(N, 2)`` float (x, y) pixel coordinates and ``(N,)`` labels."""
        coords = np.array([[c.x, c.y] for c in self.clicks], np.float64).reshape(-1, 2)
        labels = np.array([c.label for c in self.clicks], np.int64)
        return coords, labels
