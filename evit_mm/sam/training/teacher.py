"""The phase-1 teacher: segment-anything's ViT image encoder (``ImageEncoderViT``), frozen.

``build_sam_teacher(arch='vit_h', checkpoint='sam_vit_h_4b8939.pth')`` builds SAM ViT-H (or ``vit_l`` /
``vit_b``) with segment-anything's own builder and loads the ``image_encoder.*`` weights of a SAM checkpoint
strictly. ``arch`` may also be a dict of ``ImageEncoderViT`` arguments: a small ViT with a 64x64 output grid for
tests and demos (with ``checkpoint=None`` its random weights come from ``init_seed``, so every process that
builds it - the trainer, the cache tool - gets the same teacher).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from ...models.checkpoint import load_state_dict_strict, read_checkpoint, strip_prefix

__all__ = ['SamTeacher', 'build_sam_teacher']


class SamTeacher(nn.Module):
    """A frozen SAM image encoder: ``(B, 3, S, S)`` normalised, padded images -> ``(B, 256, 64, 64)``."""

    def __init__(self, encoder: ImageEncoderViT, name: str = 'teacher'):
        super().__init__()
        self.encoder = encoder.eval().requires_grad_(False)
        self.name = name

    @property
    def img_size(self) -> int:
        return int(self.encoder.img_size)

    def train(self, mode: bool = True) -> 'SamTeacher':
        return super().train(False)  # always frozen, whatever the runner does

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)


def build_sam_teacher(arch: Union[str, dict] = 'vit_h', checkpoint: Optional[str] = None,
                      init_seed: Optional[int] = 0) -> SamTeacher:
    """A :class:`SamTeacher`. ``arch``: ``'vit_h'``, ``'vit_l'``, ``'vit_b'`` or ``ImageEncoderViT`` kwargs.
    ``checkpoint``: a SAM checkpoint (``'evit://sam_vit_h'``, the published ``sam_vit_h_4b8939.pth`` fetched by name,
    or a path; its ``image_encoder.*`` keys) or an encoder-only state dict, loaded strictly; required for the named
    archs (a random ViT-H teaches nothing)."""
    if isinstance(arch, str):
        if arch not in ('vit_h', 'vit_l', 'vit_b'):
            raise ValueError(f"teacher arch must be 'vit_h', 'vit_l', 'vit_b' or a dict, got {arch!r}")
        if checkpoint is None:
            raise ValueError(f'the {arch} teacher needs its SAM checkpoint: checkpoint=\'evit://sam_{arch}\' '
                             f'(segment-anything\'s sam_{arch}_*.pth, downloaded once and sha256-checked) or a path')
        encoder = sam_model_registry[arch]().image_encoder
        name = f'sam_{arch}'
    else:
        with torch.random.fork_rng(devices=[]):
            if init_seed is not None:
                torch.manual_seed(init_seed)
            encoder = ImageEncoderViT(**dict(arch))
        name = 'sam_vit_custom'
    if checkpoint is not None:
        sd = read_checkpoint(checkpoint)
        if any(k.startswith('image_encoder.') for k in sd):
            sd = strip_prefix(sd, 'image_encoder.', select=True)
        load_state_dict_strict(encoder, sd, source=str(checkpoint))
    return SamTeacher(encoder, name)
