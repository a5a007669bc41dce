"""EfficientViT-M0..M5 (Microsoft Research, CVPR 2023) as a dense-prediction backbone, in pure PyTorch.

Paper: "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention" (Liu et al., 2023).
Reference code: microsoft/Cream ``EfficientViT/`` (``classification/model/efficientvit.py`` and
``downstream/efficientvit.py``); timm ships an independent port (``timm.models.efficientvit_msra``).

Architecture (identical to the reference; the numbers are in :data:`ARCH_SETTINGS`)::

    patch_embed   4 x (3x3 conv stride 2 + BN), ReLU in between        -> stride 16, C0 channels
    stages[0]     depth[0] sandwich blocks                              -> stride 16  (out index 0)
    stages[1]     downsample + depth[1] sandwich blocks                 -> stride 32  (out index 1)
    stages[2]     downsample + depth[2] sandwich blocks                 -> stride 64  (out index 2)

    sandwich block   x -> DW -> FFN -> CGA -> DW -> FFN, every step residual (x + f(x))
    DW               3x3 depthwise conv + BN
    FFN              1x1 conv + BN, ReLU, 1x1 conv + BN, hidden width 2C
    CGA              cascaded group attention in local windows (see :class:`CascadedGroupAttention`)
    downsample       DW, FFN (both residual), PatchMerging (1x1 -> 3x3 dw stride 2 -> SE -> 1x1, no residual),
                     DW, FFN (both residual)

The forward returns the outputs of the selected stages, which are exactly the tensors that Cream's detection
backbone returns (the outputs of its ``blocks1``/``blocks2``/``blocks3``).

Where this implementation deliberately differs from Cream:

* **Any input size.**  Every attention layer splits its map into ``window_size`` x ``window_size`` windows,
  zero-padding the bottom/right edge to a multiple of the window (as Cream's detection code and timm do for
  large maps).  Maps smaller than one window are padded to one window too, so they work (Cream's detection
  code crashes when the last map is <= 7x7 but not exactly 7x7; its classification code asserts the exact
  training size).  This matches timm >= 1.0.31, which pads the same way.
* **Attention-bias cache.**  In inference the (heads, N, N) bias gathered from the learnable table is cached,
  but the cache is keyed on the parameter's version counter, storage, dtype and device, and it is dropped by
  ``.to()``/``.cuda()``/``.double()`` and by ``load_state_dict``.  Cream keeps it as a plain attribute that is
  built in ``eval()``, so ``eval()`` then ``.to(device)`` fails and loading weights after ``eval()`` leaves
  stale biases.  Whenever a gradient is needed the bias is gathered afresh (differentiable).
* **Deploy mode.**  :meth:`EfficientViTM.fuse` folds every BatchNorm into the conv before it and, in
  addition, folds the identity of the residual depthwise convs into their centre tap.
* **No classifier head, no drop path** (Cream never enables drop path).
* **State-dict names** are this package's own (see :func:`convert_msra_state_dict` for the official
  Cream and timm layouts).  The learnable tables keep the name ``attention_biases`` so that optimizer
  rules such as ``custom_keys={'attention_biases': dict(decay_mult=0.)}`` keep working; the index tables
  are non-persistent buffers and never appear in a state dict.

Pretrained weights: :meth:`EfficientViTM.load_pretrained` reads official Cream classification checkpoints
(``{'model': ...}``), Cream detection checkpoints (mmdet 2.x, ``backbone.`` prefix), timm ``efficientvit_m*``
state dicts and this package's own format, and loads them strictly: a mismatch raises
:class:`~evit_mm.models.checkpoint.CheckpointMismatchError` listing the missing, unexpected and
wrongly-shaped keys.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import CheckpointMismatchError, load_state_dict_strict, read_checkpoint
from .fuse import fuse_conv_bn
from .layers import ConvNormAct

__all__ = [
    'ARCH_SETTINGS', 'EfficientViTM', 'CascadedGroupAttention', 'SandwichBlock', 'PatchMerging',
    'efficientvit_m0', 'efficientvit_m1', 'efficientvit_m2', 'efficientvit_m3', 'efficientvit_m4',
    'efficientvit_m5', 'convert_msra_state_dict', 'detect_msra_format', 'infer_msra_arch', 'ConversionReport',
    'MSRA_FORMATS', 'relative_offset_index',
]

#: Hyper-parameters of the six published variants (Cream ``classification/model/build.py``; timm agrees).
#: ``kernels`` are the per-head kernel sizes of the depthwise conv on the queries, shared by all stages
#: (stage ``i`` uses the first ``num_heads[i]`` of them).
#:
#: **M0 uses (5, 5, 5, 5)**, as in Cream's classification code, its released ImageNet checkpoint and timm.
#: Cream's *detection* code declares M0 with (7, 5, 3, 3); its loader uses ``strict=False`` and would
#: silently skip the 18 mismatching query-conv weights of the official checkpoint.  There is no official
#: M0 detection checkpoint; to load one trained with Cream's detection code, build the model with
#: ``kernels=(7, 5, 3, 3)`` (``infer_msra_arch`` reads the kernels off any checkpoint).  M1..M5 are the same in
#: both codebases.
ARCH_SETTINGS: dict[str, dict[str, tuple]] = {
    name: dict(embed_dims=dims, depths=depths, num_heads=heads, kernels=kernels, key_dims=(16, 16, 16))
    for name, dims, depths, heads, kernels in [
        ('m0', (64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
        ('m1', (128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
        ('m2', (128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
        ('m3', (128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
        ('m4', (128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
        ('m5', (192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
    ]
}

_ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'kernels', 'key_dims')
NUM_STAGES = 3
STAGE_STRIDES = (16, 32, 64)


# ------------------------------------------------------------------------------------------------ layers
class ConvBN(ConvNormAct):
    """Bias-free conv followed by BatchNorm (Cream's ``Conv2d_BN``: keys ``conv``, ``bn``); ``fused()`` returns the
    equivalent single conv.

    ``bn_weight_init`` is the initial BN scale: the reference starts the last layer of most residual branches
    (the block's DW convs, every FFN's second conv, the attention output) at 0, so that they start as the
    identity.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0, groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, padding=padding, norm_name='bn')
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        """A plain conv (with bias) that equals this module in eval mode."""
        conv = fuse_conv_bn(self.conv, self.bn)
        conv.requires_grad_(self.conv.weight.requires_grad)
        return conv


class ResidualDWConvBN(ConvBN):
    """``x + BN(depthwise 3x3 conv(x))``.  Fusing also folds the identity into the kernel's centre tap."""

    def __init__(self, channels: int, kernel_size: int = 3, bn_weight_init: float = 1.0):
        super().__init__(channels, channels, kernel_size, 1, kernel_size // 2, groups=channels,
                         bn_weight_init=bn_weight_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)

    @torch.no_grad()
    def fused(self) -> nn.Conv2d:
        conv = super().fused()
        centre = self.conv.kernel_size[0] // 2
        conv.weight[:, 0, centre, centre] += 1.0
        return conv


class ResidualFFN(nn.Module):
    """``x + pw2(ReLU(pw1(x)))`` with 1x1 ConvBN layers; ``pw2`` starts at zero (identity block)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.pw1 = ConvBN(channels, hidden)
        self.pw2 = ConvBN(hidden, channels, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F.relu(self.pw1(x), inplace=True))


class SqueezeExcite(nn.Module):
    """Channel gate ``x * sigmoid(fc2(ReLU(fc1(mean_hw(x)))))`` with biased 1x1 convs (timm's SEModule layout)."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)), inplace=True))
        return x * gate.sigmoid()


def _se_channels(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` (at least ``divisor``), as the reference SE does."""
    return max(divisor, int(channels + divisor / 2) // divisor * divisor)


class PatchMerging(nn.Module):
    """Stride-2 downsampling: 1x1 expand (x4) -> 3x3 depthwise stride 2 -> SE -> 1x1 project.  No residual."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        hidden = 4 * in_channels
        self.conv1 = ConvBN(in_channels, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden)
        self.se = SqueezeExcite(hidden, _se_channels(hidden * 0.25))
        self.conv3 = ConvBN(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x), inplace=True)
        x = F.relu(self.conv2(x), inplace=True)
        return self.conv3(self.se(x))


def _is_compiling() -> bool:
    compiler = getattr(torch, 'compiler', None)
    return bool(compiler is not None and hasattr(compiler, 'is_compiling') and compiler.is_compiling())


def relative_offset_index(window_size: int) -> torch.Tensor:
    """(N, N) index into a (window_size**2,) table, N = window_size**2: token pair (a, b) -> |dy| * ws + |dx|.

    This is the same numbering as the reference, whose offsets are numbered in order of first appearance,
    so a table can be viewed as a (ws, ws) image indexed by [|dy|, |dx|].
    """
    r = torch.arange(window_size)
    ys, xs = torch.meshgrid(r, r, indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window_size + (xs[:, None] - xs[None, :]).abs()


class CascadedGroupAttention(nn.Module):
    """Residual cascaded group attention in local windows: returns ``x + CGA(x)``.

    The channels are split into ``num_heads`` groups.  Head ``i`` sees group ``i`` plus the output of head
    ``i - 1`` (the cascade), projects it with a 1x1 ConvBN to ``q, k, v`` (``key_dim, key_dim, C / heads``
    channels), refines ``q`` with a depthwise ConvBN of kernel ``kernels[i]``, and attends within each window
    with a learnable relative-position bias.  The concatenated head outputs go through ReLU and a 1x1 ConvBN
    (initialised at zero).

    The map is zero-padded at the bottom/right to a multiple of ``window_size`` and split into windows with one
    reshape/permute; everything (including the padded tokens and the window-local depthwise conv) then runs
    exactly as in the reference, which has no attention mask for the padding either.

    Bias table: ``attention_biases`` (heads, window_size**2) indexed by the non-persistent buffer
    ``attention_bias_idxs``.  The gathered (heads, N, N) bias is cached for gradient-free forwards; see the
    module docstring for why the cache cannot go stale.
    """

    def __init__(self, dim: int, num_heads: int, key_dim: int = 16, window_size: int = 7,
                 kernels: Sequence[int] = (5, 5, 5, 5)):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
        if len(kernels) < num_heads:
            raise ValueError(f'need a q-conv kernel per head: {num_heads} heads, kernels={tuple(kernels)}')
        self.num_heads = num_heads
        self.key_dim = key_dim
        # The reference's value width int(attn_ratio * key_dim) with attn_ratio = dim / (key_dim * heads) is
        # dim / heads, which the cascade (head output + next input group) requires anyway.
        self.val_dim = dim // num_heads
        self.window_size = window_size
        self.scale = key_dim ** -0.5
        self._split = (key_dim, key_dim, self.val_dim)

        self.qkvs = nn.ModuleList(ConvBN(dim // num_heads, 2 * key_dim + self.val_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvBN(key_dim, key_dim, k, 1, k // 2, groups=key_dim) for k in kernels[:num_heads])
        self.proj = ConvBN(self.val_dim * num_heads, dim, bn_weight_init=0.0)

        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer('attention_bias_idxs', relative_offset_index(window_size), persistent=False)
        self._bias_cache: torch.Tensor | None = None
        self._bias_cache_key: tuple | None = None
        # Deploy mode (:meth:`fuse_for_deploy`): the gathered bias as a constant buffer and the 1/sqrt(key_dim)
        # query scale folded into the query convs, so that the forward (and an ONNX graph) has neither.
        self.deployed = False
        self.q_scale = self.scale

    # --- bias cache -------------------------------------------------------------------------------------
    def clear_bias_cache(self) -> None:
        """Drop the cached bias (only needed after writing to ``attention_biases.data`` directly)."""
        self._bias_cache = None
        self._bias_cache_key = None

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(), ... create new tensors
        self.clear_bias_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_bias_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def attention_bias(self) -> torch.Tensor:
        """The (heads, N, N) bias for one window, N = window_size**2."""
        if self.deployed:
            return self.deploy_bias
        table = self.attention_biases
        if (torch.is_grad_enabled() and table.requires_grad) or torch.jit.is_tracing() or _is_compiling():
            return table[:, self.attention_bias_idxs]
        key = (table._version, table.data_ptr(), table.dtype, table.device, self.attention_bias_idxs.data_ptr())
        if key != self._bias_cache_key:
            # A normal tensor even when first built under torch.inference_mode().
            with torch.inference_mode(False), torch.no_grad():
                self._bias_cache = table[:, self.attention_bias_idxs]
            self._bias_cache_key = key
        return self._bias_cache

    @torch.no_grad()
    def fuse_for_deploy(self) -> None:
        """Eval-only simplifications, applied by :meth:`EfficientViTM.fuse` after BN folding (the q convs must
        already be plain convs): the bias is gathered once into the non-persistent buffer ``deploy_bias`` and the
        query scale is folded into the depthwise q convs (``softmax(q k^T * s)`` = ``softmax((s q) k^T)``).
        The module is then inference-only: later changes to ``attention_biases`` are not seen."""
        if self.deployed:
            return
        for dw in self.dws:
            if not isinstance(dw, nn.Conv2d) or dw.bias is None:
                raise RuntimeError('fuse_for_deploy() needs the BN-folded q convs (call EfficientViTM.fuse())')
            dw.weight.mul_(self.scale)
            dw.bias.mul_(self.scale)
        bias = self.attention_biases[:, self.attention_bias_idxs].detach().clone()
        self.register_buffer('deploy_bias', bias, persistent=False)
        self.q_scale = 1.0
        self.deployed = True
        self.clear_bias_cache()

    # --- forward ----------------------------------------------------------------------------------------
    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """CGA on a batch of windows (N, C, ws, ws), without the residual."""
        ws = self.window_size  # forward() hands over (padded) ws x ws windows only
        length = ws * ws
        bias = self.attention_bias()
        groups = x.chunk(self.num_heads, dim=1)
        outs = []
        feat = groups[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i:
                feat = feat + groups[i]
            q, k, v = qkv(feat).split(self._split, dim=1)
            q = dw(q)
            # softmax(q^T k * scale + bias) in one fused op; (n, L, L)
            q = q.reshape(-1, self.key_dim, length)  # reshapes with -1 and constants: no shape ops in ONNX
            attn = torch.baddbmm(bias[i], q.transpose(1, 2), k.reshape(-1, self.key_dim, length), alpha=self.q_scale)
            attn = attn.softmax(dim=-1)
            feat = torch.bmm(v.reshape(-1, self.val_dim, length), attn.transpose(1, 2)).view(-1, self.val_dim, ws, ws)
            outs.append(feat)
        return self.proj(F.relu(torch.cat(outs, dim=1), inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Python ints for the window arithmetic (int(): constants when traced for ONNX, where the image size is
        # fixed anyway); the batch is left to reshape's -1 so that a dynamic batch needs no shape ops.
        c, h, w = (int(s) for s in x.shape[1:])
        ws = self.window_size
        pad_b, pad_r = -h % ws, -w % ws
        padded = F.pad(x, (0, pad_r, 0, pad_b)) if (pad_b or pad_r) else x
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        if nh == 1 and nw == 1:  # a single window: no partition needed
            y = self._attend(padded)
            return x + (y[:, :, :h, :w] if (pad_b or pad_r) else y)
        # (B, C, nh*ws, nw*ws) -> (B*nh*nw, C, ws, ws): a single copy
        windows = padded.reshape(-1, c, nh, ws, nw, ws).permute(0, 2, 4, 1, 3, 5).reshape(-1, c, ws, ws)
        y = self._attend(windows).view(-1, nh, nw, c, ws, ws).permute(0, 3, 1, 4, 2, 5)
        if pad_b or pad_r:
            return x + y.reshape(-1, c, nh * ws, nw * ws)[:, :, :h, :w]
        # no padding: add in the 6-d window layout, the sum comes out contiguous in x's (B, C, H, W) order
        return (x.reshape(-1, c, nh, ws, nw, ws) + y).reshape(-1, c, h, w)

    def extra_repr(self) -> str:
        return f'heads={self.num_heads}, key_dim={self.key_dim}, val_dim={self.val_dim}, window={self.window_size}'


class SandwichBlock(nn.Module):
    """EfficientViT block: DW -> FFN -> CGA -> DW -> FFN, each of them residual."""

    def __init__(self, dim: int, num_heads: int, key_dim: int, window_size: int, kernels: Sequence[int]):
        super().__init__()
        self.dw0 = ResidualDWConvBN(dim, bn_weight_init=0.0)
        self.ffn0 = ResidualFFN(dim, 2 * dim)
        self.attn = CascadedGroupAttention(dim, num_heads, key_dim, window_size, kernels)
        self.dw1 = ResidualDWConvBN(dim, bn_weight_init=0.0)
        self.ffn1 = ResidualFFN(dim, 2 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.attn(self.ffn0(self.dw0(x)))))


class Downsample(nn.Module):
    """Between stages: residual DW + FFN at the input width, PatchMerging, residual DW + FFN at the output width.

    (The pre/post DW convs start from BN scale 1, unlike the ones inside the blocks, as in the reference.)
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.dw_pre = ResidualDWConvBN(in_channels)
        self.ffn_pre = ResidualFFN(in_channels, 2 * in_channels)
        self.merge = PatchMerging(in_channels, out_channels)
        self.dw_post = ResidualDWConvBN(out_channels)
        self.ffn_post = ResidualFFN(out_channels, 2 * out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_post(self.dw_post(self.merge(self.ffn_pre(self.dw_pre(x)))))


class Stage(nn.Module):
    """``downsample`` (identity for the first stage) followed by ``blocks``."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, num_heads: int, key_dim: int,
                 window_size: int, kernels: Sequence[int], downsample: bool):
        super().__init__()
        self.downsample = Downsample(in_channels, out_channels) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(SandwichBlock(out_channels, num_heads, key_dim, window_size, kernels)
                                      for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _per_stage(value, name: str) -> tuple[int, ...]:
    values = (value,) * NUM_STAGES if isinstance(value, int) else tuple(value)
    if len(values) != NUM_STAGES or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f'{name} must be a positive int or {NUM_STAGES} positive ints, got {value!r}')
    return values


def _resolve_arch(arch: str | Mapping[str, Any]) -> dict[str, tuple]:
    if isinstance(arch, str):
        name = arch.lower().replace('efficientvit_', '').replace('efficientvit-', '')
        if name not in ARCH_SETTINGS:
            raise ValueError(f'unknown EfficientViT-M arch {arch!r}; choose one of {sorted(ARCH_SETTINGS)} '
                             'or pass a dict of settings')
        return dict(ARCH_SETTINGS[name])
    if not isinstance(arch, Mapping):
        raise TypeError(f'arch must be a name or a dict, got {type(arch).__name__}')
    unknown = set(arch) - set(_ARCH_KEYS)
    missing = {'embed_dims', 'depths', 'num_heads', 'kernels'} - set(arch)
    if unknown or missing:
        raise ValueError(f'arch dict: unknown keys {sorted(unknown)}, missing keys {sorted(missing)} '
                         f'(allowed: {_ARCH_KEYS}; key_dims defaults to 16)')
    settings = {k: arch[k] for k in _ARCH_KEYS if k in arch}
    settings.setdefault('key_dims', 16)
    return settings


# ------------------------------------------------------------------------------------------------ backbone
class EfficientViTM(nn.Module):
    """EfficientViT-M0..M5 backbone returning multi-scale feature maps (strides 16, 32, 64).

    Args:
        arch: ``'m0'`` .. ``'m5'`` (see :data:`ARCH_SETTINGS`) or a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (3 ints each), ``kernels`` (one q-conv kernel size per head of the widest stage) and
            optionally ``key_dims`` (int or 3 ints, default 16).
        out_indices: stages whose outputs ``forward`` returns, in stage order: 0 (stride 16, ``embed_dims[0]``
            channels), 1 (stride 32), 2 (stride 64).  Negative indices count from the end.
        frozen_stages: ``-1`` freezes nothing; ``0`` freezes the patch embedding (Cream's detection code does
            exactly this for any ``frozen_stages >= 0``); ``k`` in 1..3 freezes the patch embedding and
            ``stages[0..k-1]`` (i.e. the modules producing out indices ``0..k-1``, downsampling included) --
            the mmdet ResNet convention.  Frozen modules get ``requires_grad=False`` and stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode (frozen running statistics) while training.
            Cream's detection backbone hard-wires this to True.
        window_size: attention window, an int or one per stage.  7 everywhere is the reference's detection
            setting; the ImageNet models at 224x224 effectively use (7, 7, 4).
        kernels: override the per-head q-conv kernel sizes of ``arch`` (e.g. ``(7, 5, 3, 3)`` for an M0 trained
            with Cream's detection code; see :data:`ARCH_SETTINGS`).
        in_channels: image channels.
    """

    def __init__(self, arch: str | Mapping[str, Any] = 'm4', out_indices: Sequence[int] = (0, 1, 2),
                 frozen_stages: int = -1, norm_eval: bool = False, window_size: int | Sequence[int] = 7,
                 kernels: Sequence[int] | None = None, in_channels: int = 3):
        super().__init__()
        settings = _resolve_arch(arch)
        if kernels is not None:
            settings['kernels'] = tuple(kernels)
        embed_dims = _per_stage(settings['embed_dims'], 'embed_dims')
        depths = _per_stage(settings['depths'], 'depths')
        num_heads = _per_stage(settings['num_heads'], 'num_heads')
        key_dims = _per_stage(settings['key_dims'], 'key_dims')
        kernels = tuple(settings['kernels'])
        if len(kernels) < max(num_heads) or any(k % 2 == 0 or k < 1 for k in kernels):
            raise ValueError(f'kernels must hold an odd size per head ({max(num_heads)} heads), got {kernels}')
        self.window_sizes = _per_stage(window_size, 'window_size')
        self.arch_settings = dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads, key_dims=key_dims,
                                  kernels=kernels)
        self.arch_name = arch if isinstance(arch, str) else None
        self.embed_dims = embed_dims

        out_indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
        norm = []
        for i in out_indices:
            if not -NUM_STAGES <= i < NUM_STAGES:
                raise ValueError(f'out_indices must be in [-{NUM_STAGES}, {NUM_STAGES}), got {out_indices}')
            norm.append(i % NUM_STAGES)
        if not norm or len(set(norm)) != len(norm):
            raise ValueError(f'out_indices must be non-empty and unique, got {out_indices}')
        self.out_indices = tuple(sorted(norm))
        self.out_channels = tuple(embed_dims[i] for i in self.out_indices)
        self.out_strides = tuple(STAGE_STRIDES[i] for i in self.out_indices)
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in [-1, {NUM_STAGES}], got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.deployed = False

        c0 = embed_dims[0]
        self.patch_embed = nn.Sequential(
            ConvBN(in_channels, c0 // 8, 3, 2, 1), nn.ReLU(inplace=True),
            ConvBN(c0 // 8, c0 // 4, 3, 2, 1), nn.ReLU(inplace=True),
            ConvBN(c0 // 4, c0 // 2, 3, 2, 1), nn.ReLU(inplace=True),
            ConvBN(c0 // 2, c0, 3, 2, 1))
        self.stages = nn.ModuleList(
            Stage(embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], num_heads[i], key_dims[i],
                  self.window_sizes[i], kernels, downsample=i > 0)
            for i in range(NUM_STAGES))
        self._freeze_stages()

    # --- freezing / train mode ----------------------------------------------------------------------------
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed, *self.stages[:self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'EfficientViTM':
        """Set the train mode, keeping frozen stages (and, with ``norm_eval``, all BatchNorms) in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, _BatchNorm):
                        module.eval()
        return self

    # --- forward ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.patch_embed(x)
        outs = []
        last = self.out_indices[-1]
        for i, stage in enumerate(self.stages[:last + 1]):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    # --- helpers --------------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Names of the relative-position bias tables (conventionally trained without weight decay)."""
        return {name for name, _ in self.named_parameters() if 'attention_biases' in name}

    @torch.no_grad()
    def fuse(self) -> 'EfficientViTM':
        """Deploy mode, in place: fold every BatchNorm into the conv before it (and the identity of the
        residual depthwise convs into their kernels), using the current running statistics.

        The attention layers also get their eval-only form (:meth:`CascadedGroupAttention.fuse_for_deploy`: a
        constant bias, the query scale folded into the q convs).  Outputs equal the eval-mode outputs of the
        unfused model up to rounding.  The fused model is meant for inference: it has no BatchNorm left, its state
        dict uses the fused layout, and it cannot load checkpoints any more.  Returns ``self``.
        """
        if self.deployed:
            return self

        def _fuse(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, ConvBN):
                    setattr(module, name, child.fused())
                else:
                    _fuse(child)

        _fuse(self)
        for module in self.modules():
            if isinstance(module, CascadedGroupAttention):
                module.fuse_for_deploy()
        self.deployed = True
        return self

    switch_to_deploy = fuse

    def load_pretrained(self, src, fmt: str = 'auto', source: str | None = None) -> 'ConversionReport':
        """Load a checkpoint (path or dict) in any supported layout, strictly.

        ``src`` is read with :func:`~evit_mm.models.checkpoint.read_checkpoint`, converted with
        :func:`convert_msra_state_dict` (bias tables resized to this model's windows) and loaded with
        :func:`~evit_mm.models.checkpoint.load_state_dict_strict`: any missing, unexpected or wrongly shaped
        key raises :class:`~evit_mm.models.checkpoint.CheckpointMismatchError` and leaves the weights as they
        were.  Returns the :class:`ConversionReport` (detected format, dropped and resized keys).  ``source``
        names the checkpoint in error messages (default: the path).
        """
        if self.deployed:
            raise RuntimeError('load_pretrained() must be called before fuse(): the fused model has no BatchNorm')
        source = source or (os.fspath(src) if isinstance(src, (str, os.PathLike)) else type(src).__name__)
        state_dict = read_checkpoint(src)
        try:
            converted, report = convert_msra_state_dict(state_dict, fmt=fmt, window_size=self.window_sizes,
                                                        return_report=True)
        except ValueError as err:
            raise ValueError(f'{source}: {err}') from None
        try:
            load_state_dict_strict(self, converted, source=f'{source} ({report.format})')
        except CheckpointMismatchError as err:
            hint = _kernel_hint(err, converted, self.arch_settings['kernels'])
            if not hint:
                raise
            raise CheckpointMismatchError(f'{err}\n{hint}', err.missing, err.unexpected,
                                          err.shape_mismatch) from None
        return report


def _kernel_hint(err: CheckpointMismatchError, state_dict, model_kernels) -> str:
    if err.missing or err.unexpected or not err.shape_mismatch or \
            not all('.attn.dws.' in k for k, *_ in err.shape_mismatch):
        return ''  # only when the q-conv kernels are the sole difference
    try:
        kernels = infer_msra_arch(state_dict)['kernels']
    except (KeyError, ValueError):
        return ''
    return (f'hint: the checkpoint\'s q-conv kernels are {kernels}, the model\'s {tuple(model_kernels)}; '
            f'build the model with kernels={kernels} (Cream\'s detection code declares M0 with (7, 5, 3, 3)).')


def efficientvit_m0(**kwargs) -> EfficientViTM:
    """EfficientViT-M0 (kernels (5, 5, 5, 5), as the official checkpoints)."""
    return EfficientViTM('m0', **kwargs)


def efficientvit_m1(**kwargs) -> EfficientViTM:
    """EfficientViT-M1."""
    return EfficientViTM('m1', **kwargs)


def efficientvit_m2(**kwargs) -> EfficientViTM:
    """EfficientViT-M2."""
    return EfficientViTM('m2', **kwargs)


def efficientvit_m3(**kwargs) -> EfficientViTM:
    """EfficientViT-M3."""
    return EfficientViTM('m3', **kwargs)


def efficientvit_m4(**kwargs) -> EfficientViTM:
    """EfficientViT-M4 (the variant of the paper's COCO results)."""
    return EfficientViTM('m4', **kwargs)


def efficientvit_m5(**kwargs) -> EfficientViTM:
    """EfficientViT-M5."""
    return EfficientViTM('m5', **kwargs)


# ------------------------------------------------------------------------------------------------ checkpoints
#: Layouts understood by :func:`convert_msra_state_dict`.
MSRA_FORMATS = ('cream-cls', 'cream-det', 'timm', 'evit_mm')


@dataclass
class ConversionReport:
    """What :func:`convert_msra_state_dict` did."""
    format: str
    from_detector: bool = False
    dropped: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    other: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def summary(self) -> str:
        lines = [f'format: {self.format}' + (' (backbone of a detector checkpoint)' if self.from_detector else '')]
        if self.dropped:
            lines.append(f'dropped {len(self.dropped)} keys (classifier head / index buffers)')
        for key, old, new in self.resized:
            lines.append(f'resized {key}: {old} -> {new} (bicubic, as Cream\'s detection code)')
        if self.added:
            lines.append(f'added {len(self.added)} missing BN num_batches_tracked counters (as 0)')
        if self.unrecognised:
            lines.append(f'{len(self.unrecognised)} keys were not recognised and were kept as they are')
        return '\n'.join(lines)


def _strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def detect_msra_format(state_dict: Mapping[str, Any]) -> str:
    """Which layout a (backbone) state dict is in: one of :data:`MSRA_FORMATS`.  Raises ``ValueError``."""
    keys = list(state_dict)
    if any(k.startswith('backbone.') for k in keys):
        state_dict = {k[len('backbone.'):]: None for k in keys if k.startswith('backbone.')}
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
    silently ignoring them.  With ``return_report=True`` returns ``(state_dict, ConversionReport)``.
    """
    if fmt not in ('auto', *MSRA_FORMATS):
        raise ValueError(f'fmt must be "auto" or one of {MSRA_FORMATS}, got {fmt!r}')
    windows = _per_stage(window_size, 'window_size')
    sd = _strip_prefix(state_dict, 'module.')
    from_detector = any(k.startswith('backbone.') for k in sd)
    other = {}
    if from_detector:
        other = {k: v for k, v in sd.items() if not k.startswith('backbone.')}
        sd = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    detected = detect_msra_format(sd)
    family = {'cream-cls': 'cream', 'cream-det': 'cream'}
    if fmt != 'auto' and family.get(fmt, fmt) != family.get(detected, detected):
        raise ValueError(f'the state dict was declared {fmt!r} but its keys are in the {detected!r} layout')
    report = ConversionReport(format=fmt if fmt != 'auto' else detected, from_detector=from_detector, other=other)

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
        if m and int(m.group(1)) < NUM_STAGES and value.dim() == 2:
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
    entry of :data:`ARCH_SETTINGS` with the same widths, depths and heads, or None.  ``kernels`` (the q-conv
    kernel sizes of the widest stage's heads) is compared separately: an M0 trained with Cream's detection code
    has ``name='m0'`` and ``kernels=(7, 5, 3, 3)``.
    """
    sd = convert_msra_state_dict(state_dict, window_size=_table_windows(state_dict))  # tables as stored
    embed_dims, depths, num_heads, key_dims, windows = [], [], [], [], []
    kernels: tuple[int, ...] = ()
    for s in range(NUM_STAGES):
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
    for name, ref in ARCH_SETTINGS.items():
        if all(tuple(ref[k]) == settings[k] for k in ('embed_dims', 'depths', 'num_heads', 'key_dims')):
            settings['name'] = name
            break
    return settings


def _table_windows(state_dict: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    """Per-stage window of the bias tables as stored (so that inference does not resize them)."""
    windows = [7] * NUM_STAGES
    for key, value in state_dict.items():
        key = key[len('module.'):] if key.startswith('module.') else key
        key = key[len('backbone.'):] if key.startswith('backbone.') else key
        if not key.endswith('attention_biases'):
            continue
        m = re.match(r'^blocks(\d+)\.', key) or re.match(r'^stages\.(\d+)\.', key)
        if m:
            stage = int(m.group(1)) - 1 if key.startswith('blocks') else int(m.group(1))
            if 0 <= stage < NUM_STAGES:
                windows[stage] = math.isqrt(value.shape[1])
    return tuple(windows)
