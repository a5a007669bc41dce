"""EfficientViT (MIT) checkpoints: every layout the B/L/XL family and EfficientViT-SAM are published in (pure
PyTorch).

evit_mm's layout *is* the reference's (``backbone.*``, ``head.*``, SAM's ``image_encoder.*`` ...), so official
files need no renaming; timm's ``efficientvit_b*/l*`` state dicts do. Every ``load_pretrained`` of the family
(:class:`~evit_mm.models.EfficientViTB` / ``L``, the seg head, the seg network, the SAM encoder) goes through
this module, and so does ``tools/convert_efficientvit_mit.py``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Mapping

from . import convert_msra
from .checkpoint import LoadReport, strip_prefix

__all__ = ['MIT_CHECKPOINT_FORMATS', 'detect_mit_format', 'convert_mit_state_dict', 'split_mit_state_dict',
           'mit_part', 'msra_checkpoint_hint', 'detect_sam_checkpoint_format']

#: Formats :func:`detect_mit_format` recognises.
MIT_CHECKPOINT_FORMATS = {
    'official': "official cls/seg checkpoint or evit_mm's own full layout: 'backbone.*' (+ 'head.*'), or 'head.*' only",
    'sam': "official EfficientViT-SAM checkpoint: 'image_encoder.backbone.*', 'image_encoder.neck.*', ...",
    'backbone': "bare backbone state dict (evit_mm EfficientViTB/L.state_dict(), reference backbone)",
    'timm': "timm efficientvit_b*/l* state dict: 'stem.*', 'stages.N.blocks.M.*', 'head.in_conv/classifier.*'",
}

_TIMM_KEY = re.compile(r'^(stem|stages|head)\.')
_TIMM_STEM = re.compile(r'^stem\.(in_conv|res(\d+))\.(.*)$')
_TIMM_STAGE = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$')
_TIMM_HEAD = {  # timm ClassifierHead -> reference ClsHead (OpSequential)
    'head.in_conv.': 'head.op_list.0.',
    'head.classifier.0.': 'head.op_list.2.linear.',
    'head.classifier.1.': 'head.op_list.2.norm.',
    'head.classifier.4.': 'head.op_list.3.linear.',
}


def detect_mit_format(sd: Mapping[str, Any]) -> str:
    """Which EfficientViT-MIT layout a state dict has: one of :data:`MIT_CHECKPOINT_FORMATS`.

    Raises ``ValueError`` (showing some keys) for anything else.
    """
    keys = list(strip_prefix(sd, 'module.'))
    if any(k.startswith('image_encoder.backbone.') for k in keys):
        return 'sam'
    if any(k.startswith(('backbone.', 'head.input_ops.', 'head.middle.', 'head.output_ops.', 'head.op_list.'))
           for k in keys):
        return 'official'
    if any(_TIMM_STAGE.match(k) or k.startswith('stem.in_conv.') for k in keys):
        return 'timm'
    if any(k.startswith('input_stem.op_list.') or re.match(r'stages\.\d+\.op_list\.', k) for k in keys):
        return 'backbone'
    raise ValueError('not an EfficientViT (MIT) state dict: expected keys like backbone.stages.N.op_list..., '
                     'stages.N.op_list..., image_encoder.backbone... or timm stem./stages.N.blocks...; '
                     f'got e.g. {keys[:5]}')


def _timm_is_large(sd: Mapping[str, Any]) -> bool:
    # L/XL stages start with FusedMBConvs (spatial_conv) and the stem repeats ResBlocks (conv1);
    # B uses MBConvs (inverted_conv) and DSConvs (depth_conv).
    if any(k.startswith('stem.res0.main.conv1.') or k.startswith('stages.0.blocks.0.main.spatial_conv.')
           for k in sd):
        return True
    if any(k.startswith('stem.res0.main.depth_conv.') or k.startswith('stages.0.blocks.0.main.inverted_conv.')
           for k in sd):
        return False
    raise ValueError('timm state dict: cannot tell EfficientViT-B from -L (no stem.res0 / stages.0.blocks.0)')


def _convert_timm(sd: Mapping[str, Any]) -> 'OrderedDict[str, Any]':
    large = _timm_is_large(sd)
    stem = 'backbone.stages.0.op_list.' if large else 'backbone.input_stem.op_list.'
    shift = 1 if large else 0  # timm numbers the stages after the stem from 0; the L reference from 1
    out, unknown = OrderedDict(), []
    for k, v in sd.items():
        m = _TIMM_STEM.match(k)
        if m:
            idx = 0 if m.group(1) == 'in_conv' else int(m.group(2)) + 1
            out[f'{stem}{idx}.{m.group(3)}'] = v
            continue
        m = _TIMM_STAGE.match(k)
        if m:
            out[f'backbone.stages.{int(m.group(1)) + shift}.op_list.{m.group(2)}.{m.group(3)}'] = v
            continue
        for src, dst in _TIMM_HEAD.items():
            if k.startswith(src):
                out[dst + k[len(src):]] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f'timm EfficientViT state dict: {len(unknown)} keys with no evit_mm counterpart: '
                         f'{unknown[:10]}{" ..." if len(unknown) > 10 else ""}')
    return out


def convert_mit_state_dict(sd: Mapping[str, Any], src_format: str = 'auto') -> 'OrderedDict[str, Any]':
    """Convert an EfficientViT (MIT) state dict to evit_mm's layout.

    evit_mm's layout *is* the reference's: backbone weights under ``backbone.`` (keys of
    :class:`EfficientViTB` / :class:`EfficientViTL`), the seg head under ``head.`` (keys of
    :class:`~evit_mm.models.seg_head.EfficientViTSegHead`), the classification head under ``head.op_list.*``.
    Hence:

    * ``official`` (cls/seg checkpoints, evit_mm full dicts) and ``sam`` are returned unchanged (copied);
    * ``backbone`` (bare backbone dict) gets the ``backbone.`` prefix;
    * ``timm``: ``stem.in_conv`` / ``stem.res{i}`` -> stem ops ``0`` / ``i+1``; ``stages.{s}.blocks.{j}`` ->
      ``stages.{s}.op_list.{j}`` (B) or ``stages.{s+1}.op_list.{j}`` (L, whose stem is ``stages.0``); the
      classifier head -> the reference ClsHead keys. Block-internal names are the same in timm. Keys with no
      counterpart raise ``ValueError``.

    A ``module.`` (DataParallel) prefix on every key is removed first.
    """
    sd = strip_prefix(sd, 'module.')
    fmt = detect_mit_format(sd) if src_format == 'auto' else src_format
    if fmt not in MIT_CHECKPOINT_FORMATS:
        raise ValueError(f'unknown source format {src_format!r}; known: auto, {", ".join(MIT_CHECKPOINT_FORMATS)}')
    if fmt in ('official', 'sam'):
        return OrderedDict(sd)
    if fmt == 'backbone':
        return OrderedDict((f'backbone.{k}', v) for k, v in sd.items())
    return _convert_timm(sd)


def split_mit_state_dict(sd: Mapping[str, Any], src_format: str = 'auto'
                         ) -> tuple['OrderedDict[str, Any]', 'OrderedDict[str, Any]']:
    """Convert (see :func:`convert_mit_state_dict`) and split into ``(backbone, head)`` dicts without their
    prefixes. ``backbone`` comes from ``backbone.*`` or, for SAM checkpoints, ``image_encoder.backbone.*``;
    ``head`` from ``head.*`` (a seg head or a classification head; empty for SAM and bare backbones)."""
    full = convert_mit_state_dict(sd, src_format)
    return strip_prefix(full, _backbone_prefix(full), select=True), strip_prefix(full, 'head.', select=True)


def _backbone_prefix(full: Mapping[str, Any]) -> str:
    return 'image_encoder.backbone.' if any(k.startswith('image_encoder.backbone.') for k in full) else 'backbone.'


def mit_part(sd: Mapping[str, Any], part: str, fmt: str = 'auto', model: str = 'EfficientViTB/L'
             ) -> tuple['OrderedDict[str, Any]', LoadReport]:
    """The ``part`` (``'backbone'`` or ``'head'``) of a checkpoint in any layout of the family, without its prefix,
    and the :class:`~evit_mm.models.checkpoint.LoadReport` of the conversion (the rest of the checkpoint in
    ``other``). ``ValueError`` for a state dict of no known layout (naming the MSRA family when it is one of
    theirs; ``model`` names the model loading it)."""
    try:
        detected = detect_mit_format(sd) if fmt == 'auto' else fmt
        full = convert_mit_state_dict(sd, detected)
    except ValueError as err:
        raise ValueError(msra_checkpoint_hint(sd, model) or str(err)) from None
    prefix = _backbone_prefix(full) if part == 'backbone' else f'{part}.'
    selected = strip_prefix(full, prefix, select=True)
    other = {k: v for k, v in full.items() if not k.startswith(prefix)}
    return selected, LoadReport(format=detected, part=prefix, other=other)


def msra_checkpoint_hint(sd: Mapping[str, Any], model: str) -> str:
    """A message for an EfficientViT-M (MSRA) state dict given to an EfficientViT-B/L model, else ''."""
    try:
        fmt = convert_msra.detect_msra_format(strip_prefix(sd, 'module.'))
    except ValueError:
        return ''
    try:
        arch = convert_msra.infer_msra_arch(strip_prefix(sd, 'module.'))['name'] or 'custom'
    except (KeyError, ValueError):
        arch = 'unknown'
    return (f'this is an EfficientViT-M (MSRA) checkpoint ({fmt} layout, arch {arch}), a different model family '
            f'from {model} (EfficientViT-B/L, MIT): load it into EfficientViTM (type=\'EfficientViTM\')')


def detect_sam_checkpoint_format(sd: Mapping[str, Any]) -> str:
    """``'efficientvit_sam'`` (``image_encoder.backbone.*``), ``'sam_vit'`` (segment_anything's ``Sam``:
    ``image_encoder.patch_embed.*`` / ``image_encoder.blocks.*``) or ``'prompt_decoder'`` (only
    ``prompt_encoder.*`` / ``mask_decoder.*``). Raises ``ValueError`` for anything else."""
    keys = list(sd)
    if any(k.startswith('image_encoder.backbone.') for k in keys):
        return 'efficientvit_sam'
    if any(k.startswith(('image_encoder.patch_embed.', 'image_encoder.blocks.')) for k in keys):
        return 'sam_vit'
    if keys and all(k.startswith(('prompt_encoder.', 'mask_decoder.')) for k in keys):
        return 'prompt_decoder'
    raise ValueError('not a SAM / EfficientViT-SAM state dict: expected image_encoder.backbone.* (EfficientViT-SAM), '
                     f'image_encoder.patch_embed.* (SAM ViT) or prompt_encoder.*/mask_decoder.*; got e.g. {keys[:5]}')
