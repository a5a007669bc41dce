"""``evit://NAME``: evit_mm's published checkpoints by name inside mmengine (needs mmengine only).

Registered as an mmengine ``CheckpointLoader`` scheme by :func:`evit_mm.mm.compat.apply_all` (every evit_mm adapter,
tool and training module calls it), so a stock Runner takes names wherever it takes a checkpoint::

    init_cfg=dict(type='Pretrained', checkpoint='evit://efficientvit_m4')     # ImageNet weights of a backbone
    load_from = 'evit://efficientvit_seg_b1_cityscapes'                      # a whole trained model
    python tools/test.py CONFIG evit://retinanet_efficientvit_m4_fpn_1x_coco

The file is fetched once (rank 0 first, the others then find it cached; see :mod:`evit_mm.models.hub`), read
weights-only, and handed on in its published layout: the model that loads it converts it (the backbones'
``load_pretrained``, the segmentor's renaming of official keys, the SAM models). Cream's detector checkpoints are
the exception: a stock mmdet Runner cannot convert their backbone, so they are converted here, into the layout of
evit_mm's detection configs (windows 7, as those configs build EfficientViTM).
"""
from __future__ import annotations

from ..models.checkpoint import strip_prefix, unwrap_state_dict
from ..models.convert_msra import cream_detector_to_evit_mm
from ..models.hub import fetch
from ..models.registry import EVIT_SCHEME, resolve_weights
from .compat.mmengine_checkpoint import load_local_checkpoint, rank0_first

__all__ = ['load_from_evit']


def load_from_evit(filename: str, map_location=None):
    """mmengine's loader for ``evit://NAME[.TAG]``: the published checkpoint, fetched, cached and read."""
    entry, weights = resolve_weights(filename[len(EVIT_SCHEME):])
    path = rank0_first(lambda: fetch(weights, name=f'{entry.name}.{weights.tag}'))
    checkpoint = load_local_checkpoint(path, map_location)
    if weights.fmt == 'cream-det':
        state_dict, _ = cream_detector_to_evit_mm(strip_prefix(unwrap_state_dict(checkpoint), 'module.'))
        checkpoint = {'state_dict': state_dict, 'meta': {'source': weights.url, 'converted_by': 'evit_mm'}}
    return checkpoint
