"""mmsegmentation 1.x adapter: registers evit_mm's models in mmseg's registries.

Configs load it with ``custom_imports = dict(imports=['evit_mm.mmseg'], allow_failed_imports=False)``, which
is what makes ``mim train mmseg <config>`` work. Importing it also applies evit_mm's torch-2.14 compatibility
fixes (:mod:`evit_mm.mm`). It imports mmseg and mmengine only, never mmdet or mmagic.

Registered in ``MODELS``:

- ``EfficientViTB`` (B0-B3), ``EfficientViTL`` (L0-L3, XL0/XL1) and ``EfficientViTM`` (M0-M5) backbones, each the
  pure-PyTorch core class plus mmengine's ``init_cfg``; ``EfficientViTSamEncoder``, EfficientViT-SAM's image
  encoder as a backbone (a 256x64x64 embedding);
- ``EfficientViTSegDecodeHead``: the EfficientViT SegHead as an mmseg decode head (reference keys, mmseg losses);
- ``EfficientViTEncoderDecoder``: mmseg's EncoderDecoder plus the reference's evaluation
  (``test_cfg=dict(mode='whole', resize_mode='bicubic')``) and official seg checkpoints (``head.*`` keys).

In ``TRANSFORMS``: ``ShortSideResize`` (the reference's ADE20K evaluation resize). In
``OPTIM_WRAPPER_CONSTRUCTORS``: ``EfficientViTOptimWrapperConstructor`` (a head lr multiplier and no weight
decay on norms/biases, together). See docs/efficientvit_seg.md.
"""
from mmseg.registry import MODELS

from ..mm.backbones import register_backbones
from .decode_head import EfficientViTSegDecodeHead
from .optim import EfficientViTOptimWrapperConstructor
from .segmentor import EfficientViTEncoderDecoder, official_seg_to_mmseg
from .transforms import ShortSideResize

EfficientViTM, EfficientViTB, EfficientViTL, EfficientViTSamEncoder = register_backbones(MODELS)

__all__ = ['EfficientViTB', 'EfficientViTL', 'EfficientViTM', 'EfficientViTSamEncoder', 'EfficientViTSegDecodeHead',
           'EfficientViTEncoderDecoder', 'ShortSideResize', 'EfficientViTOptimWrapperConstructor',
           'official_seg_to_mmseg']
