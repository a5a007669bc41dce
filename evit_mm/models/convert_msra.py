"""EfficientViT-M checkpoints: every layout the MSRA family is published in, converted to evit_mm's (pure PyTorch).

The layouts (:data:`MSRA_FORMATS`): Cream's ImageNet checkpoints (``cream-cls``), Cream's detection backbone, alone
or inside a whole mmdet 2.x detector (``cream-det``), timm's ``efficientvit_m*`` (``timm``) and this package's own
(``evit_mm``). :meth:`evit_mm.models.EfficientViTM.load_pretrained` goes through :func:`convert_msra_state_dict`;
``tools/convert_efficientvit_msra.py`` writes the converted file once.
"""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from .checkpoint import LoadReport, strip_prefix
from .registry import MSRA_ARCHS, MSRA_NUM_STAGES, msra_per_stage

__all__ = ['MSRA_FORMATS', 'detect_msra_format', 'convert_msra_state_dict', 'infer_msra_arch',
           'cream_detector_to_evit_mm']

#: Layouts understood by :func:`convert_msra_state_dict`.
MSRA_FORMATS = ('cream-cls', 'cream-det', 'timm', 'evit_mm')


def detect_msra_format(state_dict: Mapping[str, Any]) -> str:
    """Which layout a (backbone) state dict is in: one of :data:`MSRA_FORMATS`.  Raises ``ValueError``."""
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = strip_prefix(state_dict, 'backbone.', select=True)
    keys = list(state_dict)
    if 'patch_embed.0.c.weight' in state_dict or any(k.startswith('blocks1.') for k in keys):
        return 'cream-cls' if any(k.startswith(('head.', 'head_dist.')) for k in keys) else 'cream-det'
    if 'patch_embed.conv1.conv.weight' in state_dict or any('.mixer.m.attn.' in k for k in keys):
        return 'timm'
    if 'patch_embed.0.conv.weight' in state_dict or any(re.match(r'stages\.\d+\.blocks\.\d+\.attn\.', k)
                                                          for k in keys):
        return 'evit_mm'
    sample = ', '.join(sorted(keys)[:8])
    raise ValueError('not an EfficientViT-M state dict in a known layout (Cream classification or detection, '
                     f'timm efficientvit_m*, evit_mm); its keys begin: {sample}')


_BLOCK_INNER = (
    (re.compile(r'^(dw0|dw1|ffn0|ffn1)\.m\.(.+)$'), r'\1.\2'),
    (re.compile(r'^mixer\.m\.attn\.proj\.1\.(.+)$'), r'attn.proj.\1'),
    (re.compile(r'^mixer\.m\.attn\.(.+)$'), r'attn.\1'),
)


def _block_inner(rest: str) -> str | None:
    for pattern, repl in _BLOCK_INNER:
        if pattern.match(rest):
            return pattern.sub(repl, rest)
    return None


_DOWN_PARTS = {(0, '0'): 'dw_pre', (0, '1'): 'ffn_pre', (2, '0'): 'dw_post', (2, '1'): 'ffn_post'}


def _rename_cream(key: str) -> str | None:
    """Cream ``blocks{s+1}.{j}...`` / ``patch_embed.{n}...`` -> evit_mm; None when not recognised."""
    parts = key.split('.')
    if len(parts) >= 2 and parts[-2] == 'c':
        parts[-2] = 'conv'
    key = '.'.join(parts)
    if re.match(r'^patch_embed\.[0246]\.(conv|bn)\.', key):
        return key
    m = re.match(r'^blocks(\d+)\.(\d+)\.(.+)$', key)
    if not m:
        return None
    stage, j, rest = int(m.group(1)) - 1, int(m.group(2)), m.group(3)
    if stage == 0 or j >= 3:
        inner = _block_inner(rest)
        return None if inner is None else f'stages.{stage}.blocks.{j - 3 if stage else j}.{inner}'
    if j == 1:
        return f'stages.{stage}.downsample.merge.{rest}'
    m = re.match(r'^([01])\.m\.(.+)$', rest)
    return f'stages.{stage}.downsample.{_DOWN_PARTS[(j, m.group(1))]}.{m.group(2)}' if m else None


def _rename_timm(key: str) -> str | None:
    m = re.match(r'^patch_embed\.conv([1-4])\.(.+)$', key)
    if m:
        return f'patch_embed.{2 * (int(m.group(1)) - 1)}.{m.group(2)}'
    m = re.match(r'^stages\.(\d+)\.downsample\.(res1|res2)\.([01])\.m\.(.+)$', key)
    if m:
        j = 0 if m.group(2) == 'res1' else 2
        return f'stages.{m.group(1)}.downsample.{_DOWN_PARTS[(j, m.group(3))]}.{m.group(4)}'
    m = re.match(r'^stages\.(\d+)\.downsample\.patchmerge\.(.+)$', key)
    if m:
        return f'stages.{m.group(1)}.downsample.merge.{m.group(2)}'
    m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.+)$', key)
    if m:
        inner = _block_inner(m.group(3))
        return None if inner is None else f'stages.{m.group(1)}.blocks.{m.group(2)}.{inner}'
    return None


def _resize_bias_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """(heads, S1*S1) -> (heads, size*size): bicubic, align_corners=False, no antialias (Cream detection)."""
    heads, length = table.shape
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f'attention bias table of length {length} is not a square window')
    resized = F.interpolate(table.detach().float().reshape(1, heads, side, side), size=(size, size),
                            mode='bicubic', align_corners=False)
    return resized.reshape(heads, size * size).to(table.dtype)


def convert_msra_state_dict(state_dict: Mapping[str, torch.Tensor], fmt: str = 'auto',
                            window_size: int | Sequence[int] = 7, return_report: bool = False):
    """Convert an EfficientViT-M state dict to this package's :class:`EfficientViTM` layout.

    Accepted layouts (``fmt``; ``'auto'`` detects it with :func:`detect_msra_format`):

    * ``'cream-cls'``: official Cream ImageNet checkpoints (pass the dict or its ``['model']``).  The
      ``attention_bias_idxs`` buffers and the classifier head (``head.*``, ``head_dist.*``) are dropped.
    * ``'cream-det'``: Cream's detection backbone, possibly inside a whole mmdet 2.x detector (``backbone.``
      prefix; the other keys are left out of the result and kept in ``report.other``).
    * ``'timm'``: timm ``efficientvit_m0..m5`` (any timm version; ``head.*`` dropped).
    * ``'evit_mm'``: this package's layout (only the bias tables may be resized).

    Every ``attention_biases`` table whose window differs from ``window_size`` (an int or one per stage) is
    resized bicubically as Cream's detection code does (``F.interpolate(mode='bicubic')``, no antialias;
    timm >= 1.0.31 resizes with antialias and gets different values).  The ImageNet checkpoints have 4x4
    tables in the last stage, which the default 7 turns into 7x7.

    BatchNorm ``num_batches_tracked`` counters missing from the source are added as 0 (they do not affect the
    outputs).  Keys that are not recognised are kept unchanged, so that a strict load reports them instead of
    silently ignoring them.  With ``return_report=True`` returns ``(state_dict, LoadReport)``.
    """
    if fmt not in ('auto', *MSRA_FORMATS):
        raise ValueError(f'fmt must be "auto" or one of {MSRA_FORMATS}, got {fmt!r}')
    windows = msra_per_stage(window_size, 'window_size')
    sd = strip_prefix(state_dict, 'module.')
    from_detector = any(k.startswith('backbone.') for k in sd)
    other = {}
    if from_detector:
        other = {k: v for k, v in sd.items() if not k.startswith('backbone.')}
        sd = strip_prefix(sd, 'backbone.', select=True)
    detected = detect_msra_format(sd)
    family = {'cream-cls': 'cream', 'cream-det': 'cream'}
    if fmt != 'auto' and family.get(fmt, fmt) != family.get(detected, detected):
        raise ValueError(f'the state dict was declared {fmt!r} but its keys are in the {detected!r} layout')
    report = LoadReport(format=fmt if fmt != 'auto' else detected, part='backbone.' if from_detector else '',
                        other=other)

    rename = {'cream': _rename_cream, 'timm': _rename_timm, 'evit_mm': lambda k: k}[family.get(detected, detected)]
    droppable = ('head.', 'head_dist.') if detected != 'evit_mm' else ()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith('attention_bias_idxs') or key.startswith(droppable):
            report.dropped.append(key)
            continue
        new_key = rename(key)
        if new_key is None:
            report.unrecognised.append(key)
            new_key = key
        out[new_key] = value

    for key, value in list(out.items()):
        m = re.match(r'^stages\.(\d+)\.blocks\.\d+\.attn\.attention_biases$', key)
        if m and int(m.group(1)) < MSRA_NUM_STAGES and value.dim() == 2:
            size = windows[int(m.group(1))]
            if value.shape[1] != size * size:
                out[key] = _resize_bias_table(value, size)
                report.resized.append((key, tuple(value.shape), tuple(out[key].shape)))

    # Some exports leave out the BN step counters; they do not affect the outputs, so restore them as 0.
    for key in list(out):
        if key.endswith('.running_mean'):
            counter = key[:-len('running_mean')] + 'num_batches_tracked'
            if counter not in out:
                out[counter] = torch.tensor(0, dtype=torch.long)
                report.added.append(counter)
    return (out, report) if return_report else out


def infer_msra_arch(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the hyper-parameters off a state dict (any layout), e.g. to build a model for a checkpoint.

    Returns ``dict(embed_dims, depths, num_heads, key_dims, kernels, window_size, name)`` where ``name`` is the
    entry of :data:`~evit_mm.models.registry.MSRA_ARCHS` with the same widths, depths and heads, or None.  ``kernels``
    (the q-conv kernel sizes of the widest stage's heads) is compared separately: an M0 trained with Cream's
    detection code has ``name='m0'`` and ``kernels=(7, 5, 3, 3)``.
    """
    sd = convert_msra_state_dict(state_dict, window_size=_table_windows(state_dict))  # tables as stored
    embed_dims, depths, num_heads, key_dims, windows = [], [], [], [], []
    kernels: tuple[int, ...] = ()
    for s in range(MSRA_NUM_STAGES):
        prefix = f'stages.{s}.blocks.'
        blocks = {int(k[len(prefix):].split('.')[0]) for k in sd if k.startswith(prefix)}
        if not blocks:
            raise ValueError(f'the state dict has no blocks for stage {s}')
        depths.append(max(blocks) + 1)
        embed_dims.append(sd[f'{prefix}0.dw0.conv.weight'].shape[0])
        heads = sorted(int(m.group(1)) for k in sd
                       if (m := re.match(rf'^{re.escape(prefix)}0\.attn\.qkvs\.(\d+)\.conv\.weight$', k)))
        num_heads.append(len(heads))
        key_dims.append(sd[f'{prefix}0.attn.dws.0.conv.weight'].shape[0])
        windows.append(math.isqrt(sd[f'{prefix}0.attn.attention_biases'].shape[1]))
        stage_kernels = tuple(sd[f'{prefix}0.attn.dws.{h}.conv.weight'].shape[-1] for h in heads)
        if len(stage_kernels) > len(kernels):
            kernels = stage_kernels
    settings = dict(embed_dims=tuple(embed_dims), depths=tuple(depths), num_heads=tuple(num_heads),
                    key_dims=tuple(key_dims), kernels=kernels, window_size=tuple(windows), name=None)
    for name, ref in MSRA_ARCHS.items():
        if all(tuple(ref[k]) == settings[k] for k in ('embed_dims', 'depths', 'num_heads', 'key_dims')):
            settings['name'] = name
            break
    return settings


def _table_windows(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Per-stage window of the bias tables as stored (so that inference does not resize them)."""
    windows = [7] * MSRA_NUM_STAGES
    for key, value in strip_prefix(strip_prefix(state_dict, 'module.'), 'backbone.').items():
        if not key.endswith('attention_biases'):
            continue
        m = re.match(r'^blocks(\d+)\.', key) or re.match(r'^stages\.(\d+)\.', key)
        if m:
            stage = int(m.group(1)) - 1 if key.startswith('blocks') else int(m.group(1))
            if 0 <= stage < MSRA_NUM_STAGES:
                windows[stage] = math.isqrt(value.shape[1])
    return tuple(windows)


def cream_detector_to_evit_mm(state_dict: Mapping[str, torch.Tensor], window_size: int | Sequence[int] = 7):
    """A whole Cream (mmdet 2.x) detector state dict with its EfficientViT-M backbone (``backbone.*``, Cream's
    layout) converted to :class:`~evit_mm.models.EfficientViTM`'s, the neck and head keys unchanged. Returns
    ``(state_dict, report)``."""
    converted, report = convert_msra_state_dict(state_dict, window_size=window_size, return_report=True)
    out = dict((f'backbone.{k}', v) for k, v in converted.items())
    out.update(report.other)
    return out, report
