"""Uploaded bytes -> an RGB uint8 image, or an :class:`AppError` whose message the page shows.

Checks, in order: size of the upload (bytes), decodable by Pillow, pixel count read from the header **before**
the pixels are decoded (a 10000x10000 PNG of a few kB is refused at once), smallest side, then the decode
itself (truncated/corrupt files). 16-bit, RGBA, palette, CMYK ... images are converted, and the conversion is
reported as a note the page shows.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from ..transforms import as_rgb_uint8

__all__ = ['AppError', 'Limits', 'decode_image', 'check_pixels']


class AppError(Exception):
    """An error for the user: ``message`` is shown in the page, ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What an upload may be."""
    max_bytes: int = 25 * 2 ** 20  #: upload size
    max_pixels: int = 20_000_000  #: width x height (20 MP: a 5472x3648 photo)
    min_side: int = 8  #: pixels; SAM needs some image to prompt


def _mb(n: int) -> str:
    return f'{n / 2 ** 20:.1f} MB'


def check_pixels(width: int, height: int, limits: Limits, name: str) -> None:
    if width * height > limits.max_pixels:
        raise AppError(f'{name} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); the limit is '
                       f'{limits.max_pixels / 1e6:.1f} megapixels: resize it first', 413)
    if min(width, height) < limits.min_side:
        raise AppError(f'{name} is {width}x{height} pixels: too small to segment (at least {limits.min_side} '
                       'pixels per side)')


def decode_image(data: bytes, limits: Limits = Limits(), name: str = 'the upload') -> Tuple[np.ndarray, List[str]]:
    """Decode an uploaded file. Returns ``(rgb, notes)``: ``(H, W, 3)`` uint8 and what was converted."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) == 0:
        raise AppError(f'{name} is empty (0 bytes)')
    if len(data) > limits.max_bytes:
        raise AppError(f'{name} is {_mb(len(data))}; uploads are limited to {_mb(limits.max_bytes)}', 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise AppError(f'{name} is not an image that can be read (PNG, JPEG, TIFF, BMP, GIF, WebP ...)', 415) from None
    except Image.DecompressionBombError:
        raise AppError(f'{name} has more than {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} megapixels; the limit is '
                       f'{limits.max_pixels / 1e6:.1f} megapixels: resize it first', 413) from None
    except Exception as e:  # a header Pillow recognises but cannot parse
        raise AppError(f'{name} could not be read: the file is corrupt ({type(e).__name__}: {e})') from None
    width, height = im.size
    check_pixels(width, height, limits, name)
    notes = []
    frames = getattr(im, 'n_frames', 1)
    if frames > 1:
        notes.append(f'first frame of {frames}')
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            im.load()
            im = ImageOps.exif_transpose(im)  # what the user sees (phones store rotated pixels + an EXIF flag)
        mode = im.mode
        if mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or (mode == 'P' and 'transparency' in im.info):
            notes.append('alpha channel dropped')
            im = im.convert('RGBA')
        elif mode in ('P', '1', 'CMYK', 'YCbCr', 'LAB', 'HSV'):
            if mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
                notes.append(f'converted from {mode} to RGB')
            im = im.convert('RGB')
        arr = np.asarray(im)
    except AppError:
        raise
    except Exception as e:
        raise AppError(f'{name} could not be decoded: the file is truncated or corrupt ({type(e).__name__}: {e})') \
            from None
    if mode.startswith('I;16') or arr.dtype == np.uint16:
        notes.append('16-bit image converted to 8-bit')
        arr = arr.astype(np.uint16, copy=False)
    elif mode == 'I':  # 32-bit integer mode: 16-bit PNG/TIFF as some Pillow versions read them
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise AppError(f'{name} is a 32-bit integer image with values outside 0..65535: save it as 8 or 16 bit')
        notes.append('16-bit image converted to 8-bit')
        arr = arr.astype(np.uint16)
    try:
        rgb = as_rgb_uint8(arr)
    except ValueError as e:
        raise AppError(f'{name} cannot be used: {e}') from None
    return np.array(rgb, order='C', copy=True) if not rgb.flags.writeable else np.ascontiguousarray(rgb), notes
