"""EfficientViT (MIT Han lab) backbones: B0-B3, L0-L3 and the XL0/XL1 backbones of EfficientViT-SAM.

Pure PyTorch (no mm*, no timm). The paper is "EfficientViT: Multi-Scale Linear Attention for High-Resolution
Dense Prediction" (Cai et al., ICCV 2023); the reference implementation is ``mit-han-lab/efficientvit``.

Layout and naming
-----------------
The module tree deliberately reproduces the reference's *state-dict key layout* (``input_stem.op_list.0.conv``,
``stages.3.op_list.1.context_module.main.qkv.conv`` ...), so an official checkpoint loads after stripping its
``backbone.`` prefix and nothing else. The Python classes themselves are our own: one ``ConvNormAct`` with an
explicit fold-into-conv ``fuse()`` (shared by every evit_mm model: :mod:`evit_mm.models.layers`), blocks that
take a boolean ``fewer_norm`` instead of per-layer norm/bias tuples, and backbones driven by small architecture
tables.

* :class:`EfficientViTB` (B0-B3): BatchNorm + Hardswish. Key layout ``input_stem.*`` (stage 0) and
  ``stages.{0..3}.*`` (stages 1..4).
* :class:`EfficientViTL` (L0-L3, XL0, XL1): BatchNorm + tanh-GELU. Key layout ``stages.{0..4|5}.*`` where
  ``stages.0`` is the stem (stage 0).

Feature numbering (``out_indices``)
-----------------------------------
Both classes number their stages exactly like the reference's output dict: stage ``0`` is the stem (stride 2),
stage ``i`` has stride ``2**(i+1)``: stage1 = 4, stage2 = 8, stage3 = 16, stage4 = 32 and, for XL, stage5 = 64.
``out_indices`` lists stage numbers; ``forward`` returns those stages' outputs as a tuple in the listed order.
The default is every stage but the stem, i.e. ``(1, 2, 3, 4)`` (``(1, 2, 3, 4, 5)`` for XL). timm's
``features_only`` indices ``(0, 1, 2, 3)`` are our ``(1, 2, 3, 4)``. :meth:`forward_dict` returns the
reference's dict (``input``, ``stage0``, ..., ``stage_final``) for code written against the reference.

Numerics (kept identical to the reference on purpose)
-----------------------------------------------------
* Norm eps: the reference builds every model with ``nn.BatchNorm2d`` defaults and then overrides the eps of
  every norm layer in its model zoos: B 1e-5, L seg/cls 1e-7, every SAM model 1e-6. Here ``norm_eps`` is a
  constructor argument; its default (``None``) picks the value of the only official checkpoints that exist for
  that architecture: B0-B3 1e-5, L1-L3 1e-7, L0/XL0/XL1 1e-6 (these three exist only as SAM backbones). Pass
  ``norm_eps=1e-6`` explicitly when building L1/L2 for SAM.
* :class:`LiteMLA` uses eps 1e-15 (timm uses 1e-5), upcasts only *fp16* q/k/v to fp32 (bf16 stays bf16 for
  the matmuls and is upcast for the division), and maps with ``H * W <= head_dim`` take the quadratic
  (softmax-free ``q k^T``) path, exactly as the reference decides it. See the class docstring for where the
  computation itself is reorganised.

Checkpoints
-----------
:mod:`evit_mm.models.convert_mit` turns official cls/seg/SAM checkpoints, timm ``efficientvit_b*/l*`` state dicts
and our own state dicts into one layout (the official one: ``backbone.*`` plus ``head.*``);
``EfficientViTB.load_pretrained`` / ``EfficientViTL.load_pretrained`` (the backbone contract of
:mod:`evit_mm.models.contract`) take any of them and load strictly.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import convert_mit
from .contract import EfficientViTBackbone
from .convert_mit import MIT_CHECKPOINT_FORMATS, convert_mit_state_dict, detect_mit_format, split_mit_state_dict
from .layers import ActType, ConvNormAct, OpSequence, _autocast_enabled, build_act, fuse_conv_norm_acts
from .registry import MIT_B_ARCHS, MIT_L_ARCHS, variant_key

__all__ = [
    # building blocks
    'build_act', 'ConvNormAct', 'GroupedPointwiseConv', 'DSConv', 'MBConv', 'FusedMBConv', 'ResBlock', 'Residual',
    'OpSequence',
    'LiteMLA', 'EfficientViTBlock',
    # backbones
    'EfficientViTB', 'EfficientViTL', 'efficientvit_b0', 'efficientvit_b1', 'efficientvit_b2', 'efficientvit_b3',
    'efficientvit_l0', 'efficientvit_l1', 'efficientvit_l2', 'efficientvit_l3', 'efficientvit_xl0',
    'efficientvit_xl1', 'build_efficientvit_backbone', 'MIT_BACKBONE_ARCHS',
    # checkpoints (evit_mm.models.convert_mit), re-exported
    'detect_mit_format', 'convert_mit_state_dict', 'split_mit_state_dict', 'MIT_CHECKPOINT_FORMATS',
]

# --------------------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------------------

class DSConv(nn.Module):
    """Depthwise-separable conv: ``depth_conv`` (dw kxk, stride) -> ``point_conv`` (1x1, no act).

    ``fewer_norm`` (the reference's option for blocks that feed attention stages) drops the BN of the first
    conv and gives it a bias instead.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: ActType = 'hswish',
                 norm_eps: float = 1e-5, fewer_norm: bool = False, kernel_size: int = 3):
        super().__init__()
        self.depth_conv = ConvNormAct(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                                      bias=fewer_norm, norm=not fewer_norm, act=act, norm_eps=norm_eps)
        self.point_conv = ConvNormAct(in_channels, out_channels, 1, norm_eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class MBConv(nn.Module):
    """Inverted residual: ``inverted_conv`` 1x1 expand -> ``depth_conv`` dw kxk (stride) -> ``point_conv`` 1x1.

    ``mid = round(in_channels * expand_ratio)``; activations after the first two convs only. With
    ``fewer_norm`` the first two convs have a bias and no BN (only ``point_conv`` is normalised).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 4,
                 act: ActType = 'hswish', norm_eps: float = 1e-5, fewer_norm: bool = False,
                 kernel_size: int = 3):
        super().__init__()
        mid = round(in_channels * expand_ratio)
        self.inverted_conv = ConvNormAct(in_channels, mid, 1, bias=fewer_norm, norm=not fewer_norm, act=act,
                                         norm_eps=norm_eps)
        self.depth_conv = ConvNormAct(mid, mid, kernel_size, stride, groups=mid, bias=fewer_norm,
                                      norm=not fewer_norm, act=act, norm_eps=norm_eps)
        self.point_conv = ConvNormAct(mid, out_channels, 1, norm_eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(self.inverted_conv(x)))


class _TwoConvBlock(nn.Module):
    """``first`` full kxk conv (in -> mid, stride, act; ``fewer_norm``: bias instead of BN) -> ``second`` conv
    (mid -> out, no act), ``mid = round(in * expand_ratio)``. Subclasses give the reference's module names and the
    second conv's kernel."""

    names: tuple[str, str]
    pointwise_second: bool

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expand_ratio: float = 4,
                 act: ActType = 'gelu', norm_eps: float = 1e-5, fewer_norm: bool = False,
                 kernel_size: int = 3):
        super().__init__()
        mid = round(in_channels * expand_ratio)
        first, second = self.names
        self.add_module(first, ConvNormAct(in_channels, mid, kernel_size, stride, bias=fewer_norm,
                                           norm=not fewer_norm, act=act, norm_eps=norm_eps))
        self.add_module(second, ConvNormAct(mid, out_channels, 1 if self.pointwise_second else kernel_size,
                                            norm_eps=norm_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self.names
        return self._modules[second](self._modules[first](x))


class FusedMBConv(_TwoConvBlock):
    """Fused inverted residual: ``spatial_conv`` full kxk (in -> mid, stride) -> ``point_conv`` 1x1 (no act)."""

    names, pointwise_second = ('spatial_conv', 'point_conv'), True


class ResBlock(_TwoConvBlock):
    """Two full kxk convs, ``conv1`` (stride, act) -> ``conv2`` (no act)."""

    names, pointwise_second = ('conv1', 'conv2'), False


_LOCAL_BLOCKS = {'ds': DSConv, 'mb': MBConv, 'fmb': FusedMBConv, 'res': ResBlock}


class Residual(nn.Module):
    """``main(x) + x``, or just ``main(x)`` when ``shortcut=False`` (the reference's stride-2 blocks).

    The wrapped module lives under ``main`` in both cases, which is where the reference keeps it.
    """

    def __init__(self, main: nn.Module, shortcut: bool = True):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + x if self.shortcut else self.main(x)

    def extra_repr(self) -> str:
        return f'shortcut={self.shortcut}'


class GroupedPointwiseConv(nn.Conv2d):
    """A grouped 1x1 convolution (an ``nn.Conv2d``, same parameters and state-dict keys) computed as one batched
    matmul over the groups.

    LiteMLA's aggregation uses a 1x1 conv with ``groups = 3 * heads`` (one group per q/k/v block). On CPU, PyTorch
    runs such convs through its generic path, one GEMM call per group; a single batched ``matmul`` of the
    ``(groups, out/g, in/g)`` weight with the ``(B, groups, in/g, H*W)`` input is several times faster and exports
    to ONNX as a plain MatMul.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int, bias: bool = False):
        super().__init__(in_channels, out_channels, 1, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        g = self.groups
        w = self.weight.reshape(g, self.out_channels // g, C // g)
        y = torch.matmul(w, x.reshape(B, g, C // g, H * W)).reshape(B, self.out_channels, H, W)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention (ReLU kernel), as in EfficientViT.

    ``qkv`` (1x1 conv, no norm) produces ``heads`` groups of ``[q | k | v]`` (``dim`` channels each, head-major
    channel order). Each ``aggreg`` branch (depthwise ``s x s`` conv + 1x1 conv grouped per q/k/v block, the
    latter run as a batched matmul, see :class:`GroupedPointwiseConv`) turns these into ``heads`` more groups
    from a larger receptive field; all ``heads * (1 + len(scales))`` groups attend independently and ``proj``
    (1x1 conv + BN) mixes the concatenated outputs.

    For every group, with ``phi = relu``::

        out_i = sum_j v_j (phi(k_j) . phi(q_i)) / (sum_j phi(k_j) . phi(q_i) + eps)

    Linear path (``H * W > dim``): ``kv = v phi(k)^T`` (``dim x dim``) is formed first, so the cost is linear
    in the number of tokens. The reference appends a row of ones to ``v`` (an ``N``-sized copy) so that one
    matmul yields numerator and normaliser; here the normaliser row ``sum_j phi(k_j)`` is appended to the small
    ``dim x dim`` matrix instead, which gives the same single ``(dim+1) x N`` product without copying ``v``.
    Quadratic path (``H * W <= dim``, tiny maps): the ``N x N`` map ``phi(k)^T phi(q)`` is normalised over
    keys and applied to ``v``, as in the reference.

    Precision follows the reference: autocast is disabled inside the attention; fp16 q/k/v are upcast to fp32
    before the matmuls (fp16 overflows otherwise, reference issue #110); bf16 matmuls stay bf16 and only the
    division is done in fp32; the result is cast back to the input dtype. ``eps`` is 1e-15 as in the reference
    (timm uses 1e-5); it is a plain attribute and may be changed after construction.
    """

    def __init__(self, in_channels: int, out_channels: int, dim: int = 32, heads: Optional[int] = None,
                 heads_ratio: float = 1.0, scales: Sequence[int] = (5,), norm_eps: float = 1e-5,
                 eps: float = 1e-15):
        super().__init__()
        heads = int(in_channels // dim * heads_ratio) if heads is None else heads
        if heads < 1:
            raise ValueError(f'LiteMLA needs at least one head: in_channels={in_channels}, dim={dim}')
        total = heads * dim
        self.dim = dim
        self.heads = heads
        self.eps = eps
        self.qkv = ConvNormAct(in_channels, 3 * total, 1, norm=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(3 * total, 3 * total, s, padding=s // 2, groups=3 * total, bias=False),
                GroupedPointwiseConv(3 * total, 3 * total, groups=3 * heads),
            ) for s in scales)
        self.proj = ConvNormAct(total * (1 + len(scales)), out_channels, 1, norm_eps=norm_eps)

    # The two attention kernels take the concatenated multi-scale qkv (B, G*3*dim, H, W) and return
    # (B, G*dim, H, W) in qkv's dtype.
    def _linear_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        B, _, H, W = qkv.shape
        dtype = qkv.dtype
        if dtype == torch.float16:
            qkv = qkv.float()
        d = self.dim
        qkv = qkv.reshape(B, -1, 3 * d, H * W)
        q = F.relu(qkv[:, :, :d])
        k = F.relu(qkv[:, :, d:2 * d])
        v = qkv[:, :, 2 * d:]
        kv = torch.matmul(v, k.transpose(-1, -2))  # (B, G, d, d)
        kv = torch.cat([kv, k.sum(dim=-1).unsqueeze(-2)], dim=-2)  # + normaliser row -> (B, G, d+1, d)
        out = torch.matmul(kv, q)  # (B, G, d+1, N)
        if out.dtype == torch.bfloat16:
            out = out.float()
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.to(dtype).reshape(B, -1, H, W)

    def _quadratic_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        B, _, H, W = qkv.shape
        d = self.dim
        qkv = qkv.reshape(B, -1, 3 * d, H * W)
        q = F.relu(qkv[:, :, :d])
        k = F.relu(qkv[:, :, d:2 * d])
        v = qkv[:, :, 2 * d:]
        att = torch.matmul(k.transpose(-1, -2), q)  # (B, G, N_keys, N_queries)
        dtype = att.dtype
        if dtype in (torch.float16, torch.bfloat16):
            att = att.float()
        att = (att / (att.sum(dim=2, keepdim=True) + self.eps)).to(dtype)
        return torch.matmul(v, att).reshape(B, -1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        # Every group attends on its own, so each branch (qkv itself, then each aggregation scale) is attended
        # separately and only the three times narrower outputs are concatenated, in the reference's group order.
        # Concatenating q/k/v first (as the reference does) copies the widest tensor of the block; for
        # channels_last tensors (evit_mm.deploy) that channel concatenation is a strided interleave, several times
        # slower than the attention itself.
        branches = [qkv] + [op(qkv) for op in self.aggreg]
        H, W = qkv.shape[-2:]
        attention = self._linear_attention if H * W > self.dim else self._quadratic_attention
        if _autocast_enabled(qkv.device.type):
            with torch.autocast(device_type=qkv.device.type, enabled=False):
                outs = [attention(b) for b in branches]
        else:
            outs = [attention(b) for b in branches]
        return self.proj(outs[0] if len(outs) == 1 else torch.cat(outs, dim=1))


class EfficientViTBlock(nn.Module):
    """``context_module`` (residual LiteMLA) followed by ``local_module`` (residual fewer-norm MBConv)."""

    def __init__(self, channels: int, dim: int = 32, expand_ratio: float = 4, scales: Sequence[int] = (5,),
                 act: ActType = 'hswish', norm_eps: float = 1e-5, heads_ratio: float = 1.0):
        super().__init__()
        self.context_module = Residual(LiteMLA(channels, channels, dim=dim, heads_ratio=heads_ratio,
                                               scales=scales, norm_eps=norm_eps))
        self.local_module = Residual(MBConv(channels, channels, expand_ratio=expand_ratio, act=act,
                                            norm_eps=norm_eps, fewer_norm=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_module(self.context_module(x))


# --------------------------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------------------------

def _table(rows: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """A registry table split into (arch settings, the official checkpoints' norm eps per arch)."""
    settings = {k: {n: v for n, v in row.items() if n != 'norm_eps'} for k, row in rows.items()}
    return settings, {k: row['norm_eps'] for k, row in rows.items()}


def _arch(arch: Union[str, Mapping[str, Any]], table: Mapping[str, Mapping[str, Any]], cls_name: str):
    if isinstance(arch, str):
        key = variant_key(arch)
        if key not in table:
            raise ValueError(f'{cls_name}: unknown arch {arch!r}; known: {sorted(table)}')
        return key, dict(table[key])
    return None, dict(arch)


class _MITBackbone(EfficientViTBackbone):
    """What the B and L/XL backbones share beyond the backbone contract (:mod:`evit_mm.models.contract`): stage
    strides ``2 ** (i + 1)``, BatchNorm folding into every ``ConvNormAct``, and the family's checkpoints.

    Subclasses build their modules, set ``width_list`` and list the stage modules, stem first, in
    ``_stage_module_names()``.
    """

    #: reference norm eps of the official checkpoints, per arch
    default_norm_eps: dict[str, float] = {}

    def _resolve_arch(self, arch: Union[str, Mapping[str, Any]]) -> tuple[list[int], list[int], dict[str, Any]]:
        """``(width_list, depth_list, settings)`` of a named arch (also sets ``self.arch``) or a settings dict."""
        self.arch, cfg = _arch(arch, self.arch_settings, type(self).__name__)
        return list(cfg['width_list']), list(cfg['depth_list']), cfg

    def _setup_outputs(self, out_indices, frozen_stages: int, norm_eval: bool):
        strides = tuple(2 ** (i + 1) for i in range(len(self.width_list)))
        self._setup_stages(self.width_list, strides, out_indices, frozen_stages, norm_eval)

    def _fuse(self) -> None:
        fuse_conv_norm_acts(self)

    def _convert_checkpoint(self, state_dict, fmt):
        """Official cls/seg/SAM checkpoints, timm's and evit_mm's (:func:`~.convert_mit.mit_part`)."""
        backbone, report = convert_mit.mit_part(state_dict, 'backbone', fmt, model=type(self).__name__)
        if not backbone:
            raise KeyError('no EfficientViT backbone weights in it')
        return backbone, report

    def _mismatch_hint(self, err, state_dict) -> str:
        return convert_mit.msra_checkpoint_hint(state_dict, type(self).__name__)


def _resolve_norm_eps(norm_eps, arch_key, defaults, fallback):
    if norm_eps is not None:
        return float(norm_eps)
    return defaults.get(arch_key, fallback)


class EfficientViTB(_MITBackbone):
    """EfficientViT-B0..B3 (BatchNorm + Hardswish; LiteMLA in the last two stages).

    Args:
        arch: ``'b0'`` ... ``'b3'`` or a dict with ``width_list`` (5 ints), ``depth_list`` (5 ints), ``dim``
            (LiteMLA head dim) and optionally ``expand_ratio`` (default 4).
        in_channels: input image channels.
        out_indices: stage numbers to return (0 = stem, stride 2; 4 = stride 32). Default: ``(1, 2, 3, 4)``.
        frozen_stages: freeze stages ``0..frozen_stages`` (parameters and BN statistics); -1 freezes nothing.
        norm_eval: keep all BatchNorms in eval mode while training.
        norm_eps: BatchNorm eps; default 1e-5, the value of the reference's B models.
        act: activation name, default ``'hswish'``.
        with_cp: activation checkpointing per block while training.

    Structure (reference ``EfficientViTBackbone``): stem = 3x3 s2 conv + ``depth[0]`` residual DSConvs; stages 1
    and 2 = ``depth[i]`` MBConvs (the first one stride 2, without shortcut); stages 3 and 4 = one stride-2
    fewer-norm MBConv + ``depth[i]`` EfficientViT blocks. The stem is ``input_stem``, stages 1-4 are
    ``stages[0..3]`` (state-dict keys of the reference).
    """

    arch_settings, default_norm_eps = _table(MIT_B_ARCHS)  # declared in the registry

    def __init__(self, arch: Union[str, Mapping[str, Any]] = 'b1', in_channels: int = 3,
                 out_indices: Optional[Sequence[int]] = None, frozen_stages: int = -1, norm_eval: bool = False,
                 norm_eps: Optional[float] = None, act: ActType = 'hswish', with_cp: bool = False):
        super().__init__()
        widths, depths, cfg = self._resolve_arch(arch)
        if len(widths) != 5 or len(depths) != 5:
            raise ValueError('EfficientViTB needs 5 widths and 5 depths (stem + 4 stages)')
        dim, expand = cfg['dim'], cfg.get('expand_ratio', 4)
        eps = _resolve_norm_eps(norm_eps, self.arch, self.default_norm_eps, 1e-5)
        self.norm_eps = eps
        kw = dict(act=act, norm_eps=eps)

        def local_block(cin, cout, stride, ratio, fewer_norm=False):
            # the reference uses a DSConv wherever the expand ratio is 1 (the stem), an MBConv otherwise
            if ratio == 1:
                return DSConv(cin, cout, stride, fewer_norm=fewer_norm, **kw)
            return MBConv(cin, cout, stride, ratio, fewer_norm=fewer_norm, **kw)

        stem = [ConvNormAct(in_channels, widths[0], 3, 2, act=act, norm_eps=eps)]
        stem += [Residual(local_block(widths[0], widths[0], 1, 1)) for _ in range(depths[0])]
        self.input_stem = OpSequence(stem, with_cp)

        stages, cin = [], widths[0]
        for i in (1, 2):  # convolutional stages: depth counts the downsampling block
            blocks = []
            for j in range(depths[i]):
                blocks.append(Residual(local_block(cin, widths[i], 2 if j == 0 else 1, expand), shortcut=j > 0))
                cin = widths[i]
            stages.append(OpSequence(blocks, with_cp))
        for i in (3, 4):  # attention stages: a downsampling block plus depth EfficientViT blocks
            blocks = [Residual(local_block(cin, widths[i], 2, expand, fewer_norm=True), shortcut=False)]
            cin = widths[i]
            blocks += [EfficientViTBlock(cin, dim=dim, expand_ratio=expand, **kw) for _ in range(depths[i])]
            stages.append(OpSequence(blocks, with_cp))
        self.stages = nn.ModuleList(stages)
        self.width_list = tuple(widths)
        self._setup_outputs(out_indices, frozen_stages, norm_eval)

    def _stage_module_names(self) -> list[str]:
        return ['input_stem'] + [f'stages.{i}' for i in range(len(self.stages))]


class EfficientViTL(_MITBackbone):
    """EfficientViT-L0..L3 and the EfficientViT-SAM XL0/XL1 backbones (BatchNorm + tanh-GELU).

    Args:
        arch: ``'l0'`` ... ``'l3'``, ``'xl0'``, ``'xl1'`` or a dict with ``width_list``, ``depth_list`` and
            optionally ``block_list`` (per stage: ``'res'``, ``'fmb'``, ``'mb'``, ``'att'`` or ``'att@3'``),
            ``expand_list``, ``fewer_norm_list`` and ``qkv_dim`` (default 32). Defaults are the L settings.
        in_channels, out_indices, frozen_stages, norm_eval, with_cp: as :class:`EfficientViTB`; default
            ``out_indices`` is every stage but the stem: ``(1, 2, 3, 4)`` for L, ``(1, ..., 5)`` for XL.
        norm_eps: BatchNorm eps; default = the official checkpoints' value: 1e-7 for L1-L3 (seg/cls), 1e-6 for
            L0, XL0 and XL1 (SAM only). EfficientViT-SAM L1/L2 need ``norm_eps=1e-6``.
        act: activation name, default ``'gelu'`` (tanh approximation).

    Structure (reference ``EfficientViTLargeBackbone``): stage 0 = 3x3 s2 conv + ``depth[0]`` residual blocks of
    ``block_list[0]``; stage i >= 1 = a stride-2 block without shortcut (``block_list[i]`` if it is an (F)MBConv,
    else an MBConv; expand ``4 * expand_list[i]``) + ``depth[i]`` residual blocks or EfficientViT blocks
    (``'att@3'`` = LiteMLA scales ``(3,)``). All stages, stem included, live in ``stages`` (reference keys).
    """

    arch_settings, default_norm_eps = _table(MIT_L_ARCHS)  # declared in the registry

    def __init__(self, arch: Union[str, Mapping[str, Any]] = 'l1', in_channels: int = 3,
                 out_indices: Optional[Sequence[int]] = None, frozen_stages: int = -1, norm_eval: bool = False,
                 norm_eps: Optional[float] = None, act: ActType = 'gelu', with_cp: bool = False):
        super().__init__()
        widths, depths, cfg = self._resolve_arch(arch)
        default = self.arch_settings['l1']  # a settings dict without block lists gets the L layout
        blocks_t = list(cfg.get('block_list', default['block_list']))
        expands = list(cfg.get('expand_list', default['expand_list']))
        fewer = list(cfg.get('fewer_norm_list', default['fewer_norm_list']))
        qkv_dim = cfg.get('qkv_dim', 32)
        if not len(widths) == len(depths) == len(blocks_t) == len(expands) == len(fewer):
            raise ValueError('EfficientViTL: width/depth/block/expand/fewer_norm lists differ in length')
        eps = _resolve_norm_eps(norm_eps, self.arch, self.default_norm_eps, 1e-7)
        self.norm_eps = eps
        kw = dict(act=act, norm_eps=eps)

        def local_block(kind, cin, cout, stride, ratio, fewer_norm):
            if kind not in _LOCAL_BLOCKS:
                raise ValueError(f'unknown block type {kind!r}')
            return _LOCAL_BLOCKS[kind](cin, cout, stride, ratio, fewer_norm=fewer_norm, **kw)

        stem = [ConvNormAct(in_channels, widths[0], 3, 2, act=act, norm_eps=eps)]
        stem += [Residual(local_block(blocks_t[0], widths[0], widths[0], 1, expands[0], fewer[0]))
                 for _ in range(depths[0])]
        stages, cin = [OpSequence(stem, with_cp)], widths[0]
        for i in range(1, len(widths)):
            kind = blocks_t[i]
            down_kind = kind if kind in ('mb', 'fmb') else 'mb'
            blocks = [Residual(local_block(down_kind, cin, widths[i], 2, expands[i] * 4, fewer[i]), shortcut=False)]
            cin = widths[i]
            for _ in range(depths[i]):
                if kind.startswith('att'):
                    scales = (3,) if kind == 'att@3' else (5,)
                    blocks.append(EfficientViTBlock(cin, dim=qkv_dim, expand_ratio=expands[i], scales=scales, **kw))
                else:
                    blocks.append(Residual(local_block(kind, cin, cin, 1, expands[i], fewer[i])))
            stages.append(OpSequence(blocks, with_cp))
        self.stages = nn.ModuleList(stages)
        self.width_list = tuple(widths)
        self._setup_outputs(out_indices, frozen_stages, norm_eval)

    def _stage_module_names(self) -> list[str]:
        return [f'stages.{i}' for i in range(len(self.stages))]


#: every named architecture -> backbone class
MIT_BACKBONE_ARCHS: dict[str, type] = {**{k: EfficientViTB for k in EfficientViTB.arch_settings},
                                        **{k: EfficientViTL for k in EfficientViTL.arch_settings}}


def build_efficientvit_backbone(arch: str, **kwargs) -> _MITBackbone:
    """``EfficientViTB`` or ``EfficientViTL`` for an arch name (``'b0'`` ... ``'xl1'``, ``'efficientvit_b1'``)."""
    key = variant_key(arch)
    if key not in MIT_BACKBONE_ARCHS:
        raise ValueError(f'unknown EfficientViT arch {arch!r}; known: {sorted(MIT_BACKBONE_ARCHS)}')
    return MIT_BACKBONE_ARCHS[key](key, **kwargs)


def efficientvit_b0(**kwargs) -> EfficientViTB:
    """EfficientViT-B0 (0.68M backbone parameters)."""
    return EfficientViTB('b0', **kwargs)


def efficientvit_b1(**kwargs) -> EfficientViTB:
    """EfficientViT-B1 (4.64M)."""
    return EfficientViTB('b1', **kwargs)


def efficientvit_b2(**kwargs) -> EfficientViTB:
    """EfficientViT-B2 (15.0M)."""
    return EfficientViTB('b2', **kwargs)


def efficientvit_b3(**kwargs) -> EfficientViTB:
    """EfficientViT-B3 (39.0M)."""
    return EfficientViTB('b3', **kwargs)


def efficientvit_l0(**kwargs) -> EfficientViTL:
    """EfficientViT-L0 (27.8M; exists only as the EfficientViT-SAM-L0 backbone, default norm_eps 1e-6)."""
    return EfficientViTL('l0', **kwargs)


def efficientvit_l1(**kwargs) -> EfficientViTL:
    """EfficientViT-L1 (38.0M; default norm_eps 1e-7)."""
    return EfficientViTL('l1', **kwargs)


def efficientvit_l2(**kwargs) -> EfficientViTL:
    """EfficientViT-L2 (49.1M; default norm_eps 1e-7)."""
    return EfficientViTL('l2', **kwargs)


def efficientvit_l3(**kwargs) -> EfficientViTL:
    """EfficientViT-L3 (194.0M; default norm_eps 1e-7)."""
    return EfficientViTL('l3', **kwargs)


def efficientvit_xl0(**kwargs) -> EfficientViTL:
    """EfficientViT-XL0, the EfficientViT-SAM-XL0 backbone (96.6M, 6 stages, default norm_eps 1e-6)."""
    return EfficientViTL('xl0', **kwargs)


def efficientvit_xl1(**kwargs) -> EfficientViTL:
    """EfficientViT-XL1, the EfficientViT-SAM-XL1 backbone (167.3M, 6 stages, default norm_eps 1e-6)."""
    return EfficientViTL('xl1', **kwargs)
