"""evit_mm: the EfficientViT families for the OpenMMLab 2.x stack and segment-anything.

Importing this package imports no mm library; the per-library adapters are ``evit_mm.mmdet``,
``evit_mm.mmseg`` and ``evit_mm.mmagic``.
"""
from .version import __version__

__all__ = ['__version__']
