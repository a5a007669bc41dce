"""SAM prompts in one type: points + labels, boxes and mask inputs (:class:`SamPrompts`).

Everything that hands prompts to SAM's prompt encoder goes through this module, so that a new kind of prompt has
one home:

* :class:`~evit_mm.sam.predictor.EfficientViTSamPredictor`: ``predict`` takes numpy prompts in original-image
  pixels (:meth:`SamPrompts.from_arrays`: numeric conversion, shapes, one or ``B`` prompt sets, the move to the
  prompt frame), ``predict_torch`` tensors already in the prompt frame; both are checked by
  :meth:`SamPrompts.checked`, and the model sees them through :meth:`SamPrompts.encode`;
* training (:mod:`evit_mm.sam.training`): ``SamSamplePrompts`` draws prompts in the padded encoder square and
  maps them with :meth:`PromptFrame.of_square`; ``SamE2EModel.decode`` encodes a sample's prompts
  (:meth:`SamPrompts.from_sample`, :meth:`SamPrompts.encode`);
* the zero-shot evaluation: :class:`~evit_mm.sam.zero_shot.adapters.SamAdapter` maps original-pixel prompts
  (:meth:`SamPrompts.to_prompt_frame`) and runs them in chunks (:meth:`SamPrompts.split`); the clicks of several
  annotations are batched with :func:`pad_point_sets`;
* ONNX: :func:`evit_mm.sam.onnx.decoder_inputs` uses :meth:`SamPrompts.onnx_inputs`, the layout of
  segment-anything's decoder graph (a box as two corner points, a padding point without a box).

**Frames.** SAM's prompt encoder takes coordinates in the *prompt frame*: the image resized to longest side
``prompt_size`` = 1024, whatever the image encoder's input size (512 for EfficientViT-SAM L0-L2).
:meth:`PromptFrame.of_image` maps original-image pixels there exactly as segment-anything's
``ResizeLongestSide(1024).apply_coords`` / ``apply_coords_torch`` (numpy in float64, tensors in float32).

It imports no mm library (the training and the mmengine metric use it through their own modules).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .transforms import get_preprocess_shape

__all__ = ['SamPrompts', 'PromptFrame', 'pad_point_sets', 'VALID_POINT_LABELS', 'PAD_LABEL']

#: SAM's point labels: -1 padding (ignored), 0 background, 1 foreground, 2/3 box corners.
VALID_POINT_LABELS = (-1, 0, 1, 2, 3)
#: The label of a padding point (SAM gives it the "not a point" embedding).
PAD_LABEL = -1

ArrayLike = Union[np.ndarray, Sequence, torch.Tensor]


def _as_numpy(x, what: str, dtype=np.float64) -> Optional[np.ndarray]:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f'{what} must be a numeric array, got {type(x).__name__}: {e}') from None


def _tensor(a, device, dtype=torch.float32) -> Optional[torch.Tensor]:
    """``a`` (a tensor, an array or a list; ``None`` stays ``None``) as a ``dtype`` tensor on ``device``."""
    if a is None:
        return None
    if not isinstance(a, torch.Tensor):
        a = np.asarray(a, np.float32) if dtype == torch.float32 else np.asarray(a)
    return torch.as_tensor(a, dtype=dtype, device=device)


class PromptFrame:
    """A map of pixel coordinates to SAM's prompt frame: ``(x, y) -> (x * sx, y * sy)``.

    :meth:`of_image`: an ``(H, W)`` image resized to longest side ``prompt_size`` (SAM's rounding), what the
    predictor and the zero-shot evaluation use; :meth:`of_square`: the padded ``size x size`` encoder square of
    training, scaled to ``prompt_size``.
    """

    __slots__ = ('sx', 'sy')

    def __init__(self, sx: float, sy: float) -> None:
        self.sx, self.sy = sx, sy

    @classmethod
    def of_image(cls, original_size: Sequence[int], prompt_size: int = 1024) -> 'PromptFrame':
        old_h, old_w = int(original_size[0]), int(original_size[1])
        new_h, new_w = get_preprocess_shape(old_h, old_w, prompt_size)
        return cls(new_w / old_w, new_h / old_h)

    @classmethod
    def of_square(cls, size: int, prompt_size: int = 1024) -> 'PromptFrame':
        scale = prompt_size / size
        return cls(scale, scale)

    def points(self, coords):
        """``(..., 2)`` (x, y) coordinates in the prompt frame: a new float64 array for numpy input (lists too), a
        new float32 tensor for a tensor (the arithmetic of ``apply_coords`` / ``apply_coords_torch``)."""
        if isinstance(coords, torch.Tensor):
            out = coords.to(torch.float32, copy=True)
        else:
            out = np.array(coords, dtype=np.float64)
        out[..., 0] *= self.sx
        out[..., 1] *= self.sy
        return out

    def boxes(self, boxes):
        """XYXY boxes ``(..., 4)`` -> ``(K, 4)`` in the prompt frame (each corner as :meth:`points`)."""
        if not isinstance(boxes, torch.Tensor):
            boxes = np.asarray(boxes)
        return self.points(boxes.reshape(-1, 2, 2)).reshape(-1, 4)

    def pixel_centres(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The centres of the integer pixels ``(xs[i], ys[i])`` as ``(K, 2)`` float64 prompt-frame coordinates in
        SAM's point convention (the prompt encoder adds 0.5 itself, so a centre is ``(x + 0.5) * s - 0.5``)."""
        return np.stack([(xs + 0.5) * self.sx - 0.5, (ys + 0.5) * self.sy - 0.5], -1)

    def pixel_box(self, xs: np.ndarray, ys: np.ndarray) -> List[float]:
        """The XYXY box that covers the integer pixels ``(xs[i], ys[i])`` (their outer edges), in the prompt
        frame."""
        return [xs.min() * self.sx, ys.min() * self.sy, (xs.max() + 1) * self.sx, (ys.max() + 1) * self.sy]

    def __repr__(self) -> str:
        return f'{type(self).__name__}(sx={self.sx!r}, sy={self.sy!r})'


def pad_point_sets(point_coords: Sequence, point_labels: Sequence,
                   pad_label: int = PAD_LABEL) -> Tuple[np.ndarray, np.ndarray]:
    """Batch ``B`` point sets of different lengths: ``(N_i, 2)`` coordinates and ``(N_i,)`` labels -> ``(B, N, 2)``
    float64 and ``(B, N)`` int64 with ``N = max N_i``, the shorter sets filled up with points ``(0, 0)`` labelled
    ``pad_label`` (-1: SAM ignores them). Sets of equal length are stacked unchanged."""
    if len(point_coords) != len(point_labels):
        raise ValueError(f'{len(point_coords)} point sets but {len(point_labels)} label sets')
    coords = [np.asarray(c, np.float64).reshape(-1, 2) for c in point_coords]
    labels = [np.asarray(lab).reshape(-1) for lab in point_labels]
    for i, (c, lab) in enumerate(zip(coords, labels)):
        if len(c) != len(lab):
            raise ValueError(f'point set {i}: {len(c)} points but {len(lab)} labels')
    n = max((len(c) for c in coords), default=0)
    out_coords = np.zeros((len(coords), n, 2), np.float64)
    out_labels = np.full((len(coords), n), pad_label, np.int64)
    for i, (c, lab) in enumerate(zip(coords, labels)):
        out_coords[i, :len(c)] = c
        out_labels[i, :len(lab)] = lab
    return out_coords, out_labels


@dataclass(frozen=True)
class SamPrompts:
    """``B`` prompt sets for SAM's prompt encoder; each field ``None`` or a tensor with ``B`` rows.

    Attributes:
        point_coords: ``(B, N, 2)`` (x, y) points in the prompt frame.
        point_labels: ``(B, N)`` labels (:data:`VALID_POINT_LABELS`: 1 foreground, 0 background, -1 padding,
            2/3 box corners).
        boxes: ``(B, 4)`` XYXY boxes in the prompt frame.
        mask_input: ``(B, 1, 256, 256)`` low-res mask logits (a previous prediction).
        batched: whether the caller gave ``B`` prompt sets (outputs keep the leading ``B``) or one (``predict``
            returns ``(C, H, W)``).

    Built by :meth:`from_arrays` (numpy prompts in original-image pixels, as ``SamPredictor.predict`` takes them),
    directly from prompt-frame tensors (as ``predict_torch`` takes them), :meth:`from_sample` (training) or
    :meth:`as_tensors` + :meth:`to_prompt_frame` (original-pixel batches). :meth:`checked` validates them for the
    model.
    """

    point_coords: Optional[torch.Tensor] = None
    point_labels: Optional[torch.Tensor] = None
    boxes: Optional[torch.Tensor] = None
    mask_input: Optional[torch.Tensor] = None
    batched: bool = True

    # ------------------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, point_coords: Optional[ArrayLike] = None, point_labels: Optional[ArrayLike] = None,
                    box: Optional[ArrayLike] = None, mask_input: Optional[ArrayLike] = None, *,
                    original_size: Sequence[int], prompt_size: int = 1024,
                    device: Union[str, torch.device, None] = None) -> 'SamPrompts':
        """Prompts as ``SamPredictor.predict`` takes them (original-image pixels; numpy, lists or tensors), as
        float32 tensors (labels int32) on ``device`` in the prompt frame of an ``original_size`` image.

        ``point_coords`` ``(N, 2)`` or ``(B, N, 2)``, ``point_labels`` ``(N,)`` / ``(B, N)``, ``box`` ``(4,)`` or
        ``(B, 4)``, ``mask_input`` ``(256, 256)``, ``(1, 256, 256)`` or ``(B, 1, 256, 256)``; ``batched`` is set
        when ``B`` prompt sets were given (``(B, N, 2)`` points, more than one box, or ``(B, 1, 256, 256)``
        masks). Empty arrays (``N = 0`` points, ``(0, 4)`` boxes) count as not given. Raises ``ValueError`` for
        non-numeric input, labels without points and the other way round, shapes that do not fit and non-integer
        labels; the other checks are :meth:`checked`'s.
        """
        raw = (_as_numpy(point_coords, 'point_coords'), _as_numpy(point_labels, 'point_labels'),
               _as_numpy(box, 'box'), _as_numpy(mask_input, 'mask_input', np.float32))
        coords, labels = _points_from_arrays(*raw[:2], point_coords, point_labels)
        boxes = _boxes_from_arrays(raw[2], box)
        masks = _mask_input_from_arrays(raw[3])
        # B prompt sets: (B, N, 2) points, more than one box or (B, 1, 256, 256) masks
        batched = ((coords is not None and raw[0].ndim == 3) or (boxes is not None and boxes.shape[0] > 1)
                   or (masks is not None and raw[3].ndim == 4))
        if coords is not None or boxes is not None:
            frame = PromptFrame.of_image(original_size, prompt_size)
            coords = None if coords is None else frame.points(coords)
            boxes = None if boxes is None else frame.boxes(boxes)

        return cls(_tensor(coords, device), _tensor(labels, device, torch.int), _tensor(boxes, device),
                   _tensor(masks, device), batched)

    @classmethod
    def as_tensors(cls, point_coords: Optional[ArrayLike] = None, point_labels: Optional[ArrayLike] = None,
                   boxes: Optional[ArrayLike] = None, mask_input: Optional[ArrayLike] = None,
                   device: Union[str, torch.device, None] = None) -> 'SamPrompts':
        """Batched prompts (``(B, N, 2)``, ``(B, N)``, ``(B, 4)``, ``(B, 1, 256, 256)``) as tensors on ``device``:
        float32, labels int32; nothing is checked or moved between frames."""
        return cls(_tensor(point_coords, device), _tensor(point_labels, device, torch.int), _tensor(boxes, device),
                   _tensor(mask_input, device))

    @classmethod
    def from_sample(cls, sample) -> 'SamPrompts':
        """The prompts of a training sample (an mmengine data element or any object with the fields
        ``point_coords`` + ``point_labels`` and/or ``boxes``, absent when not used)."""
        return cls(getattr(sample, 'point_coords', None), getattr(sample, 'point_labels', None),
                   getattr(sample, 'boxes', None), getattr(sample, 'mask_input', None))

    # ------------------------------------------------------------------------------------------------------
    # frames, batches
    # ------------------------------------------------------------------------------------------------------
    def _fields(self) -> Tuple[Optional[torch.Tensor], ...]:
        return self.point_coords, self.point_labels, self.boxes, self.mask_input

    @property
    def batch_size(self) -> int:
        """``B``, read from the first prompt given (0 without any)."""
        for t in self._fields():
            if t is not None:
                return int(t.shape[0])
        return 0

    def to_prompt_frame(self, original_size: Sequence[int], prompt_size: int = 1024) -> 'SamPrompts':
        """Points and boxes given in the pixels of an ``original_size`` image, moved to the prompt frame (float32,
        as ``ResizeLongestSide.apply_coords_torch`` / ``apply_boxes_torch``)."""
        frame = PromptFrame.of_image(original_size, prompt_size)
        return SamPrompts(None if self.point_coords is None else frame.points(self.point_coords), self.point_labels,
                          None if self.boxes is None else frame.boxes(self.boxes), self.mask_input, self.batched)

    def split(self, size: int) -> Iterator['SamPrompts']:
        """Consecutive chunks of at most ``size`` prompt sets."""
        if size < 1:
            raise ValueError(f'chunk size must be >= 1, got {size}')
        for start in range(0, self.batch_size, size):
            yield SamPrompts(*(None if t is None else t[start:start + size] for t in self._fields()), batched=True)

    def as_kwargs(self) -> Dict[str, Optional[torch.Tensor]]:
        """``point_coords``, ``point_labels``, ``boxes``, ``mask_input``: the prompt arguments of
        ``SamPredictor.predict_torch``."""
        return dict(point_coords=self.point_coords, point_labels=self.point_labels, boxes=self.boxes,
                    mask_input=self.mask_input)

    # ------------------------------------------------------------------------------------------------------
    # checks and use
    # ------------------------------------------------------------------------------------------------------
    def checked(self, input_size: Sequence[int], mask_input_size: Sequence[int] = (256, 256),
                device: Union[str, torch.device, None] = None) -> 'SamPrompts':
        """These prompts, validated for an image of ``input_size`` ``(h, w)`` in the prompt frame, on ``device``:
        coordinates, boxes and masks float32, labels int32, empty points and boxes as ``None``, ``(B, 1, 4)``
        boxes as ``(B, 4)``, boxes clipped to the image.

        ``ValueError`` for: shapes that do not fit and prompts that disagree on ``B``; labels without points and
        the other way round; NaN or infinite values; labels that are not integers or not in
        :data:`VALID_POINT_LABELS`; boxes with ``x1 < x0`` or ``y1 < y0`` and boxes entirely outside the image;
        mask inputs that are not ``(B, 1, *mask_input_size)``; no prompt at all (points with ``N = 0`` count as
        none), and a prompt set of only padding points (label -1) without a box or mask input. Points outside the
        image are passed on (SAM accepts them).
        """
        point_coords, point_labels = _checked_points(self.point_coords, self.point_labels, device)
        boxes = _checked_boxes(self.boxes, input_size, device)
        mask_input = _checked_mask_input(self.mask_input, mask_input_size, device)
        bs = {t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None}
        if not bs:
            raise ValueError('no prompt given: pass point_coords + point_labels, a box and/or mask_input')
        if len(bs) > 1:
            raise ValueError(f'the prompts disagree on the batch size B: {sorted(bs)}')
        if point_coords is not None and boxes is None and mask_input is None:
            padding_only = (point_labels == PAD_LABEL).all(dim=1)
            if padding_only.any():
                raise ValueError(f'prompt set(s) {padding_only.nonzero()[:, 0].tolist()} hold only padding points '
                                 '(label -1, which SAM ignores) and no box or mask_input: no prompt given')
        return SamPrompts(point_coords, point_labels, boxes, mask_input, self.batched)

    def encode(self, prompt_encoder) -> Tuple[torch.Tensor, torch.Tensor]:
        """``prompt_encoder(points=..., boxes=..., masks=...)``: SAM's sparse and dense prompt embeddings."""
        points = (self.point_coords, self.point_labels) if self.point_coords is not None else None
        return prompt_encoder(points=points, boxes=self.boxes, masks=self.mask_input)

    def onnx_inputs(self, mask_input_size: Sequence[int] = (256, 256)) -> Dict[str, np.ndarray]:
        """One prompt set in the layout of segment-anything's ONNX decoder (as its notebook builds it):
        ``point_coords`` ``(1, M, 2)`` and ``point_labels`` ``(1, M)`` float32, where the box (if any) is appended
        as two corner points labelled 2 and 3, and without a box a padding point ``(0, 0)`` labelled -1;
        ``mask_input`` ``(1, 1, 256, 256)`` (zeros without one) and ``has_mask_input`` ``(1,)``."""
        if self.batch_size > 1:
            raise ValueError(f'the ONNX decoder takes one prompt set, got {self.batch_size}')
        coords: List[np.ndarray] = []
        labels: List[np.ndarray] = []
        if self.point_coords is not None:
            coords.append(self.point_coords.detach().cpu().numpy().reshape(-1, 2))
            labels.append(self.point_labels.detach().cpu().numpy().reshape(-1))
        if self.boxes is not None:
            coords.append(self.boxes.detach().cpu().numpy().reshape(2, 2))
            labels.append(np.array([2, 3]))
        else:
            coords.append(np.zeros((1, 2)))
            labels.append(np.array([PAD_LABEL]))
        mh, mw = mask_input_size
        return {
            'point_coords': np.concatenate(coords).astype(np.float32)[None],
            'point_labels': np.concatenate(labels).astype(np.float32)[None],
            'mask_input': (np.zeros((1, 1, mh, mw), np.float32) if self.mask_input is None
                           else self.mask_input.detach().cpu().numpy().astype(np.float32).reshape(1, 1, mh, mw)),
            'has_mask_input': np.array([0.0 if self.mask_input is None else 1.0], np.float32),
        }


def _checked_points(point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                    device) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """:meth:`SamPrompts.checked` for the points: ``(B, N, 2)`` float32 and ``(B, N)`` int32 labels on ``device``
    (``None`` for ``N = 0``)."""
    if point_coords is not None and point_coords.numel() == 0 and point_coords.dim() == 3:
        point_coords = None
        point_labels = None if point_labels is None or point_labels.numel() == 0 else point_labels
    if not _points_given(point_coords is not None, point_labels is not None):
        return None, None
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(f'point_coords must be (B, N, 2), got {tuple(point_coords.shape)}')
    if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
        raise ValueError(f'point_labels {tuple(point_labels.shape)} does not match point_coords '
                         f'{tuple(point_coords.shape)}: expected (B, N)')
    point_coords = point_coords.to(device=device, dtype=torch.float32)
    if not torch.isfinite(point_coords).all():
        raise ValueError('point_coords contains NaN or infinite values')
    labels_f = point_labels.to(torch.float64)
    if not (torch.isfinite(labels_f).all() and (labels_f == labels_f.round()).all()):
        raise ValueError('point_labels must be integers')
    point_labels = point_labels.to(device=device, dtype=torch.int)
    valid = torch.tensor(VALID_POINT_LABELS, device=point_labels.device, dtype=torch.int)
    bad = ~torch.isin(point_labels, valid)
    if bad.any():
        raise ValueError(f'point_labels must be in {VALID_POINT_LABELS} (1 foreground, 0 background), got '
                         f'{sorted(set(point_labels[bad].tolist()))}')
    return point_coords, point_labels


def _checked_boxes(boxes: Optional[torch.Tensor], input_size: Sequence[int], device) -> Optional[torch.Tensor]:
    """:meth:`SamPrompts.checked` for the boxes: ``(B, 4)`` float32 on ``device``, clipped to the image (``None``
    when empty)."""
    if boxes is None or boxes.numel() == 0:
        return None
    in_h, in_w = input_size
    if boxes.dim() == 3 and boxes.shape[1] == 1:
        boxes = boxes[:, 0]
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f'boxes must be (B, 4) XYXY, got {tuple(boxes.shape)}')
    boxes = boxes.to(device=device, dtype=torch.float32)
    if not torch.isfinite(boxes).all():
        raise ValueError('boxes contain NaN or infinite values')
    x0, y0, x1, y1 = boxes.unbind(-1)
    if ((x1 < x0) | (y1 < y0)).any():
        raise ValueError(f'boxes must be XYXY with x0 <= x1 and y0 <= y1, got {boxes[(x1 < x0) | (y1 < y0)]}')
    outside = (x1 < 0) | (y1 < 0) | (x0 > in_w) | (y0 > in_h)
    if outside.any():
        raise ValueError(f'{int(outside.sum())} box(es) lie entirely outside the image')
    return torch.stack([x0.clamp(0, in_w), y0.clamp(0, in_h), x1.clamp(0, in_w), y1.clamp(0, in_h)], -1)


def _checked_mask_input(mask_input: Optional[torch.Tensor], mask_input_size: Sequence[int],
                        device) -> Optional[torch.Tensor]:
    """:meth:`SamPrompts.checked` for the mask input: ``(B, 1, h, w)`` float32 on ``device``."""
    if mask_input is None:
        return None
    mh, mw = mask_input_size
    if mask_input.dim() != 4 or tuple(mask_input.shape[1:]) != (1, mh, mw):
        raise ValueError(f'mask_input must be (B, 1, {mh}, {mw}) low-res logits, got {tuple(mask_input.shape)}')
    mask_input = mask_input.to(device=device, dtype=torch.float32)
    if not torch.isfinite(mask_input).all():
        raise ValueError('mask_input contains NaN or infinite values')
    return mask_input


def _points_from_arrays(coords: Optional[np.ndarray], labels: Optional[np.ndarray], point_coords,
                        point_labels) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """:meth:`SamPrompts.from_arrays` for the points (``coords``, ``labels``: ``point_coords``, ``point_labels``
    as numpy arrays): ``(B, N, 2)`` coordinates and ``(B, N)`` labels in the original image's pixels (``None``
    when not given or empty)."""
    if coords is not None and coords.size == 0:
        if labels is not None and labels.size:
            raise ValueError(f'point_coords is empty but point_labels has {labels.size} entries')
        return None, None
    if labels is not None and labels.size == 0 and coords is None:
        labels = None
    if not _points_given(coords is not None, labels is not None):
        return None, None
    if coords.ndim == 2:
        coords = coords[None]
    if coords.ndim != 3 or coords.shape[-1] != 2:
        raise ValueError(f'point_coords must be (N, 2) or (B, N, 2), got {np.shape(point_coords)}')
    if labels.ndim == 1:
        labels = labels[None]
    if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
        raise ValueError('point_labels must be integers')
    if labels.shape != coords.shape[:2]:
        raise ValueError(f'point_labels {np.shape(point_labels)} does not match point_coords '
                         f'{np.shape(point_coords)}: one label per point')
    return coords, labels


def _boxes_from_arrays(boxes: Optional[np.ndarray], box) -> Optional[np.ndarray]:
    """:meth:`SamPrompts.from_arrays` for the boxes (``boxes``: ``box`` as a numpy array): ``(B, 4)`` XYXY in the
    original image's pixels (``None`` when not given or empty)."""
    if boxes is None or boxes.size == 0:
        return None
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f'box must be (4,) or (B, 4) XYXY, got {np.shape(box)}')
    return boxes


def _mask_input_from_arrays(masks: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """:meth:`SamPrompts.from_arrays` for the mask input: ``(h, w)``, ``(1, h, w)`` or ``(B, 1, h, w)`` as
    ``(B, 1, h, w)`` (its shape is :meth:`SamPrompts.checked`'s business)."""
    if masks is not None and masks.ndim == 2:
        masks = masks[None]
    if masks is not None and masks.ndim == 3:
        masks = masks[None]
    return masks


def _points_given(has_coords: bool, has_labels: bool) -> bool:
    """Whether points were given; labels without points and points without labels are errors."""
    if not has_coords:
        if has_labels:
            raise ValueError('point_labels given without point_coords')
        return False
    if not has_labels:
        raise ValueError('point_labels must be supplied if point_coords is supplied.')
    return True
