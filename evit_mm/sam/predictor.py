"""``EfficientViTSamPredictor``: ``segment_anything.SamPredictor`` for EfficientViT-SAM, plus image batches.

It is a ``SamPredictor`` subclass with the same methods and return values (``set_image``, ``set_torch_image``,
``predict``, ``predict_torch``, ``get_image_embedding``, ``reset_image``, ``transform``, ``device``), so code
written for SAM (its automatic mask generator included) runs unchanged. What differs:

* images are resized to the **encoder** size (``model.image_encoder.img_size``: 512 for L0-L2, 1024 for XL) while
  prompts are mapped to the **1024 prompt frame**, as the reference predictor does: ``self.transform`` (an
  :class:`~evit_mm.sam.transforms.EfficientViTSamTransform`) maps coordinates to the prompt frame and images
  (``apply_image``) to the encoder size, so SAM's ``set_torch_image(transform.apply_image(...))`` recipe works;
  ``input_size`` is the image's size in the prompt frame;
* several images at once: :meth:`set_image_batch` (one encoder forward for all), then :meth:`predict_batch`, or
  ``predict(..., image_index=i)`` / ``predict_torch(..., image_index=i)``;
* ``predict`` also takes ``B`` prompt sets at once (``box`` ``(B, 4)``, ``point_coords`` ``(B, N, 2)``, ...) and
  then returns ``(B, C, H, W)`` masks (SAM 2's convention);
* inputs are checked and give ``ValueError``/``RuntimeError`` with a message instead of an assertion or a
  failure deep inside torch (see :meth:`predict_torch` for the rules: NaN coordinates, label values, shapes,
  empty prompt arrays, boxes outside the image, no prompt at all); the prompts' checks, frame transform and
  batching live in :class:`~evit_mm.sam.prompts.SamPrompts`; images may be grayscale, RGBA, 16-bit or float (see
  :func:`~evit_mm.sam.transforms.as_rgb_uint8`);
* one predictor can be shared by threads: the image state is **per thread** (each thread predicts on the image
  it set last; a thread that has set none uses the image set last by any thread), and a prediction reads one
  consistent snapshot of it (see :class:`EfficientViTSamPredictor`);
* outputs are float32 (bool masks) also under ``torch.autocast`` (e.g. CPU bfloat16). Under CPU bfloat16
  autocast on a CPU without oneDNN bf16 support (no AVX-512: e.g. AVX2-only desktop and laptop CPUs), the image
  encoder runs in float32 instead, with one warning: there, torch's bf16 depthwise convolutions fall back to a
  per-group loop, about 40x slower than float32 (see :func:`cpu_has_fast_bf16` and docs/efficientvit_sam.md).

segment_anything's own ``SamPredictor`` cannot drive L0-L2 (it maps prompts to the 512 encoder frame):
``EfficientViTSam.postprocess_masks`` makes it raise instead of returning wrong masks.

The predictor also works with a plain ``segment_anything`` ``Sam`` (whose two frames are both 1024).
"""
from __future__ import annotations

import threading
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from ..models.layers import _autocast_enabled
from .prompts import VALID_POINT_LABELS, SamPrompts
from .transforms import EfficientViTSamTransform, as_rgb_uint8, get_preprocess_shape, resize_longest_side

__all__ = ['EfficientViTSamPredictor', 'VALID_POINT_LABELS', 'cpu_has_fast_bf16', 'SlowCpuBf16Warning']

ArrayLike = Union[np.ndarray, Sequence]


class SlowCpuBf16Warning(RuntimeWarning):
    """CPU bfloat16 autocast on a CPU without oneDNN bf16: the image encoder runs in float32 instead."""


def cpu_has_fast_bf16() -> bool:
    """Whether torch runs bfloat16 convolutions on this CPU through oneDNN (``torch.ops.mkldnn.
    _is_mkldnn_bf16_supported()``: AVX-512 (BW/VL/DQ) or better; native bf16 arithmetic with AVX512_BF16 or AMX).
    Without it (AVX2-only CPUs) bf16 depthwise convolutions take torch's slow per-group fallback."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume the slow path
        return False


_warned_slow_bf16 = False


def _slow_cpu_bf16(device: torch.device) -> bool:
    """CPU bfloat16 autocast is on and this CPU has no fast bf16 convolutions (warned about once per process)."""
    global _warned_slow_bf16
    if device.type != 'cpu' or not _autocast_enabled('cpu') or torch.get_autocast_dtype('cpu') != torch.bfloat16 \
            or cpu_has_fast_bf16():
        return False
    if not _warned_slow_bf16:
        _warned_slow_bf16 = True
        warnings.warn('CPU bfloat16 autocast on a CPU without oneDNN bf16 support (no AVX-512): the image encoder '
                      'runs in float32, which is much faster here (bf16 depthwise convolutions fall back to a '
                      'per-group loop); the prompt encoder and mask decoder stay under autocast',
                      SlowCpuBf16Warning, stacklevel=4)
    return True


def _float32(t: torch.Tensor) -> torch.Tensor:
    """Half-precision outputs (``torch.autocast``) as float32; bool and float32 tensors unchanged."""
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


class _ImageState(NamedTuple):
    """The embeddings of the image(s) set by one ``set_*`` call. Immutable: a prediction reads one snapshot."""
    features: torch.Tensor
    original_sizes: Tuple[Tuple[int, int], ...]
    input_sizes: Tuple[Tuple[int, int], ...]


class EfficientViTSamPredictor(SamPredictor):
    """Predict masks from prompts on one or several images with an EfficientViT-SAM (or SAM) model.

    Threads: the image state (``features``, ``original_size``, ``input_size``, ``is_image_set``, ...) is kept
    per thread, so threads sharing one predictor (or one mask generator) each get the masks of the image they
    set, never another thread's. A thread that has not called ``set_image``/``reset_image`` itself sees the
    image set last by any thread (set an image in one thread, prompt it from others). Every ``predict*`` call
    reads one snapshot of that state, so a concurrent ``set_image`` never mixes two images in one result. The
    model's forward passes are read-only and run concurrently.

    Args:
        sam_model: an :class:`~evit_mm.models.sam.EfficientViTSam` (or a ``segment_anything`` ``Sam``).
    """

    def __init__(self, sam_model) -> None:
        self.model = sam_model
        self.prompt_size = int(sam_model.prompt_encoder.input_image_size[0])
        self.encoder_size = int(sam_model.image_encoder.img_size)
        #: coordinates to the prompt frame (what SAM's automatic mask generator calls), images to the encoder size
        self.transform = EfficientViTSamTransform(self.prompt_size, self.encoder_size)
        #: resizes images for the encoder (the same as ``transform.apply_image``)
        self.image_transform = ResizeLongestSide(self.encoder_size)
        self._init_state()  # no image, in every thread

    def _init_state(self) -> None:
        self._local = threading.local()  # .state: this thread's _ImageState, or None after reset_image
        self._shared: Optional[_ImageState] = None  # the state set last by any thread
        self._lock = threading.Lock()

    def __getstate__(self):  # pickle / deepcopy: keep the calling thread's image
        d = {k: v for k, v in self.__dict__.items() if k not in ('_local', '_shared', '_lock')}
        d['_state_snapshot'] = self._state
        return d

    def __setstate__(self, d) -> None:
        snapshot = d.pop('_state_snapshot')
        self.__dict__.update(d)
        self._init_state()
        if snapshot is not None:
            self._set_state(snapshot)

    # ------------------------------------------------------------------------------------------------------
    # images
    # ------------------------------------------------------------------------------------------------------
    @property
    def _state(self) -> Optional[_ImageState]:
        """This thread's image state; the one set last by any thread if this thread never set or reset one."""
        own = getattr(self._local, 'state', self._local)
        return self._shared if own is self._local else own

    def _set_state(self, state: Optional[_ImageState]) -> None:
        with self._lock:
            previous = getattr(self._local, 'state', None)
            self._local.state = state
            if state is not None:
                self._shared = state
            elif previous is not None and self._shared is previous:
                self._shared = None

    def reset_image(self) -> None:
        """Forget this thread's image (and, if it is the one set last, for threads that set none)."""
        self._set_state(None)

    @property
    def is_image_set(self) -> bool:
        return self._state is not None

    @property
    def features(self) -> Optional[torch.Tensor]:
        state = self._state
        return None if state is None else state.features

    @property
    def original_sizes(self) -> List[Tuple[int, int]]:
        state = self._state
        return [] if state is None else list(state.original_sizes)

    @property
    def input_sizes(self) -> List[Tuple[int, int]]:
        state = self._state
        return [] if state is None else list(state.input_sizes)

    @property
    def original_size(self) -> Optional[Tuple[int, int]]:
        """``(H, W)`` of the (first) image set."""
        state = self._state
        return None if state is None else state.original_sizes[0]

    @property
    def input_size(self) -> Optional[Tuple[int, int]]:
        """``(h, w)`` of the (first) image set in the 1024 prompt frame."""
        state = self._state
        return None if state is None else state.input_sizes[0]

    orig_h = property(lambda self: None if self.original_size is None else self.original_size[0])
    orig_w = property(lambda self: None if self.original_size is None else self.original_size[1])
    input_h = property(lambda self: None if self.input_size is None else self.input_size[0])
    input_w = property(lambda self: None if self.input_size is None else self.input_size[1])

    @property
    def num_images(self) -> int:
        """How many images are set (0, 1, or the length of the last :meth:`set_image_batch`)."""
        state = self._state
        return 0 if state is None else len(state.original_sizes)

    def _resized_tensor(self, image, image_format: str) -> Tuple[torch.Tensor, Tuple[int, int]]:
        rgb = as_rgb_uint8(image, image_format)
        if self.model.image_format == 'BGR':  # pragma: no cover - SAM models are RGB
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        resized = resize_longest_side(rgb, self.encoder_size)
        t = torch.as_tensor(np.ascontiguousarray(resized), device=self.device).permute(2, 0, 1).contiguous()
        return t, (int(rgb.shape[0]), int(rgb.shape[1]))

    def set_image(self, image, image_format: str = 'RGB') -> None:
        """Compute the embedding of one image: HWC uint8 RGB as in SAM (also grayscale, RGBA, 16-bit, float;
        ``image_format='BGR'`` for OpenCV images)."""
        t, size = self._resized_tensor(image, image_format)
        self.set_torch_image(t[None], size)

    def set_image_batch(self, images: Sequence, image_format: str = 'RGB') -> None:
        """Compute the embeddings of several images (any sizes) in one encoder forward. Then use
        :meth:`predict_batch`, or ``predict(..., image_index=i)``."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if isinstance(images, (np.ndarray, torch.Tensor)) or not len(images):
            raise ValueError('set_image_batch takes a non-empty list of images (or a (B, H, W, C) array); '
                             'for one image use set_image')
        pairs = [self._resized_tensor(im, image_format) for im in images]
        self.set_torch_image_batch([p[0] for p in pairs], [p[1] for p in pairs])

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: Tuple[int, ...]) -> None:
        """As ``SamPredictor.set_torch_image``: ``transformed_image`` is ``(1, 3, h, w)`` (0-255, RGB), resized with
        ``self.image_transform`` (longest side = the encoder size), not normalised or padded."""
        if not isinstance(transformed_image, torch.Tensor):
            raise ValueError(f'set_torch_image takes a torch tensor, got {type(transformed_image).__name__}')
        if transformed_image.dim() == 3:
            transformed_image = transformed_image[None]
        if transformed_image.dim() != 4 or transformed_image.shape[0] != 1:
            raise ValueError(f'set_torch_image takes one image, (1, 3, H, W); got {tuple(transformed_image.shape)} '
                             '(use set_torch_image_batch for several)')
        self.set_torch_image_batch([transformed_image[0]], [original_image_size])

    @torch.no_grad()
    def set_torch_image_batch(self, transformed_images: Union[Sequence[torch.Tensor], torch.Tensor],
                              original_image_sizes: Sequence[Tuple[int, ...]]) -> None:
        """Like :meth:`set_torch_image` for several images: a list of ``(3, h_i, w_i)`` tensors (or a
        ``(B, 3, h, w)`` tensor when they share a size), each resized to longest side ``encoder_size``, and their
        original ``(H, W)`` sizes."""
        if isinstance(transformed_images, torch.Tensor):
            if transformed_images.dim() != 4:
                raise ValueError('set_torch_image_batch takes (B, 3, H, W) or a list of (3, H, W) tensors, got '
                                 f'{tuple(transformed_images.shape)}')
            transformed_images = list(transformed_images)
        if len(transformed_images) != len(original_image_sizes) or not len(transformed_images):
            raise ValueError(f'{len(transformed_images)} images but {len(original_image_sizes)} original sizes')
        s = self.encoder_size
        sizes, inputs = [], []
        for i, (im, size) in enumerate(zip(transformed_images, original_image_sizes)):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f'image {i}: expected (3, H, W), got {tuple(im.shape)}')
            if max(im.shape[1:]) != s:
                raise ValueError(f'image {i} is {tuple(im.shape[1:])}: its longest side must be the encoder size {s} '
                                 f'(resize with predictor.image_transform.apply_image)')
            size = (int(size[0]), int(size[1]))
            expected = get_preprocess_shape(*size, s)
            if tuple(im.shape[1:]) != expected:
                raise ValueError(f'image {i} is {tuple(im.shape[1:])}, but an image of original size {size} resizes '
                                 f'to {expected} at longest side {s}: wrong original_image_size?')
            sizes.append(size)
            inputs.append(self.model.preprocess(im.to(self.device)))
        self.reset_image()
        batch = torch.stack(inputs)
        if _slow_cpu_bf16(batch.device):
            with torch.autocast('cpu', enabled=False):
                features = self.model.image_encoder(batch.float())
        else:
            features = self.model.image_encoder(batch)
        input_sizes = tuple(get_preprocess_shape(*size, self.prompt_size) for size in sizes)
        self._set_state(_ImageState(features, tuple(sizes), input_sizes))

    def _image_index(self, image_index: Optional[int], state: Optional[_ImageState]) -> int:
        if state is None:
            raise RuntimeError('An image must be set with .set_image(...) before mask prediction.')
        n = len(state.original_sizes)
        if image_index is None:
            if n > 1:
                raise ValueError(f'{n} images are set (set_image_batch): pass image_index, or use predict_batch')
            return 0
        if not isinstance(image_index, (int, np.integer)) or not -n <= int(image_index) < n:
            raise IndexError(f'image_index {image_index!r} out of range for {n} image(s)')
        return int(image_index) % n

    # ------------------------------------------------------------------------------------------------------
    # prompts
    # ------------------------------------------------------------------------------------------------------
    def predict(self, point_coords: Optional[ArrayLike] = None, point_labels: Optional[ArrayLike] = None,
                box: Optional[ArrayLike] = None, mask_input: Optional[ArrayLike] = None,
                multimask_output: bool = True, return_logits: bool = False,
                image_index: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``SamPredictor.predict``: prompts in original-image pixels, numpy in and out.

        Args:
            point_coords: ``(N, 2)`` (x, y) points, or ``(B, N, 2)`` for ``B`` prompt sets.
            point_labels: ``(N,)`` / ``(B, N)``: 1 foreground, 0 background (also -1 padding, 2/3 box corners).
            box: ``(4,)`` XYXY box, or ``(B, 4)`` boxes (one prompt set each).
            mask_input: ``(1, 256, 256)`` (or ``(256, 256)``) low-res logits of a previous prediction, or
                ``(B, 1, 256, 256)``.
            multimask_output, return_logits: as SAM.
            image_index: which image of a :meth:`set_image_batch` batch.

        Returns ``(masks, iou_predictions, low_res_logits)``: ``(C, H, W)``, ``(C,)``, ``(C, 256, 256)`` for one
        prompt set, or with a leading ``B`` when several were given (a ``(B, 4)`` box array with ``B > 1``,
        ``(B, N, 2)`` points or ``(B, 1, 256, 256)`` masks). Empty arrays (``N = 0`` points, ``(0, 4)`` boxes)
        count as not given.
        """
        return self._predict(self._state, image_index, point_coords, point_labels, box, mask_input, multimask_output,
                             return_logits)

    @torch.no_grad()
    def _predict(self, state: Optional[_ImageState], image_index: Optional[int], point_coords, point_labels, box,
                 mask_input, multimask_output: bool, return_logits: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict` on the snapshot ``state`` (one snapshot for the whole call: threads)."""
        idx = self._image_index(image_index, state)
        prompts = SamPrompts.from_arrays(point_coords, point_labels, box, mask_input,
                                         original_size=state.original_sizes[idx], prompt_size=self.prompt_size,
                                         device=self.device)
        outputs = self._predict_torch(state, idx, self._checked(prompts, state, idx), multimask_output, return_logits)
        masks, iou, low_res = (t.detach().cpu().numpy() for t in outputs)
        return (masks, iou, low_res) if prompts.batched else (masks[0], iou[0], low_res[0])

    @torch.no_grad()
    def predict_torch(self, point_coords: Optional[torch.Tensor] = None, point_labels: Optional[torch.Tensor] = None,
                      boxes: Optional[torch.Tensor] = None, mask_input: Optional[torch.Tensor] = None,
                      multimask_output: bool = True, return_logits: bool = False,
                      image_index: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``SamPredictor.predict_torch``: batched prompts already in the 1024 prompt frame
        (``predictor.transform.apply_coords_torch(coords, predictor.original_size)``, ``apply_boxes_torch``).

        Args:
            point_coords ``(B, N, 2)``, point_labels ``(B, N)``, boxes ``(B, 4)`` (``(B, 1, 4)`` accepted),
            mask_input ``(B, 1, 256, 256)``, multimask_output, return_logits: as SAM; image_index: which image of
            a batch.

        Returns ``masks (B, C, H, W)``, ``iou_predictions (B, C)``, ``low_res_logits (B, C, 256, 256)``.

        Checks (``ValueError``): shapes and matching ``B``; labels with points and vice versa; finite
        coordinates; labels in ``(-1, 0, 1, 2, 3)``; at least one prompt (points with ``N = 0`` count as none), and
        in every prompt set a point that is not padding (label -1) unless the set has a box or a mask input.
        Boxes: ``x0 <= x1`` and ``y0 <= y1``; a box must overlap the image, and is clipped to it (the reference
        does not clip; this only changes boxes that stick out). Points outside the image are passed on as they
        are (SAM accepts them). Outputs are float32 (masks bool) also under ``torch.autocast``.
        """
        state = self._state
        idx = self._image_index(image_index, state)
        prompts = SamPrompts(point_coords, point_labels, boxes, mask_input)
        return self._predict_torch(state, idx, self._checked(prompts, state, idx), multimask_output, return_logits)

    def _checked(self, prompts: SamPrompts, state: _ImageState, idx: int) -> SamPrompts:
        """``prompts`` checked for image ``idx`` of ``state`` (:meth:`SamPrompts.checked`), on the model's device."""
        return prompts.checked(state.input_sizes[idx], self.model.prompt_encoder.mask_input_size, self.device)

    def _predict_torch(self, state: _ImageState, idx: int, prompts: SamPrompts, multimask_output: bool,
                       return_logits: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model on image ``idx`` of the snapshot ``state`` for checked ``prompts``."""
        sparse, dense = prompts.encode(self.model.prompt_encoder)
        low_res, iou = self.model.mask_decoder(
            image_embeddings=self._embedding(state, idx), image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output)
        low_res, iou = _float32(low_res), _float32(iou)
        masks = _float32(self.model.postprocess_masks(low_res, state.input_sizes[idx], state.original_sizes[idx]))
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _embedding(self, state: _ImageState, idx: int) -> torch.Tensor:
        """Image ``idx``'s embedding; in the mask decoder's dtype outside autocast (an image set under
        ``torch.autocast`` has a half-precision embedding)."""
        emb = state.features[idx:idx + 1]
        dtype = next(self.model.mask_decoder.parameters()).dtype
        if emb.dtype != dtype and not _autocast_enabled(emb.device.type):
            emb = emb.to(dtype)
        return emb

    def predict_batch(self, point_coords_batch: Optional[Sequence] = None,
                      point_labels_batch: Optional[Sequence] = None,
                      box_batch: Optional[Sequence] = None, mask_input_batch: Optional[Sequence] = None,
                      multimask_output: bool = True, return_logits: bool = False
                      ) -> Tuple[List[np.ndarray], List[np.ndarray], List[np.ndarray]]:
        """:meth:`predict` for every image of :meth:`set_image_batch`: each argument is ``None`` or a list with one
        entry (``None`` or what :meth:`predict` takes) per image. Returns three lists (masks, ious, low-res)."""
        state = self._state  # one snapshot for the whole call (threads)
        if state is None:
            raise RuntimeError('Images must be set with .set_image_batch(...) before mask prediction.')
        n = len(state.original_sizes)
        args = {'point_coords_batch': point_coords_batch, 'point_labels_batch': point_labels_batch,
                'box_batch': box_batch, 'mask_input_batch': mask_input_batch}
        for name, value in args.items():
            if value is not None and len(value) != n:
                raise ValueError(f'{name} has {len(value)} entries for {n} images')
        pick = (lambda seq, i: None if seq is None else seq[i])
        out = ([], [], [])
        for i in range(n):
            res = self._predict(state, i, pick(point_coords_batch, i), pick(point_labels_batch, i),
                                pick(box_batch, i), pick(mask_input_batch, i), multimask_output, return_logits)
            for acc, r in zip(out, res):
                acc.append(r)
        return out

    def get_image_embedding(self, image_index: Optional[int] = None) -> torch.Tensor:
        """The image embedding(s): ``(1, 256, 64, 64)`` for one image; all of a batch ``(B, 256, 64, 64)`` unless
        ``image_index`` is given."""
        state = self._state
        if state is None:
            raise RuntimeError('An image must be set with .set_image(...) to generate an embedding.')
        if image_index is None:
            return state.features
        i = self._image_index(image_index, state)
        return state.features[i:i + 1]
