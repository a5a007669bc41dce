"""``EfficientViTEncoderDecoder``: mmseg's EncoderDecoder plus the reference's evaluation and official checkpoints.

What it adds to :class:`mmseg.models.segmentors.EncoderDecoder` (everything else, training included, is mmseg's):

1. **The reference's evaluation as a config option**: ``test_cfg=dict(mode='whole', resize_mode='bicubic')``.
   mmseg resizes the decode head's logits twice, bilinearly: to the network input in ``predict_by_feat`` and
   then to the original image in ``postprocess_result``. The reference
   (``applications/efficientvit_seg/eval_efficientvit_seg_model.py``) resizes the stride-8 logits *once*,
   bicubically (``F.interpolate(mode='bicubic', align_corners=False)``), straight to the label's size, and takes
   the argmax. With ``resize_mode`` set, whole-image inference does exactly that. Padding added by the data
   preprocessor (none in the reference protocol: every input is a multiple of 32 already) is removed by
   resizing to the padded input, cropping and resizing to the original size, with the same mode. With
   ``mode='slide'`` the crops' logits and the final resize use ``resize_mode`` too; without ``resize_mode``
   (``None``, the default) everything is exactly mmseg's behaviour.
   The other half of the reference protocol is the input resize, a test-pipeline setting: see
   :class:`evit_mm.mmseg.transforms.ShortSideResize` (ADE20K) and the configs in ``configs/efficientvit_seg``.
2. **Official seg checkpoints load as they are published.** Their keys are ``backbone.*`` and ``head.*``; mmseg
   names the head ``decode_head``. A load-state-dict pre-hook renames ``head.*`` to ``decode_head.*`` when a state
   dict has the official layout, so ``load_from=``, ``mim test ... --checkpoint`` and ``tools/test.py`` take the
   official ``.pt`` files directly (mmengine loads those non-strictly and only warns about missing keys).
   ``init_cfg=dict(type='Pretrained', checkpoint=...)`` on the segmentor converts any format evit_mm knows
   (official seg, evit_mm/mmseg) and loads *strictly*: a mismatch raises a
   :class:`~evit_mm.models.checkpoint.CheckpointMismatchError` listing the missing / unexpected keys.
"""
from __future__ import annotations

import copy
import re
from collections import OrderedDict
from typing import List, Mapping, Optional

import torch
import torch.nn.functional as F
from mmengine.structures import PixelData
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import Tensor

from ..mm.common import load_pretrained_from_cfg
from ..models.checkpoint import LoadReport, strip_prefix
from ..models.contract import LoadsPretrained

__all__ = ['EfficientViTEncoderDecoder', 'official_seg_to_mmseg', 'RESIZE_MODES']

RESIZE_MODES = (None, 'bilinear', 'bicubic', 'nearest')

_OFFICIAL_HEAD = re.compile(r'^head\.(input_ops|middle|output_ops)\.')


def _is_official_layout(keys, prefix: str = '') -> bool:
    n = len(prefix)
    sub = [k[n:] for k in keys if k.startswith(prefix)]
    return any(_OFFICIAL_HEAD.match(k) for k in sub) and not any(k.startswith('decode_head.') for k in sub)


def official_seg_to_mmseg(state_dict: Mapping[str, Tensor]) -> 'OrderedDict[str, Tensor]':
    """An official EfficientViT seg state dict (``backbone.*`` + ``head.*``; a ``module.`` prefix is removed) with
    the head renamed for mmseg (``decode_head.*``). Other layouts are returned unchanged (copied)."""
    sd = strip_prefix(state_dict, 'module.')
    if not _is_official_layout(sd):
        return sd
    return OrderedDict((('decode_head.' + k[len('head.'):]) if k.startswith('head.') else k, v)
                       for k, v in sd.items())


def _rename_official_keys(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                          error_msgs):
    """load_state_dict pre-hook: ``{prefix}head.*`` -> ``{prefix}decode_head.*`` for official seg checkpoints."""
    if not _is_official_layout(state_dict.keys(), prefix):
        return
    old = prefix + 'head.'
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + 'decode_head.' + key[len(old):]] = state_dict.pop(key)


def _resize(x: Tensor, size, mode: str, align_corners: bool) -> Tensor:
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # the reference resizes fp32 logits; bicubic on half is not implemented everywhere
    if mode == 'nearest':
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


@MODELS.register_module()
class EfficientViTEncoderDecoder(LoadsPretrained, EncoderDecoder):
    """mmseg's ``EncoderDecoder`` with the reference's evaluation option and official-checkpoint loading.

    Args (besides :class:`~mmseg.models.segmentors.EncoderDecoder`'s):
        test_cfg: mmseg's (``mode='whole'|'slide'``, ``crop_size``, ``stride``) plus ``resize_mode``:
            ``None`` (mmseg's two bilinear resizes) or ``'bicubic'`` / ``'bilinear'`` / ``'nearest'``: the logits
            are resized once, with that mode, straight to the original image size (the reference uses
            ``'bicubic'``).
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` loads a whole-model checkpoint (official seg
            ``backbone.*`` + ``head.*``, or an evit_mm/mmseg one) strictly; anything else is mmengine's.
    """

    def __init__(self, *args, init_cfg=None, **kwargs):
        super().__init__(*args, init_cfg=None, **kwargs)
        self.init_cfg = copy.deepcopy(init_cfg)
        mode = self.resize_mode
        if mode not in RESIZE_MODES:
            raise ValueError(f'test_cfg.resize_mode must be one of {RESIZE_MODES}, got {mode!r}')
        self.register_load_state_dict_pre_hook(_rename_official_keys)

    @property
    def resize_mode(self) -> Optional[str]:
        return (self.test_cfg or {}).get('resize_mode', None)

    # -- weights ---------------------------------------------------------------------------------------------
    def _convert_checkpoint(self, state_dict, fmt):
        """A whole-model checkpoint: the official seg layout (``head.*`` renamed ``decode_head.*``) or mmseg's."""
        official = _is_official_layout(state_dict)
        if fmt not in ('auto', 'official' if official else 'mmseg'):
            raise ValueError(f"declared {fmt!r}, but its keys are in the {'official' if official else 'mmseg'} "
                             'layout')
        return official_seg_to_mmseg(state_dict), LoadReport(format='official' if official else 'mmseg')

    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_pretrained_from_cfg(self, cfg)  # strict, converted by _convert_checkpoint; marks all initialised
            return
        super().init_weights()

    # -- inference -------------------------------------------------------------------------------------------
    def encode_decode(self, inputs: Tensor, batch_img_metas: List[dict]) -> Tensor:
        """Logits at the size of ``inputs`` (used by slide inference, and by whole inference without
        ``resize_mode``)."""
        if self.resize_mode is None:
            return super().encode_decode(inputs, batch_img_metas)
        x = self.extract_feat(inputs)
        logits = self.decode_head.forward(x)
        return _resize(logits, inputs.shape[2:], self.resize_mode, self.align_corners)

    def predict(self, inputs: Tensor, data_samples=None):
        if self.resize_mode is None or self.test_cfg.get('mode', 'whole') != 'whole':
            return super().predict(inputs, data_samples)
        # whole image, the reference's way: the head's stride-8 logits, resized once in postprocess_result
        logits = self.decode_head.forward(self.extract_feat(inputs))
        return self.postprocess_result(logits, data_samples, input_shape=tuple(inputs.shape[2:]))

    def postprocess_result(self, seg_logits: Tensor, data_samples=None, input_shape=None):
        """mmseg's ``postprocess_result`` when ``resize_mode`` is ``None``. Otherwise ``seg_logits`` (at the input
        size, or, given ``input_shape``, at any stride of it) are brought to each image's ``ori_shape`` with
        ``resize_mode``: directly when the input had no padding, else through the padded input size."""
        mode = self.resize_mode
        if mode is None:
            return super().postprocess_result(seg_logits, data_samples)
        batch_size, C = seg_logits.shape[:2]
        input_shape = tuple(input_shape or seg_logits.shape[2:])
        only_prediction = data_samples is None
        if only_prediction:
            data_samples = [SegDataSample() for _ in range(batch_size)]
        for i in range(batch_size):
            logits = seg_logits[i:i + 1]
            if not only_prediction:
                meta = data_samples[i].metainfo
                pad = meta.get('img_padding_size', meta.get('padding_size', [0, 0, 0, 0]))
                left, right, top, bottom = (int(p) for p in pad)
                if any((left, right, top, bottom)):
                    logits = _resize(logits, input_shape, mode, self.align_corners)
                    logits = logits[:, :, top:input_shape[0] - bottom, left:input_shape[1] - right]
                flip = meta.get('flip', None)
                if flip:
                    direction = meta.get('flip_direction', None)
                    assert direction in ['horizontal', 'vertical']
                    logits = logits.flip(dims=(3,) if direction == 'horizontal' else (2,))
                logits = _resize(logits, meta['ori_shape'], mode, self.align_corners)
            else:
                logits = _resize(logits, input_shape, mode, self.align_corners)
            logits = logits[0]
            if C > 1:
                pred = logits.argmax(dim=0, keepdim=True)
            else:
                logits = logits.sigmoid()
                pred = (logits > self.decode_head.threshold).to(logits)
            data_samples[i].set_data({'seg_logits': PixelData(data=logits), 'pred_sem_seg': PixelData(data=pred)})
        return data_samples
