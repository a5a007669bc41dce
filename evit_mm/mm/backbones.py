"""The backbones that both the mmdet and the mmseg adapter register (imports mmengine and segment_anything, through
the SAM encoder, but neither mmdet nor mmseg: each adapter passes its own registry)."""
from __future__ import annotations

from ..models import efficientvit_mit, efficientvit_msra, sam
from .common import mm_module

__all__ = ['register_backbones']


def register_backbones(registry) -> tuple[type, ...]:
    """Register the backbones every detection/segmentation adapter offers in ``registry`` (mmdet's or mmseg's
    ``MODELS``): ``EfficientViTM``, ``EfficientViTB``, ``EfficientViTL`` and ``EfficientViTSamEncoder``
    (EfficientViT-SAM's image encoder). Returns the registered classes in that order."""
    return (registry.register_module(module=mm_module(efficientvit_msra.EfficientViTM)),
            registry.register_module(module=mm_module(efficientvit_mit.EfficientViTB)),
            registry.register_module(module=mm_module(efficientvit_mit.EfficientViTL)),
            registry.register_module(name='EfficientViTSamEncoder',
                                     module=mm_module(sam.EfficientViTSamBackbone, name='EfficientViTSamEncoder')))
