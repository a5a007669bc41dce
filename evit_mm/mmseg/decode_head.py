"""The EfficientViT SegHead as an mmseg decode head: the core's modules with mmseg's loss machinery.

:class:`EfficientViTSegDecodeHead` *is* :class:`~evit_mm.models.seg_head.EfficientViTSegHead` (it adopts the core
head's ``input_ops`` / ``middle`` / ``output_ops`` and runs the core's ``forward``) plus what
:class:`~mmseg.models.decode_heads.decode_head.BaseDecodeHead` gives every mmseg head: ``loss_decode``
(CrossEntropyLoss by default), ``ignore_index`` (255), ``align_corners``, ``sampler``, ``loss()`` / ``predict()``.

Two things differ from a usual mmseg head, on purpose:

* **No ``conv_seg``.** ``BaseDecodeHead.__init__`` creates a 1x1 ``conv_seg``; here the reference's classifier
  (``output_ops.0.op_list.<last>.conv``) is the classifier, so ``conv_seg`` is deleted right after it is created.
  Keeping it would leave a parameter that never receives a gradient (DDP with ``find_unused_parameters=False``
  stops with "Expected to have finished reduction in the prior iteration ...") and a key that no official
  checkpoint has. :meth:`EfficientViTSegDecodeHead.cls_seg` applies the reference classifier.
* **State-dict keys are the reference's.** The head's keys are those of the official ``head.*`` part
  (``input_ops.{i}...``, ``middle.op_list.{k}...``, ``output_ops.0.op_list.{j}...``), so inside an mmseg
  segmentor an official seg checkpoint maps to ``decode_head.*`` by renaming the prefix and nothing else.

**A published head by name.** ``head='b1_cityscapes'`` (a key of
:data:`~evit_mm.models.seg_head.SEG_HEAD_CONFIGS`) fills in the head's architecture (in_channels, head_width,
head_depth, expand_ratio, middle_op, final_expand, num_classes, fid_list, stride_list, head_stride, act,
norm_eps), so a config states the name and only what mmseg adds (loss, ignore_index, align_corners...). A value
given besides the name must agree with the table (a ``ValueError`` names the ones that do not): a config that
inherits a head's numbers and renames it fails instead of building a head that is neither. For another head,
leave ``head`` out and give the numbers.

``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads the ``head.*`` part of an official/evit_mm seg
checkpoint (or the keys under ``prefix``) strictly, with a key diff on mismatch. Without ``init_cfg`` the
layers keep PyTorch's default initialisation and the classifier gets mmseg's ``conv_seg`` initialisation
(normal, std 0.01, bias 0).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Optional, Sequence

import torch
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import nn

from ..mm.common import load_pretrained_from_cfg
from ..models.contract import Fusable, LoadsPretrained
from ..models.seg_head import EfficientViTSegHead, seg_head_config

__all__ = ['EfficientViTSegDecodeHead']

#: plain attributes of the core head that its ``forward`` / ``_select`` read
_CORE_ATTRIBUTES = ('fid_list', 'stride_list', 'head_stride', 'n_classes', 'backbone_out_indices', 'in_index', 'merge')
#: the core head's submodules (their names are the reference's state-dict keys)
_CORE_MODULES = ('input_ops', 'middle', 'output_ops')
#: the arguments a named head fills in, with their field in SEG_HEAD_CONFIGS
_TABLE_FIELDS = dict(in_channels='in_channel_list', head_width='head_width', head_depth='head_depth',
                     expand_ratio='expand_ratio', middle_op='middle_op', final_expand='final_expand',
                     num_classes='n_classes', fid_list='fid_list', stride_list='stride_list',
                     head_stride='head_stride', act='act', norm_eps='norm_eps')
#: the optional ones' defaults, for a head given by its numbers: the core head's (the reference's values)
_DEFAULTS = {k: p.default for k, field in _TABLE_FIELDS.items()
             if (p := inspect.signature(EfficientViTSegHead).parameters[field]).default is not inspect.Parameter.empty}
_SEQUENCES = ('in_channels', 'fid_list', 'stride_list')


class _Unset:
    def __repr__(self) -> str:
        return '<not given>'


#: default of the arguments in _TABLE_FIELDS: "not given" (None is a value: final_expand=None)
_UNSET: Any = _Unset()


def _head_settings(head: Optional[str], given: dict[str, Any]) -> dict[str, Any]:
    """The head's architecture arguments (:data:`_TABLE_FIELDS`): the ``SEG_HEAD_CONFIGS`` entry named ``head``,
    which the ``given`` values (``_UNSET``: not given) must agree with, or, without a name, the given values and
    the reference's defaults for the optional ones."""
    given = {k: tuple(v) if k in _SEQUENCES and v is not _UNSET else v for k, v in given.items()}
    if head is None:
        settings = {k: _DEFAULTS[k] if v is _UNSET and k in _DEFAULTS else v for k, v in given.items()}
        missing = [k for k, v in settings.items() if v is _UNSET]
        if missing:
            raise TypeError(f'EfficientViTSegDecodeHead needs head=<a SEG_HEAD_CONFIGS name> or {missing}')
        return settings
    table = seg_head_config(head)
    settings = {k: table[field] for k, field in _TABLE_FIELDS.items()}
    clashes = [f'{k}={given[k]!r} (the table: {v!r})' for k, v in settings.items() if given[k] not in (_UNSET, v)]
    if clashes:
        raise ValueError(f'head={head!r} disagrees with ' + ', '.join(clashes) + '; leave these out (the name '
                         'gives them) or leave out head and give every setting')
    return settings


@MODELS.register_module()
class EfficientViTSegDecodeHead(Fusable, LoadsPretrained, BaseDecodeHead):
    """The EfficientViT SegHead (reference ``SegHead``) as an mmseg decode head.

    Args:
        head: a published head, by its :data:`~evit_mm.models.seg_head.SEG_HEAD_CONFIGS` name
            (``'<model>_<dataset>'``, e.g. ``'b1_cityscapes'``): it gives every architecture argument below
            (``in_channels`` .. ``norm_eps``); any of them also given must agree. Without it, give them.
        in_channels: channels of the inputs in ``fid_list`` order (the reference's ``in_channel_list``), e.g.
            ``(256, 128, 64)`` for B1: stage4, stage3, stage2.
        head_width, head_depth, expand_ratio, middle_op, final_expand: the reference head's settings (see
            :data:`evit_mm.models.seg_head.SEG_HEAD_CONFIGS`).
        num_classes: classes (19 for Cityscapes, 150 for ADE20K).
        fid_list, stride_list, head_stride: the backbone stages read and their strides (reference defaults).
        act: ``'hswish'`` (B) or ``'gelu'`` (L). norm_eps: 1e-5 (B) or 1e-7 (L), as the reference.
        backbone_out_indices: the backbone's ``out_indices`` (default ``(1, 2, 3, 4)``). The head takes the
            backbone's whole feature tuple and picks stage4/3/2 from it; ``in_index`` is derived from this and
            need not be given (if given, it must agree).
        dropout_ratio: ``Dropout2d`` before the classifier (reference 0; mmseg's usual default 0.1 is *not*
            used). It is applied by the reference classifier, so it adds no state-dict key.
        init_cfg: ``None`` (PyTorch default init, classifier N(0, 0.01)), ``dict(type='Pretrained',
            checkpoint=..., prefix=None)`` (strict load of the head part of a seg checkpoint) or any mmengine
            init config.
        **kwargs: the rest of :class:`BaseDecodeHead`'s arguments: ``loss_decode``, ``ignore_index``,
            ``sampler``, ``align_corners``, ``out_channels``, ``threshold``. ``input_transform`` is always
            ``'multiple_select'``; ``conv_cfg`` / ``norm_cfg`` / ``act_cfg`` are not used by this head (its norm
            is the reference's BatchNorm; convert to SyncBN with the runner's ``sync_bn``).
    """

    def __init__(self, head: Optional[str] = None, in_channels: Sequence[int] = _UNSET, head_width: int = _UNSET,
                 head_depth: int = _UNSET, expand_ratio: float = _UNSET, middle_op: str = _UNSET,
                 final_expand: Optional[float] = _UNSET, num_classes: int = _UNSET, fid_list: Sequence[str] = _UNSET,
                 stride_list: Sequence[int] = _UNSET, head_stride: int = _UNSET, act: str = _UNSET,
                 norm_eps: float = _UNSET, backbone_out_indices: Sequence[int] = (1, 2, 3, 4),
                 dropout_ratio: float = 0.0, in_index: Optional[Sequence[int]] = None,
                 input_transform: str = 'multiple_select', init_cfg: Optional[dict] = None, **kwargs):
        if input_transform != 'multiple_select':
            raise ValueError("EfficientViTSegDecodeHead selects its inputs itself: input_transform must be "
                             f"'multiple_select', got {input_transform!r}")
        if isinstance(in_channels, int):
            raise TypeError('in_channels must list the channels of every input in fid_list order, e.g. '
                            '(256, 128, 64)')
        arch = _head_settings(head, dict(
            in_channels=in_channels, head_width=head_width, head_depth=head_depth, expand_ratio=expand_ratio,
            middle_op=middle_op, final_expand=final_expand, num_classes=num_classes, fid_list=fid_list,
            stride_list=stride_list, head_stride=head_stride, act=act, norm_eps=norm_eps))
        in_channels, head_width, final_expand = arch['in_channels'], arch['head_width'], arch['final_expand']
        fid_list = arch['fid_list']
        classifier_in = round(head_width * final_expand) if final_expand else head_width
        # Positions of the heads' inputs in the backbone's feature tuple, for BaseDecodeHead's bookkeeping; the
        # core validates them (and computes the same tuple) below.
        stage_positions = [tuple(backbone_out_indices).index(int(f[5:])) if int(f[5:]) in backbone_out_indices
                           else -1 for f in fid_list]
        super().__init__(in_channels=list(in_channels), channels=classifier_in, num_classes=arch['num_classes'],
                         dropout_ratio=0.0, in_index=stage_positions, input_transform='multiple_select',
                         init_cfg=copy.deepcopy(init_cfg), **kwargs)
        # BaseDecodeHead built a conv_seg (and maybe a dropout) for its own cls_seg: the reference classifier
        # replaces both, so conv_seg must not stay behind as a parameter without gradient.
        del self.conv_seg
        self.dropout = None
        self.dropout_ratio = dropout_ratio

        core = EfficientViTSegHead(
            in_channel_list=tuple(in_channels), head_width=head_width, head_depth=arch['head_depth'],
            expand_ratio=arch['expand_ratio'], middle_op=arch['middle_op'], final_expand=final_expand,
            n_classes=self.out_channels, fid_list=tuple(fid_list), stride_list=tuple(arch['stride_list']),
            head_stride=arch['head_stride'], dropout=dropout_ratio, act=arch['act'], norm_eps=arch['norm_eps'],
            backbone_out_indices=tuple(backbone_out_indices))
        if in_index is not None and tuple(in_index) != core.in_index:
            raise ValueError(f'in_index={tuple(in_index)} disagrees with fid_list={tuple(fid_list)} and '
                             f'backbone_out_indices={tuple(backbone_out_indices)} (-> {core.in_index}); '
                             'leave in_index out')
        for name in _CORE_MODULES:
            self.add_module(name, getattr(core, name))
        for name in _CORE_ATTRIBUTES:
            setattr(self, name, getattr(core, name))
        self.head = head
        self.head_width = head_width
        self.act = arch['act']
        self.norm_eps = arch['norm_eps']

    # -- the core head's behaviour, run on this module's (adopted) attributes ---------------------------------
    _select = EfficientViTSegHead._select
    set_backbone_out_indices = EfficientViTSegHead.set_backbone_out_indices
    _fuse = EfficientViTSegHead._fuse
    _convert_checkpoint = EfficientViTSegHead._convert_checkpoint

    def forward(self, inputs) -> torch.Tensor:
        """Stride-8 logits ``(B, num_classes, H/8, W/8)`` from the backbone's feature tuple (or the reference's
        feature dict). mmseg resizes them to the label / image size (``loss_by_feat`` / ``predict_by_feat``)."""
        return EfficientViTSegHead.forward(self, inputs)

    @property
    def classifier(self) -> nn.Module:
        """The reference classifier (``output_ops.0.op_list.<last>``: [Dropout2d] + 1x1 conv with bias)."""
        return self.output_ops[0].op_list[-1]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Classify each pixel of the head's final features (what ``conv_seg`` does in other mmseg heads)."""
        return self.classifier(feat)

    # -- initialisation ---------------------------------------------------------------------------------------
    def init_weights(self):
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            load_pretrained_from_cfg(self, cfg)
            return
        if cfg is None:
            conv = self.classifier.conv
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        super().init_weights()

    def extra_repr(self) -> str:
        return (f'head={self.head!r}, fid_list={self.fid_list}, backbone_out_indices={self.backbone_out_indices}, '
                f'num_classes={self.num_classes}, ' + super().extra_repr())
