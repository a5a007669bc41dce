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

``init_cfg=dict(type='Pretrained', checkpoint=...)`` loads the ``head.*`` part of an official/evit_mm seg
checkpoint (or the keys under ``prefix``) strictly, with a key diff on mismatch. Without ``init_cfg`` the
layers keep PyTorch's default initialisation and the classifier gets mmseg's ``conv_seg`` initialisation
(normal, std 0.01, bias 0).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS
from torch import nn

from ..mm.common import load_pretrained_from_cfg
from ..models.contract import Fusable, LoadsPretrained
from ..models.seg_head import EfficientViTSegHead

__all__ = ['EfficientViTSegDecodeHead']

#: plain attributes of the core head that its ``forward`` / ``_select`` read
_CORE_ATTRIBUTES = ('fid_list', 'stride_list', 'head_stride', 'n_classes', 'backbone_out_indices', 'in_index', 'merge')
#: the core head's submodules (their names are the reference's state-dict keys)
_CORE_MODULES = ('input_ops', 'middle', 'output_ops')


@MODELS.register_module()
class EfficientViTSegDecodeHead(Fusable, LoadsPretrained, BaseDecodeHead):
    """The EfficientViT SegHead (reference ``SegHead``) as an mmseg decode head.

    Args:
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

    def __init__(self, in_channels: Sequence[int], head_width: int, head_depth: int, expand_ratio: float,
                 middle_op: str, final_expand: Optional[float], num_classes: int,
                 fid_list: Sequence[str] = ('stage4', 'stage3', 'stage2'), stride_list: Sequence[int] = (32, 16, 8),
                 head_stride: int = 8, act: str = 'hswish', norm_eps: float = 1e-5,
                 backbone_out_indices: Sequence[int] = (1, 2, 3, 4), dropout_ratio: float = 0.0,
                 in_index: Optional[Sequence[int]] = None, input_transform: str = 'multiple_select',
                 init_cfg: Optional[dict] = None, **kwargs):
        if input_transform != 'multiple_select':
            raise ValueError("EfficientViTSegDecodeHead selects its inputs itself: input_transform must be "
                             f"'multiple_select', got {input_transform!r}")
        if isinstance(in_channels, int):
            raise TypeError('in_channels must list the channels of every input in fid_list order, e.g. '
                            '(256, 128, 64)')
        classifier_in = round(head_width * final_expand) if final_expand else head_width
        # Positions of the heads' inputs in the backbone's feature tuple, for BaseDecodeHead's bookkeeping; the
        # core validates them (and computes the same tuple) below.
        stage_positions = [tuple(backbone_out_indices).index(int(f[5:])) if int(f[5:]) in backbone_out_indices
                           else -1 for f in fid_list]
        super().__init__(in_channels=list(in_channels), channels=classifier_in, num_classes=num_classes,
                         dropout_ratio=0.0, in_index=stage_positions, input_transform='multiple_select',
                         init_cfg=copy.deepcopy(init_cfg), **kwargs)
        # BaseDecodeHead built a conv_seg (and maybe a dropout) for its own cls_seg: the reference classifier
        # replaces both, so conv_seg must not stay behind as a parameter without gradient.
        del self.conv_seg
        self.dropout = None
        self.dropout_ratio = dropout_ratio

        core = EfficientViTSegHead(
            in_channel_list=tuple(in_channels), head_width=head_width, head_depth=head_depth,
            expand_ratio=expand_ratio, middle_op=middle_op, final_expand=final_expand, n_classes=self.out_channels,
            fid_list=tuple(fid_list), stride_list=tuple(stride_list), head_stride=head_stride,
            dropout=dropout_ratio, act=act, norm_eps=norm_eps, backbone_out_indices=tuple(backbone_out_indices))
        if in_index is not None and tuple(in_index) != core.in_index:
            raise ValueError(f'in_index={tuple(in_index)} disagrees with fid_list={tuple(fid_list)} and '
                             f'backbone_out_indices={tuple(backbone_out_indices)} (-> {core.in_index}); '
                             'leave in_index out')
        for name in _CORE_MODULES:
            self.add_module(name, getattr(core, name))
        for name in _CORE_ATTRIBUTES:
            setattr(self, name, getattr(core, name))
        self.head_width = head_width
        self.act = act
        self.norm_eps = norm_eps

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
        return (f'fid_list={self.fid_list}, backbone_out_indices={self.backbone_out_indices}, '
                f'num_classes={self.num_classes}, ' + super().extra_repr())
