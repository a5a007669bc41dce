"""Image and prompt preprocessing for EfficientViT-SAM (pure numpy/torch + segment_anything).

What the reference does (``EfficientViTSam.transform`` and ``EfficientViTSamPredictor``):

* the image (HWC uint8 RGB) is resized so that its longest side is the encoder input size (512 for L0-L2, 1024
  for XL0/XL1) with PIL's bilinear resize (``torchvision ... resize(to_pil_image(image), size)``, the same call
  as ``segment_anything``'s ``ResizeLongestSide.apply_image``), normalised with SAM's mean/std and zero-padded at
  the bottom/right to a square;
* prompts are scaled from the original image to the image resized to longest side **1024** (the prompt frame),
  whatever the encoder size: ``ResizeLongestSide(1024).apply_coords``.

:func:`as_rgb_uint8` additionally turns the images people actually have into what SAM expects (see there).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from ..models.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD

__all__ = ['as_rgb_uint8', 'get_preprocess_shape', 'resize_longest_side', 'preprocess_image', 'ResizeLongestSide',
           'EfficientViTSamTransform', 'SAM_PIXEL_MEAN', 'SAM_PIXEL_STD']


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Tuple[int, int]:
    """``(H, W)`` after resizing ``(oldh, oldw)`` to longest side ``long_side_length`` (SAM's rounding).
    Raises ``ValueError`` for empty images and for images so elongated that a side would round to 0 pixels."""
    if oldh <= 0 or oldw <= 0:
        raise ValueError(f'empty image: {oldh}x{oldw}')
    newh, neww = ResizeLongestSide.get_preprocess_shape(int(oldh), int(oldw), int(long_side_length))
    if newh < 1 or neww < 1:
        raise ValueError(f'image of {oldh}x{oldw} is too elongated: its short side would be 0 pixels once the '
                         f'long side is resized to {long_side_length}')
    return newh, neww


def as_rgb_uint8(image, image_format: str = 'RGB') -> np.ndarray:
    """An RGB ``(H, W, 3)`` uint8 array from what users pass as an image.

    * ``(H, W)`` and ``(H, W, 1)`` grayscale: replicated to 3 channels;
    * ``(H, W, 4)`` RGBA / BGRA: the alpha channel is dropped (not composited);
    * ``uint8``: as is; ``uint16`` (16-bit PNG/TIFF): ``round(x / 257)`` (65535 -> 255); ``bool``: 0/255;
      other integers: must lie in [0, 255]; floats: values in [0, 1] are scaled by 255 (``skimage``'s float
      convention), values in [0, 255] are rounded; NaN/inf or values outside these ranges raise ``ValueError``;
    * ``image_format='BGR'`` swaps the channels to RGB (the model is RGB);
    * a ``PIL.Image`` or torch tensor in HWC layout is converted first.

    Anything else (wrong number of dimensions or channels, empty images) raises ``ValueError``.
    """
    if image_format not in ('RGB', 'BGR'):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image
            if isinstance(image, Image.Image):
                image = np.asarray(image.convert('RGB') if image.mode not in ('L', 'RGB', 'RGBA', 'I;16')
                                   else image)
        except ImportError:  # pragma: no cover
            pass
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f'expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {image.shape}'
                         + (' (channels first? pass HWC)' if image.ndim == 3 and image.shape[0] in (1, 3, 4) else ''))
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f'empty image: shape {image.shape}')
    if image.shape[2] == 4:
        image = image[:, :, :3]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image_format == 'BGR':
        image = image[:, :, ::-1]
    dt = image.dtype
    if dt == np.uint8:
        out = image
    elif dt == np.bool_:
        out = image.astype(np.uint8) * 255
    elif dt == np.uint16:
        out = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif np.issubdtype(dt, np.integer):
        lo, hi = int(image.min()), int(image.max())
        if lo < 0 or hi > 255:
            raise ValueError(f'{dt} image with values in [{lo}, {hi}]: expected [0, 255] (convert it to uint8 '
                             'yourself if it uses another range)')
        out = image.astype(np.uint8)
    elif np.issubdtype(dt, np.floating):
        if not np.isfinite(image).all():
            raise ValueError('the image contains NaN or infinite values')
        lo, hi = float(image.min()), float(image.max())
        if lo < 0 or hi > 255:
            raise ValueError(f'float image with values in [{lo:g}, {hi:g}]: expected [0, 1] or [0, 255]')
        scale = 255.0 if hi <= 1.0 else 1.0
        out = np.clip(np.round(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f'unsupported image dtype {dt}')
    return np.ascontiguousarray(out)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an RGB uint8 ``(H, W, 3)`` image to longest side ``long_side`` exactly as the reference (PIL
    bilinear through torchvision; the identity when the longest side already has that length)."""
    h, w = image.shape[:2]
    if max(h, w) == long_side:
        return image
    get_preprocess_shape(h, w, long_side)  # clear error for degenerate sizes
    return ResizeLongestSide(long_side).apply_image(image)


def preprocess_image(image, image_size: int, image_format: str = 'RGB',
                     pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
                     pixel_std: Sequence[float] = SAM_PIXEL_STD) -> torch.Tensor:
    """The encoder input for one image: ``(1, 3, image_size, image_size)`` float32 (longest side resized to
    ``image_size``, normalised, zero padding at the bottom/right), as the reference's ``EfficientViTSam.transform``
    (which divides by 255 before normalising: the values agree to float rounding)."""
    rgb = resize_longest_side(as_rgb_uint8(image, image_format), image_size)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    x = (x - torch.tensor(pixel_mean).view(3, 1, 1)) / torch.tensor(pixel_std).view(3, 1, 1)
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (0, image_size - w, 0, image_size - h))[None]


class EfficientViTSamTransform(ResizeLongestSide):
    """``segment_anything``'s ``ResizeLongestSide`` for a model with two frames (``predictor.transform``).

    * prompts (``apply_coords``, ``apply_boxes`` and their ``_torch`` versions) go to the **prompt frame**: longest
      side ``prompt_size`` (1024, :attr:`target_length`), what ``predict_torch`` takes;
    * images (``apply_image``: HWC uint8, PIL bilinear as SAM; ``apply_image_torch``: ``(B, C, H, W)`` float,
      bilinear with antialiasing) go to the **encoder size**: longest side ``image_size`` (512 for L0-L2, 1024
      for XL), what ``set_torch_image`` takes.

    With both sizes equal (XL, SAM) it is ``ResizeLongestSide``. Unlike segment_anything's ``apply_image_torch``,
    which reads the size from the batch and channel dimensions, ``apply_image_torch`` resizes by ``(H, W)``.
    """

    def __init__(self, prompt_size: int = 1024, image_size: int = 1024) -> None:
        super().__init__(int(prompt_size))
        self.image_size = int(image_size)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return resize_longest_side(np.asarray(image), self.image_size)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4:
            raise ValueError(f'apply_image_torch takes (B, C, H, W) images, got {tuple(image.shape)}')
        size = get_preprocess_shape(int(image.shape[-2]), int(image.shape[-1]), self.image_size)
        return torch.nn.functional.interpolate(image, size, mode='bilinear', align_corners=False, antialias=True)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(prompt_size={self.target_length}, image_size={self.image_size})'
