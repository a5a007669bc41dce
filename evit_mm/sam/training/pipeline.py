"""The data pipeline of EfficientViT-SAM training: mmengine ``TRANSFORMS`` (plain callables on a results dict).

A sample enters the pipeline as the datasets build it: ``img`` (HxWx3 uint8 RGB), ``gt_masks`` (NxHxW bool,
phase 2), ``rng`` (a ``numpy.random.Generator`` seeded from (seed, pass over the data, index), so that every
random choice of a sample is reproducible, also after resuming) and, with an embedding cache,
``teacher_embedding`` (+ ``teacher_embedding_hflip``). The transforms follow the reference trainer:

``SamRandomFlip`` -> ``SamResizeLongestSide`` (PIL bilinear, as SAM's ``ResizeLongestSide.apply_image``; masks
the same way, which makes them soft, as in the reference) -> ``SamPad`` (bottom/right, to the square encoder
input) -> ``SamSamplePrompts`` (phase 2; prompt-frame arithmetic from :mod:`evit_mm.sam.prompts`) ->
``SamPackInputs``.

The image is padded with SAM's pixel mean, so that after the data preprocessor's normalisation the padding is
exactly 0: the same tensor as the reference's normalise-then-zero-pad.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from mmengine.registry import TRANSFORMS
from mmengine.structures import BaseDataElement
from PIL import Image

from ...models.sam import SAM_PIXEL_MEAN
from ..prompts import PromptFrame, pad_point_sets
from ..transforms import resize_longest_side

__all__ = ['SamRandomFlip', 'SamResizeLongestSide', 'SamPad', 'SamSamplePrompts', 'SamPackInputs',
           'resize_masks', 'pad_image']


def resize_masks(masks: np.ndarray, shape) -> np.ndarray:
    """Resize ``(N, H, W)`` bool/uint8 masks to ``shape = (h, w)`` as the image (PIL bilinear, antialiased when
    shrinking): soft ``uint8`` masks, 0-255."""
    h, w = int(shape[0]), int(shape[1])
    out = np.empty((len(masks), h, w), np.uint8)
    for i, m in enumerate(masks):
        m = m.astype(np.uint8) * 255 if m.dtype == bool else m
        out[i] = np.asarray(Image.fromarray(m).resize((w, h), Image.BILINEAR))
    return out


def pad_image(image: np.ndarray, size: int) -> np.ndarray:
    """``(h, w, 3)`` -> ``(size, size, 3)`` float32, padded at the bottom/right with SAM's pixel mean."""
    h, w = image.shape[:2]
    out = np.empty((size, size, 3), np.float32)
    out[...] = np.asarray(SAM_PIXEL_MEAN, np.float32)
    out[:h, :w] = image
    return out


@TRANSFORMS.register_module()
class SamRandomFlip:
    """Horizontal flip with probability ``prob`` (image, masks; a cached teacher embedding is swapped for the
    cached embedding of the flipped image). The random draw is always made, so that ``prob=0`` and ``prob=0.5``
    consume a sample's random stream alike."""

    def __init__(self, prob: float = 0.5):
        if not 0 <= prob <= 1:
            raise ValueError(f'prob must lie in [0, 1], got {prob}')
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        flip = bool(results['rng'].random() < self.prob)
        results['flip'] = flip
        if not flip:
            return results
        results['img'] = np.ascontiguousarray(results['img'][:, ::-1])
        if 'gt_masks' in results:
            results['gt_masks'] = np.ascontiguousarray(results['gt_masks'][:, :, ::-1])
        if 'teacher_embedding' in results:
            flipped = results.get('teacher_embedding_hflip')
            if flipped is None:
                raise RuntimeError(f'{results.get("img_path")}: the teacher-embedding cache holds no embeddings of '
                                   'flipped images; rebuild it with tools/sam_cache_teacher_embeddings.py --hflip, '
                                   'or set SamRandomFlip(prob=0)')
            results['teacher_embedding'] = flipped
        results.pop('teacher_embedding_hflip', None)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(prob={self.prob})'


@TRANSFORMS.register_module()
class SamResizeLongestSide:
    """Resize the image (and masks) to longest side ``size`` (the encoder input), as SAM's preprocessing.

    With ``teacher_size`` (phase 1, online teacher), ``teacher_img`` is the same image resized to the teacher's
    input size; skipped when the sample already carries a cached ``teacher_embedding``.
    """

    def __init__(self, size: int, teacher_size: Optional[int] = None):
        self.size = int(size)
        self.teacher_size = None if teacher_size is None else int(teacher_size)

    def __call__(self, results: dict) -> dict:
        img = results['img']
        if self.teacher_size is not None and 'teacher_embedding' not in results:
            results['teacher_img'] = resize_longest_side(img, self.teacher_size)
        results['img'] = resize_longest_side(img, self.size)
        shape = results['img'].shape[:2]
        results['img_shape'] = shape
        if 'gt_masks' in results:
            results['gt_masks'] = resize_masks(results['gt_masks'], shape)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size}, teacher_size={self.teacher_size})'


@TRANSFORMS.register_module()
class SamPad:
    """Pad the image (with SAM's pixel mean: 0 after normalisation) and the masks (with 0) at the bottom/right to
    ``size x size``; ``teacher_img`` to ``teacher_size``."""

    def __init__(self, size: int, teacher_size: Optional[int] = None):
        self.size = int(size)
        self.teacher_size = None if teacher_size is None else int(teacher_size)

    def __call__(self, results: dict) -> dict:
        h, w = results['img'].shape[:2]
        if h > self.size or w > self.size:
            raise ValueError(f'{results.get("img_path")}: image of {h}x{w} is larger than the pad size {self.size}; '
                             'resize it first (SamResizeLongestSide)')
        results['img'] = pad_image(results['img'], self.size)
        if 'gt_masks' in results:
            masks = results['gt_masks']
            out = np.zeros((len(masks), self.size, self.size), masks.dtype)
            out[:, :h, :w] = masks
            results['gt_masks'] = out
        if 'teacher_img' in results:
            if self.teacher_size is None:
                raise ValueError('SamPad needs teacher_size to pad teacher_img')
            results['teacher_img'] = pad_image(results['teacher_img'], self.teacher_size)
        return results

    def __repr__(self):
        return f'{type(self).__name__}(size={self.size}, teacher_size={self.teacher_size})'


@TRANSFORMS.register_module()
class SamSamplePrompts:
    """The reference trainer's prompts, drawn per image from the sample's random stream.

    With probability ``box_prob`` every mask is prompted by its box; otherwise by ``n`` positive points drawn
    uniformly from the mask (``n`` uniform in ``[1, max_points]``, the same for all masks of the image). Multimask
    output is switched on with probability ``multimask_prob``. Coordinates are in SAM's prompt frame
    (``prompt_size`` = 1024): the padded encoder square scaled by ``prompt_size / size``. A mask pixel counts as
    foreground from 50% coverage on (the resized masks are soft).
    """

    def __init__(self, box_prob: float = 0.5, max_points: int = 10, multimask_prob: float = 0.5,
                 prompt_size: int = 1024):
        if max_points < 1:
            raise ValueError(f'max_points must be >= 1, got {max_points}')
        self.box_prob, self.max_points, self.multimask_prob = box_prob, int(max_points), multimask_prob
        self.prompt_size = int(prompt_size)

    def __call__(self, results: dict) -> dict:
        rng = results['rng']
        masks = results['gt_masks']
        use_box = bool(rng.random() < self.box_prob)
        results['multimask'] = bool(rng.random() < self.multimask_prob)
        num_points = int(rng.integers(1, self.max_points + 1))
        frame = PromptFrame.of_square(masks.shape[-1], self.prompt_size)
        boxes, points = [], []
        for m in masks:
            ys, xs = np.nonzero(m >= 128)
            if len(xs) == 0:  # a sliver that the resize thinned below 50%: use its strongest pixels
                ys, xs = np.nonzero(m == m.max())
            if use_box:
                boxes.append(frame.pixel_box(xs, ys))
            else:
                pick = rng.choice(len(xs), num_points, replace=len(xs) < num_points)
                points.append(frame.pixel_centres(xs[pick], ys[pick]))
        if use_box:
            results['boxes'] = np.asarray(boxes, np.float32)
        else:
            coords, labels = pad_point_sets(points, [np.ones(len(p), np.int64) for p in points])
            results['point_coords'] = coords.astype(np.float32)
            results['point_labels'] = labels
        return results

    def __repr__(self):
        return (f'{type(self).__name__}(box_prob={self.box_prob}, max_points={self.max_points}, '
                f'multimask_prob={self.multimask_prob}, prompt_size={self.prompt_size})')


@TRANSFORMS.register_module()
class SamPackInputs:
    """Pack into mmengine's ``dict(inputs=(3, S, S) float tensor, data_samples=BaseDataElement)``.

    Data fields (tensors, moved to the device by the data preprocessor): ``gt_masks`` (N, S, S) uint8,
    ``boxes`` / ``point_coords`` + ``point_labels``, ``teacher_img`` (3, T, T), ``teacher_embedding``.
    Meta fields: ``meta_keys`` (``multimask``, ``sample_seed`` and the image's ids and shapes).
    """

    DATA_KEYS = ('gt_masks', 'boxes', 'point_coords', 'point_labels', 'teacher_img', 'teacher_embedding')

    def __init__(self, meta_keys: Sequence[str] = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'flip',
                                                   'multimask', 'sample_seed')):
        self.meta_keys = tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        img = results['img']
        inputs = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
        data = {}
        for key in self.DATA_KEYS:
            if key not in results:
                continue
            value = results[key]
            if key == 'teacher_img':
                value = value.transpose(2, 0, 1)
            data[key] = torch.from_numpy(np.ascontiguousarray(value))
        meta = {k: results[k] for k in self.meta_keys if k in results}
        return dict(inputs=inputs, data_samples=BaseDataElement(metainfo=meta, **data))

    def __repr__(self):
        return f'{type(self).__name__}(meta_keys={self.meta_keys})'

