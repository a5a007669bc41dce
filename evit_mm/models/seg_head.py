"""The EfficientViT segmentation head (decoder only; losses come from the mmseg adapter). Pure PyTorch.

Reference: ``SegHead`` in ``mit-han-lab/efficientvit`` (``efficientvit/models/efficientvit/seg.py``)::

    for each input (stage4, stage3, stage2 with strides 32, 16, 8):
        1x1 conv -> BN (no act) -> bicubic upsample by stride // head_stride (align_corners=False, in fp32)
    sum -> head_depth x residual MBConv / FusedMBConv -> [1x1 conv expand (BN, act)] -> [Dropout2d] 1x1 classifier

The result is stride-8 logits (no final upsample: mmseg's decode head resizes them to the label size).
Module names reproduce the reference's state-dict keys (``input_ops.{i}.op_list.0.conv``, ``input_ops.2.conv`` for
the stride-8 input that needs no upsampling, ``middle.op_list.{k}.main.*``, ``output_ops.0.op_list.{0,1}.*``),
so the ``head.*`` part of an official seg checkpoint loads unchanged.

Inputs: :meth:`EfficientViTSegHead.forward` takes either the reference's feature dict (``{'stage4': ...}``) or the
tuple/list an evit_mm backbone returns, i.e. the features of ``backbone_out_indices`` in that order. The head maps
its ``fid_list`` entry ``'stageK'`` to the position of ``K`` in ``backbone_out_indices`` (default
``(1, 2, 3, 4)``, the backbones' default): ``stage4 -> feats[3]``, ``stage3 -> feats[2]``, ``stage2 -> feats[1]``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from . import convert_mit
from .checkpoint import LoadReport
from .contract import Fusable, LoadsPretrained
from .efficientvit_mit import FusedMBConv, MBConv, Residual, build_efficientvit_backbone
from .layers import ActType, ConvNormAct, DAGHead, OpSequence, Resize, stage_number
from .registry import SEG_HEADS, variant_key

__all__ = ['EfficientViTSegHead', 'EfficientViTSeg', 'SEG_HEAD_CONFIGS', 'seg_head_config']


#: The reference's seg heads (``seg.py``), by ``'<model>_<dataset>'``. Every one reads stage4/3/2 (strides
#: 32/16/8) at head stride 8, with dropout 0. ``norm_eps`` / ``act`` are those of the whole reference model.
SEG_HEAD_CONFIGS: dict[str, dict[str, Any]] = {}


def _register(name, in_channel_list, head_width, head_depth, expand_ratio, middle_op, final_expand, n_classes):
    large = name.startswith('l')
    SEG_HEAD_CONFIGS[name] = dict(
        fid_list=('stage4', 'stage3', 'stage2'), in_channel_list=in_channel_list, stride_list=(32, 16, 8),
        head_stride=8, head_width=head_width, head_depth=head_depth, expand_ratio=expand_ratio,
        middle_op=middle_op, final_expand=final_expand, n_classes=n_classes, dropout=0.0,
        act='gelu' if large else 'hswish', norm_eps=1e-7 if large else 1e-5)


for _name, _row in SEG_HEADS.items():  # declared in the registry
    _register(_name, *_row)


def seg_head_config(name: str, **overrides) -> dict[str, Any]:
    """A copy of ``SEG_HEAD_CONFIGS[name]`` (e.g. ``'b1_cityscapes'``, ``'l2_ade20k'``) with ``overrides``."""
    key = variant_key(name, 'seg')
    if key not in SEG_HEAD_CONFIGS:
        raise ValueError(f'unknown seg head config {name!r}; known: {sorted(SEG_HEAD_CONFIGS)}')
    cfg = dict(SEG_HEAD_CONFIGS[key])
    cfg.update(overrides)
    return cfg


class EfficientViTSegHead(LoadsPretrained, DAGHead):
    """The EfficientViT segmentation decoder (reference ``SegHead``, a :class:`~evit_mm.models.layers.DAGHead`).

    Args:
        in_channel_list: channels of each input in ``fid_list`` order.
        head_width: channels of the fused stride-``head_stride`` map.
        head_depth: number of residual middle blocks.
        expand_ratio: expand ratio of the middle blocks.
        middle_op: ``'mbconv'`` (BN after all three convs) or ``'fmbconv'`` (BN after both convs).
        final_expand: if set, a 1x1 conv + BN + act to ``head_width * final_expand`` channels before the
            classifier.
        n_classes: classifier outputs.
        fid_list: the backbone stages used, reference names (default ``('stage4', 'stage3', 'stage2')``).
        stride_list: their strides (default ``(32, 16, 8)``); each is upsampled by ``stride // head_stride``.
        head_stride: output stride (default 8).
        dropout: ``Dropout2d`` probability before the classifier (reference default 0).
        act: activation name (``'hswish'`` for B, ``'gelu'`` for L).
        norm_eps: BatchNorm eps (1e-5 for B, 1e-7 for L, as the reference).
        backbone_out_indices: the stage numbers of the feature tuple ``forward`` receives, i.e. the backbone's
            ``out_indices`` (default ``(1, 2, 3, 4)``). Unused for dict inputs.
    """

    def __init__(self, in_channel_list: Sequence[int], head_width: int, head_depth: int, expand_ratio: float,
                 middle_op: str, final_expand: Optional[float], n_classes: int,
                 fid_list: Sequence[str] = ('stage4', 'stage3', 'stage2'), stride_list: Sequence[int] = (32, 16, 8),
                 head_stride: int = 8, dropout: float = 0.0, act: ActType = 'hswish', norm_eps: float = 1e-5,
                 backbone_out_indices: Sequence[int] = (1, 2, 3, 4)):
        if not len(fid_list) == len(in_channel_list) == len(stride_list):
            raise ValueError('fid_list, in_channel_list and stride_list must have the same length')
        if any(s % head_stride for s in stride_list) or min(stride_list) < head_stride:
            raise ValueError(f'every stride in {tuple(stride_list)} must be a multiple of head_stride={head_stride}')
        inputs = []
        for cin, stride in zip(in_channel_list, stride_list):
            conv = ConvNormAct(cin, head_width, 1, norm_eps=norm_eps)
            factor = stride // head_stride
            # the reference wraps conv + upsample in an OpSequential only when there is something to upsample
            inputs.append(conv if factor == 1 else OpSequence([conv, Resize(factor=factor)]))

        if middle_op == 'mbconv':
            def block():
                return MBConv(head_width, head_width, 1, expand_ratio, act=act, norm_eps=norm_eps)
        elif middle_op == 'fmbconv':
            def block():
                return FusedMBConv(head_width, head_width, 1, expand_ratio, act=act, norm_eps=norm_eps)
        else:
            raise ValueError(f"middle_op must be 'mbconv' or 'fmbconv', got {middle_op!r}")
        middle = OpSequence([Residual(block()) for _ in range(head_depth)])

        out_ops, width = [], head_width
        if final_expand:
            width = round(head_width * final_expand)
            out_ops.append(ConvNormAct(head_width, width, 1, act=act, norm_eps=norm_eps))
        out_ops.append(ConvNormAct(width, n_classes, 1, bias=True, norm=False, dropout=dropout))
        super().__init__(inputs, middle, [OpSequence(out_ops)])
        self.fid_list = tuple(fid_list)
        self.stride_list = tuple(stride_list)
        self.head_stride = head_stride
        self.n_classes = n_classes
        self.set_backbone_out_indices(backbone_out_indices)

    @classmethod
    def from_config(cls, name: str, **overrides) -> 'EfficientViTSegHead':
        """Build a reference head by name (see :data:`SEG_HEAD_CONFIGS`), e.g. ``from_config('b1_ade20k')``."""
        return cls(**seg_head_config(name, **overrides))

    def set_backbone_out_indices(self, out_indices: Sequence[int]):
        """Declare which backbone stages the feature tuple holds (see class docstring)."""
        out_indices = tuple(out_indices)
        missing = [f for f in self.fid_list if stage_number(f) not in out_indices]
        if missing:
            raise ValueError(f'the head reads {missing}, which backbone_out_indices={out_indices} does not provide')
        self.backbone_out_indices = out_indices
        self.in_index = tuple(out_indices.index(stage_number(f)) for f in self.fid_list)

    def _select(self, feats) -> list[torch.Tensor]:
        if isinstance(feats, Mapping):
            return [feats[f] for f in self.fid_list]
        if isinstance(feats, torch.Tensor):
            raise TypeError('EfficientViTSegHead takes a tuple/list or dict of backbone features, not a tensor')
        if len(feats) != len(self.backbone_out_indices):
            raise ValueError(f'got {len(feats)} features, expected {len(self.backbone_out_indices)} '
                             f'(backbone_out_indices={self.backbone_out_indices})')
        return [feats[i] for i in self.in_index]

    def forward(self, feats: Union[Sequence[torch.Tensor], Mapping[str, torch.Tensor]]) -> torch.Tensor:
        """Stride-``head_stride`` logits ``(B, n_classes, H / 8, W / 8)`` from the backbone features."""
        xs = self._select(feats)
        # the size every branch must reach: the finest input brought to head stride
        finest = min(range(len(xs)), key=lambda i: self.stride_list[i])
        f = self.stride_list[finest] // self.head_stride
        target = (xs[finest].shape[-2] * f, xs[finest].shape[-1] * f)
        return DAGHead.forward_dag(self, xs, size=target)

    def _convert_checkpoint(self, state_dict, fmt):
        """The ``head.*`` part of an official/evit_mm seg checkpoint, or a bare head state dict (``prefix=`` given,
        or keys that are the head's own)."""
        if not any(k.startswith(('head.', 'backbone.', 'image_encoder.')) for k in state_dict):
            return state_dict, LoadReport(format='head')
        head, report = convert_mit.mit_part(state_dict, 'head', fmt, model=type(self).__name__)
        if not head:
            raise KeyError('no head weights in it (no "head." keys)')
        if any(k.startswith('op_list.') for k in head):
            raise ValueError('this is a classification checkpoint: its head is a ClsHead, not a SegHead')
        return head, report


class EfficientViTSeg(Fusable, LoadsPretrained, nn.Module):
    """A whole segmentation network, image -> stride-8 logits: ``backbone`` (EfficientViT-B/L) -> ``head``.

    The reference's ``EfficientViTSeg`` without mmseg (its keys: ``backbone.*``, ``head.*``, so an official seg
    checkpoint loads with ``load_state_dict``). It is what the benchmark times and what
    :func:`evit_mm.onnx.export_onnx` exports for a segmentation model; training and evaluation go through the
    mmseg adapter, which builds the same two modules.
    """

    def __init__(self, config: str = 'b1_cityscapes', **head_overrides):
        super().__init__()
        cfg = seg_head_config(config, **head_overrides)
        arch = variant_key(config, 'seg').split('_')[0]
        self.config = config
        self.backbone = build_efficientvit_backbone(arch, norm_eps=cfg['norm_eps'])
        self.head = EfficientViTSegHead(**cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def _fuse(self) -> None:
        self.backbone.fuse()
        self.head.fuse()

    def _convert_checkpoint(self, state_dict, fmt):
        """An official seg checkpoint (``backbone.*`` + ``head.*``, as it is) or timm/evit_mm layouts."""
        fmt = convert_mit.detect_mit_format(state_dict) if fmt == 'auto' else fmt
        return convert_mit.convert_mit_state_dict(state_dict, fmt), LoadReport(format=fmt)
