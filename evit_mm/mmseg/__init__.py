"""mmsegmentation 1.x adapter: registers evit_mm's backbones in mmseg's ``MODELS`` registry.

Configs load it with ``custom_imports = dict(imports=['evit_mm.mmseg'], allow_failed_imports=False)``, which
is what makes ``mim train mmseg <config>`` work. Importing it also applies evit_mm's torch-2.14 compatibility
fixes. It imports mmseg and mmengine only, never mmdet or mmagic.

Registered: ``EfficientViTB`` (B0-B3), ``EfficientViTL`` (L0-L3, XL0/XL1) and ``EfficientViTM`` (M0-M5)
backbones, each the pure-PyTorch core class plus mmengine's ``init_cfg``.
"""
from mmseg.registry import MODELS

from ..mm_common import mm_module
from ..models import efficientvit_mit, efficientvit_msra

EfficientViTB = MODELS.register_module(module=mm_module(efficientvit_mit.EfficientViTB))
EfficientViTL = MODELS.register_module(module=mm_module(efficientvit_mit.EfficientViTL))
EfficientViTM = MODELS.register_module(module=mm_module(efficientvit_msra.EfficientViTM))

__all__ = ['EfficientViTB', 'EfficientViTL', 'EfficientViTM']
