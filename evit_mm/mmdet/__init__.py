"""mmdet 3.x adapter: registers evit_mm's backbones and necks in mmdet's ``MODELS`` registry.

Configs load it with ``custom_imports = dict(imports=['evit_mm.mmdet'], allow_failed_imports=False)``, which is
what makes ``mim train mmdet <config>`` work (mim runs mmdet's own tools/train.py). Importing it also applies
evit_mm's torch-2.14 compatibility fixes (:mod:`evit_mm.mm`). It imports mmdet and mmengine only, never mmseg or mmagic.

Registered: ``EfficientViTM`` (M0-M5), ``EfficientViTB`` (B0-B3), ``EfficientViTL`` (L0-L3, XL0/XL1) backbones
and the ``EfficientViTFPN`` neck. Each is the pure-PyTorch core class plus mmengine's ``init_cfg``;
``init_cfg=dict(type='Pretrained', checkpoint=...)`` converts official checkpoints and loads strictly.
Also ``EfficientViTSamEncoder`` (EfficientViT-SAM's image encoder as a backbone) and ``BoxPromptedSAM``: any mmdet
detector whose boxes prompt EfficientViT-SAM (instance masks, zero-shot).
``PyramidStrideCheckHook`` (in ``HOOKS``) and ``check_pyramid_strides`` warn when a detector's neck strides and
its anchor/RoI strides disagree (see ``stride_check``).
"""
from mmdet.registry import MODELS

from ..mm.backbones import register_backbones
from ..mm.common import mm_module
from ..models import efficientvit_msra_fpn

EfficientViTM, EfficientViTB, EfficientViTL, EfficientViTSamEncoder = register_backbones(MODELS)
EfficientViTFPN = MODELS.register_module(module=mm_module(efficientvit_msra_fpn.EfficientViTFPN))

from .box_prompted_sam import BoxPromptedSAM  # noqa: E402  (registers itself)
from .stride_check import PyramidStrideCheckHook, PyramidStrideWarning, check_pyramid_strides  # noqa: E402
from .visualization import NotedDetLocalVisualizer  # noqa: E402  (registered as DetLocalVisualizer)

__all__ = ['EfficientViTM', 'EfficientViTB', 'EfficientViTL', 'EfficientViTFPN', 'EfficientViTSamEncoder',
           'BoxPromptedSAM', 'PyramidStrideCheckHook', 'PyramidStrideWarning', 'check_pyramid_strides',
           'NotedDetLocalVisualizer']
