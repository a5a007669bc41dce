"""Model adapters: one small protocol that the evaluation talks to, for any SAM-style model.

A :class:`PromptableSegmenter` sets an image, then maps a batch of prompt sets (boxes, or clicks) to candidate
masks with scores; the evaluation keeps the candidate with the highest score (SAM's predicted IoU), as the
reference does with ``multimask_output=True``. Implementations:

* :class:`SamAdapter`: any ``segment_anything.SamPredictor``-compatible predictor, i.e. segment-anything's own
  ``SamPredictor`` (SAM ViT-B/L/H) and evit_mm's :class:`~evit_mm.sam.EfficientViTSamPredictor`
  (EfficientViT-SAM L0..XL1); built from a model with :meth:`SamAdapter.from_model`, or from a name with
  :func:`build_zero_shot_sam`;
* :class:`OracleSegmenter`: returns the ground-truth masks (optionally shifted by a fixed offset), for tests of
  the evaluation itself.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Hashable, List, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

__all__ = ['PromptableSegmenter', 'SamAdapter', 'OracleSegmenter', 'build_zero_shot_sam', 'SAM_MODEL_NAMES',
           'sam_registry_name', 'box_iou_xyxy']

#: Model names :func:`build_zero_shot_sam` knows (registry names; the short forms ``l0`` / ``vit_h`` work too).
SAM_MODEL_NAMES = ('efficientvit_sam_l0', 'efficientvit_sam_l1', 'efficientvit_sam_l2', 'efficientvit_sam_xl0',
                   'efficientvit_sam_xl1', 'sam_vit_b', 'sam_vit_l', 'sam_vit_h')


def sam_registry_name(name: str) -> str:
    """The registry name of a SAM-style model: ``'l0'``, ``'efficientvit-sam-l0'`` -> ``'efficientvit_sam_l0'``;
    ``'vit_h'`` -> ``'sam_vit_h'``. Unknown names raise ``ValueError`` listing :data:`SAM_MODEL_NAMES`."""
    key = str(name).strip().lower().replace('-', '_')
    if key.startswith('vit_'):
        key = 'sam_' + key
    elif not key.startswith(('efficientvit_sam_', 'sam_vit_')):
        key = 'efficientvit_sam_' + key.replace('efficientvit_', '').replace('sam_', '')
    if key not in SAM_MODEL_NAMES:
        raise ValueError(f'unknown SAM model {name!r}; known: {", ".join(SAM_MODEL_NAMES)}')
    return key


@runtime_checkable
class PromptableSegmenter(Protocol):
    """What the zero-shot evaluation needs from a model."""

    def set_image(self, image: np.ndarray, image_id: int, cache_key: Optional[Hashable] = None) -> None:
        """Prepare ``image`` (``(H, W, 3)`` uint8 RGB) of dataset image ``image_id``; ``cache_key`` (e.g. its
        path) identifies the same image across datasets."""

    def predict(self, boxes: Optional[np.ndarray] = None, point_coords: Optional[np.ndarray] = None,
                point_labels: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``B`` prompt sets -> ``(masks (B, C, H, W) bool, scores (B, C))``, in original image pixels.
        Either ``boxes`` ``(B, 4)`` XYXY, or ``point_coords`` ``(B, N, 2)`` (x, y) + ``point_labels`` ``(B, N)``
        (1 foreground, 0 background)."""


def build_zero_shot_sam(name: str, checkpoint: Optional[str] = None, device: str = 'cpu', pretrained: bool = False):
    """A SAM-style model by registry name (:data:`SAM_MODEL_NAMES`; also ``'l0'``, ``'vit_h'``), in eval mode:
    EfficientViT-SAM or segment-anything's SAM. ``checkpoint``: a path, a URL or an ``evit://`` name;
    ``pretrained=True``: the published weights (downloaded once, see :mod:`evit_mm.models.hub`); neither: random
    weights."""
    from ...models.registry import create_model
    model = create_model(sam_registry_name(name), pretrained=checkpoint or bool(pretrained))
    return model.to(device).eval()


class SamAdapter:
    """:class:`PromptableSegmenter` over a ``SamPredictor``-compatible predictor.

    Prompts go through ``predictor.transform`` (original pixels -> the 1024 prompt frame) and
    ``predictor.predict_torch`` with ``multimask_output=True``, in chunks of ``batch_size`` prompt sets.

    Args:
        predictor: a ``segment_anything.SamPredictor`` or :class:`~evit_mm.sam.EfficientViTSamPredictor`.
        batch_size: prompt sets per decoder call.
        cache_size: image embeddings kept (by ``cache_key``) so that an image evaluated again (another mode, or
            the same photograph in another dataset) skips the image encoder. 0 disables.
    """

    def __init__(self, predictor, batch_size: int = 32, cache_size: int = 0) -> None:
        self.predictor = predictor
        self.batch_size = int(batch_size)
        self.cache_size = int(cache_size)
        self._cache: 'OrderedDict[Hashable, dict]' = OrderedDict()
        self.encoder_calls = 0  #: how many images went through the image encoder

    @classmethod
    def from_model(cls, model, **kwargs) -> 'SamAdapter':
        """EfficientViT-SAM gets :class:`~evit_mm.sam.EfficientViTSamPredictor`, any other ``Sam`` segment-anything's
        ``SamPredictor``."""
        from segment_anything import SamPredictor

        from ...models.sam import EfficientViTSam
        from ..predictor import EfficientViTSamPredictor
        predictor = EfficientViTSamPredictor(model) if isinstance(model, EfficientViTSam) else SamPredictor(model)
        return cls(predictor, **kwargs)

    def set_image(self, image: np.ndarray, image_id: int, cache_key: Optional[Hashable] = None) -> None:
        p = self.predictor
        if cache_key is not None and cache_key in self._cache:
            self._cache.move_to_end(cache_key)
            self._restore(self._cache[cache_key])
            return
        p.set_image(image)
        self.encoder_calls += 1
        if cache_key is not None and self.cache_size > 0:
            self._cache[cache_key] = self._snapshot()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def _snapshot(self):
        """The state ``set_image`` left behind (embedding, sizes): EfficientViTSamPredictor's immutable per-thread
        image state, or a copy of a ``SamPredictor``'s attributes."""
        p = self.predictor
        if hasattr(p, '_set_state'):
            return p._state
        return {k: v for k, v in p.__dict__.items() if k != 'model'}

    def _restore(self, snapshot) -> None:
        if hasattr(self.predictor, '_set_state'):
            self.predictor._set_state(snapshot)
        else:
            self.predictor.__dict__.update(snapshot)

    def predict(self, boxes=None, point_coords=None, point_labels=None) -> Tuple[np.ndarray, np.ndarray]:
        import torch

        from ..prompts import SamPrompts
        p = self.predictor
        prompts = SamPrompts.as_tensors(point_coords, point_labels, boxes, device=p.device)
        prompts = prompts.to_prompt_frame(p.original_size, p.transform.target_length)
        masks, scores = [], []
        with torch.no_grad():
            for chunk in prompts.split(self.batch_size):
                m, iou, _ = p.predict_torch(multimask_output=True, **chunk.as_kwargs())
                masks.append(m.cpu().numpy())
                scores.append(iou.float().cpu().numpy())
        return np.concatenate(masks), np.concatenate(scores)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a (N, 4)`` and ``b (M, 4)`` (XYXY)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``mask`` moved by ``(dx, dy)`` pixels; what leaves the image is lost, what enters is background."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


class OracleSegmenter:
    """A "model" that answers every prompt with a ground-truth mask, to test the evaluation.

    A box gets the mask of the annotation whose box overlaps it most (box IoU >= ``min_box_iou``; else the box
    filled). Clicks get the mask of an annotation that holds every positive click and no negative one,
    preferring the annotation whose own first click (:class:`~.clicker.Clicker`: its deepest pixel) is the
    prompt's first click, so that nested or overlapping annotations are told apart; if no annotation fits all
    clicks, the first one under the first positive click (else an empty mask). The answer is moved by
    ``shift = (dx, dy)`` pixels. Three candidates are returned, the answer in the middle with the highest score
    (0.9) between an empty mask (0.5) and the full image (0.2), so that an evaluation that does not keep the
    highest-scoring candidate fails.

    Unshifted, it scores mIoU 100 and AP 1.0 unless two annotations of an image get the very same prompt: the
    same box (GT-box mode: the first of them is answered), or the same first click and both consistent with the
    clicks so far (points mode, e.g. concentric masks with the same deepest pixel): the prompt cannot tell them
    apart, so one of them scores below 100 (after one click; the clicker's next click separates them).

    Args:
        dataset: the :class:`~evit_mm.sam.zero_shot.data.ZeroShotDataset` whose ground truth to return.
    """

    def __init__(self, dataset, shift: Tuple[int, int] = (0, 0), min_box_iou: float = 0.5) -> None:
        self.dataset, self.shift, self.min_box_iou = dataset, tuple(int(v) for v in shift), min_box_iou
        self.image_id: Optional[int] = None
        self.calls: List[Dict[str, np.ndarray]] = []  #: every prompt batch received (for tests)

    def set_image(self, image: np.ndarray, image_id: int, cache_key: Optional[Hashable] = None) -> None:
        from .data import xywh_to_xyxy
        self.image_id, self.size = image_id, image.shape[:2]
        anns = self.dataset.anns_by_image[image_id]
        self.boxes = np.array([xywh_to_xyxy(a['bbox']) for a in anns], np.float64).reshape(-1, 4)
        self.masks = [self.dataset.gt_mask(a) for a in anns]
        self._first_clicks: Optional[List[Optional[Tuple[int, int]]]] = None  # computed when clicks come

    def _first_click(self, j: int) -> Optional[Tuple[int, int]]:
        """``(x, y)`` of the clicker's first click on annotation ``j`` (None for an empty mask)."""
        from .clicker import Clicker
        if self._first_clicks is None:
            self._first_clicks = [None] * len(self.masks)
            for k, m in enumerate(self.masks):
                c = Clicker(m).next_click(None) if m.any() else None
                self._first_clicks[k] = (c.x, c.y) if c is not None else None
        return self._first_clicks[j]

    def _click_answer(self, coords: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The ground-truth mask the clicks ``coords (N, 2)``, ``labels (N,)`` point at (class docstring)."""
        h, w = self.size
        xy = [(int(round(x)), int(round(y)), int(lab)) for (x, y), lab in zip(coords, labels)]
        inside = [(x, y, lab) for x, y, lab in xy if 0 <= y < h and 0 <= x < w]
        fits = [j for j, m in enumerate(self.masks) if all(bool(m[y, x]) == (lab == 1) for x, y, lab in inside)]
        if not fits:
            positive = [(x, y) for x, y, lab in inside if lab == 1][:1]
            fits = [j for j, m in enumerate(self.masks) if positive and m[positive[0][1], positive[0][0]]]
        if not fits:
            return np.zeros((h, w), bool)
        first = xy[0][:2] if xy and xy[0][2] == 1 else None
        same_start = [j for j in fits if first is not None and self._first_click(j) == first]
        return self.masks[(same_start or fits)[0]]

    def _answer(self, mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        mask = _shift(mask, *self.shift)
        return np.stack([np.zeros_like(mask), mask, np.ones_like(mask)]), np.array([0.5, 0.9, 0.2], np.float32)

    def predict(self, boxes=None, point_coords=None, point_labels=None) -> Tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        out = []
        if boxes is not None:
            self.calls.append({'boxes': np.asarray(boxes).copy()})
            ious = box_iou_xyxy(boxes, self.boxes)
            for i, box in enumerate(np.asarray(boxes)):
                j = int(ious[i].argmax()) if ious.shape[1] else -1
                if j >= 0 and ious[i, j] >= self.min_box_iou:
                    out.append(self._answer(self.masks[j]))
                else:
                    filled = np.zeros((h, w), bool)
                    x0, y0, x1, y1 = (int(round(v)) for v in box)
                    filled[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
                    out.append(self._answer(filled))
        else:
            self.calls.append({'point_coords': np.asarray(point_coords).copy(),
                               'point_labels': np.asarray(point_labels).copy()})
            for coords, labels in zip(np.asarray(point_coords), np.asarray(point_labels)):
                out.append(self._answer(self._click_answer(coords, labels)))
        return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])
