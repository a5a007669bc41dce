"""The model core: pure PyTorch, no mm imports.

- ``efficientvit_msra``: EfficientViT-M0..M5 (MSRA, cascaded group attention) and Cream's FPN variant;
- ``efficientvit_mit``: EfficientViT-B0..B3, L0..L3, XL0/XL1 (MIT, multi-scale linear attention);
- ``seg_head``: the EfficientViT segmentation head; ``sam``: EfficientViT-SAM; ``sr``: super-resolution;
- ``contract``: what every model shares (stage numbering, freezing, ``fuse()``/``is_fused``, ``load_pretrained``);
- ``convert_msra`` / ``convert_mit``: every published checkpoint layout of each family, converted;
- ``registry`` / ``hub``: every model by name (``create_model``, ``list_models``) and its published weights,
  downloaded, checked and cached;
- ``checkpoint`` / ``fuse`` / ``layers``: strict loading with a key diff, BatchNorm folding, shared layers.
- ``deploy``: the inference form of any of them (``evit_mm.deploy``): BNs folded, inference-only modules swapped in.
"""
from .registry import create_model, get_entry, list_models
from .checkpoint import CheckpointMismatchError, LoadReport, load_state_dict_strict, read_checkpoint, strip_prefix
from .efficientvit_mit import (EfficientViTB, EfficientViTL, build_efficientvit_backbone, convert_mit_state_dict,
                               detect_mit_format, efficientvit_b0, efficientvit_b1, efficientvit_b2,
                               efficientvit_b3, efficientvit_l0, efficientvit_l1, efficientvit_l2, efficientvit_l3,
                               efficientvit_xl0, efficientvit_xl1, split_mit_state_dict)
from .convert_msra import convert_msra_state_dict
from .efficientvit_msra import (EfficientViTM, efficientvit_m0, efficientvit_m1, efficientvit_m2, efficientvit_m3,
                                efficientvit_m4, efficientvit_m5)
from .efficientvit_msra_fpn import EfficientViTFPN
from .seg_head import SEG_HEAD_CONFIGS, EfficientViTSeg, EfficientViTSegHead, seg_head_config

__all__ = [
    'create_model', 'list_models', 'get_entry',
    'CheckpointMismatchError', 'LoadReport', 'load_state_dict_strict', 'read_checkpoint', 'strip_prefix',
    'EfficientViTM', 'EfficientViTFPN', 'convert_msra_state_dict',
    'efficientvit_m0', 'efficientvit_m1', 'efficientvit_m2', 'efficientvit_m3', 'efficientvit_m4', 'efficientvit_m5',
    'EfficientViTB', 'EfficientViTL', 'build_efficientvit_backbone', 'convert_mit_state_dict', 'split_mit_state_dict',
    'detect_mit_format', 'efficientvit_b0', 'efficientvit_b1', 'efficientvit_b2', 'efficientvit_b3',
    'efficientvit_l0', 'efficientvit_l1', 'efficientvit_l2', 'efficientvit_l3', 'efficientvit_xl0', 'efficientvit_xl1',
    'EfficientViTSegHead', 'SEG_HEAD_CONFIGS', 'seg_head_config', 'EfficientViTSeg',
]

# super-resolution (issue 8)
from .sr import SR_PRESETS, EfficientViTSR, efficientvit_sr_highres, efficientvit_sr_lightweight  # noqa: E402

__all__ += ['EfficientViTSR', 'SR_PRESETS', 'efficientvit_sr_lightweight', 'efficientvit_sr_highres']
