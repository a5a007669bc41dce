"""Data transforms for the reference's evaluation protocol."""
from __future__ import annotations

import math

from mmseg.datasets.transforms import Resize
from mmseg.registry import TRANSFORMS

__all__ = ['ShortSideResize']


@TRANSFORMS.register_module()
class ShortSideResize(Resize):
    """Resize the short side to ``short_side`` and the long side to the next multiple of ``size_divisor`` of its
    aspect-preserving length: the reference's ADE20K evaluation resize.

    ``eval_efficientvit_seg_model.py`` (``ADE20KDataset.__getitem__``) computes, for an ``h x w`` image::

        if h < w: th = crop_size; tw = ceil(w / h * th / 32) * 32
        else:     tw = crop_size; th = ceil(h / w * tw / 32) * 32
        image = cv2.resize(image, (tw, th), interpolation=cv2.INTER_CUBIC)   # skipped if the size is unchanged

    (so a 512 x 683 image becomes 512 x 704: the long side is rounded *up*, the aspect ratio changes slightly).
    With the defaults (``interpolation='bicubic'``, ``backend='cv2'``) mmcv calls the same ``cv2.resize``. Like
    mmseg's ``Resize``, it also resizes ``gt_seg_map`` if present; the reference protocol loads the annotation
    after this transform, keeping labels (and the metric) at the original resolution.

    Args:
        short_side: target length of the shorter side (the reference's ``crop_size``, 512 for ADE20K).
        size_divisor: the longer side is rounded up to a multiple of this (32).
        interpolation: image interpolation (``'bicubic'`` = ``cv2.INTER_CUBIC``).
        backend: ``'cv2'`` (as the reference) or ``'pillow'``.
    """

    def __init__(self, short_side: int = 512, size_divisor: int = 32, interpolation: str = 'bicubic',
                 backend: str = 'cv2'):
        super().__init__(scale=(short_side, short_side), keep_ratio=False, interpolation=interpolation,
                         backend=backend)
        if short_side < 1 or size_divisor < 1:
            raise ValueError('short_side and size_divisor must be positive')
        self.short_side = int(short_side)
        self.size_divisor = int(size_divisor)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """``(height, width)`` after resizing an ``h x w`` image (the reference's formula)."""
        s, d = self.short_side, self.size_divisor
        if h < w:
            return s, math.ceil(w / h * s / d) * d
        return math.ceil(h / w * s / d) * d, s

    def transform(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        th, tw = self.target_size(h, w)
        if (th, tw) == (h, w):  # the reference skips cv2.resize then
            results['img_shape'] = (h, w)
            results['scale'] = (w, h)
            results['scale_factor'] = (1.0, 1.0)
            results['keep_ratio'] = False
            return results
        results['scale'] = (tw, th)  # mmcv takes (w, h)
        self._resize_img(results)
        self._resize_bboxes(results)
        self._resize_seg(results)
        self._resize_keypoints(results)
        return results

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(short_side={self.short_side}, size_divisor={self.size_divisor}, '
                f'interpolation={self.interpolation!r}, backend={self.backend!r})')
