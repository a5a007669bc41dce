"""EfficientViT-M0..M5 (Microsoft Research, CVPR 2023) as a dense-prediction backbone, in pure PyTorch.

Paper: "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention" (Liu et al., 2023).
Reference code: microsoft/Cream ``EfficientViT/`` (``classification/model/efficientvit.py`` and
``downstream/efficientvit.py``); timm ships an independent port (``timm.models.efficientvit_msra``).

Architecture (identical to the reference; the numbers are in :data:`ARCH_SETTINGS`)::

    patch_embed   4 x (3x3 conv stride 2 + BN), ReLU in between        -> stride 16, C0 channels
    stages[0]     depth[0] sandwich blocks                              -> stride 16  (stage 1)
    stages[1]     downsample + depth[1] sandwich blocks                 -> stride 32  (stage 2)
    stages[2]     downsample + depth[2] sandwich blocks                 -> stride 64  (stage 3)

    sandwich block   x -> DW -> FFN -> CGA -> DW -> FFN, every step residual (x + f(x))
    DW               3x3 depthwise conv + BN
    FFN              1x1 conv + BN, ReLU, 1x1 conv + BN, hidden width 2C
    CGA              cascaded group attention in local windows (see :class:`CascadedGroupAttention`)
    downsample       DW, FFN (both residual), PatchMerging (1x1 -> 3x3 dw stride 2 -> SE -> 1x1, no residual),
                     DW, FFN (both residual)

Stages are numbered as for every evit_mm backbone (:mod:`evit_mm.models.contract`): stage 0 is the stem (here the
patch embedding), so the default ``out_indices=(1, 2, 3)`` returns exactly the tensors that Cream's detection
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
  addition, folds the identity of the residual depthwise convs into their centre tap.  :func:`evit_mm.deploy`
  then swaps every attention layer for its inference form, :class:`DeployedCascadedGroupAttention`.
* **No classifier head, no drop path** (Cream never enables drop path).
* **State-dict names** are this package's own (:mod:`evit_mm.models.convert_msra` converts the official Cream
  and timm layouts).  The learnable tables keep the name ``attention_biases`` so that optimizer
  rules such as ``custom_keys={'attention_biases': dict(decay_mult=0.)}`` keep working; the index tables
  are non-persistent buffers and never appear in a state dict.

Pretrained weights: :meth:`EfficientViTM.load_pretrained` reads official Cream classification checkpoints
(``{'model': ...}``), Cream detection checkpoints (mmdet 2.x, ``backbone.`` prefix), timm ``efficientvit_m*``
state dicts and this package's own format, and loads them strictly: a mismatch raises
:class:`~evit_mm.models.checkpoint.CheckpointMismatchError` listing the missing, unexpected and
wrongly-shaped keys.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import convert_msra
from .checkpoint import CheckpointMismatchError
from .contract import EfficientViTBackbone
from .fuse import fuse_conv_bn
from .layers import ConvNormAct
from .registry import MSRA_ARCHS, MSRA_NUM_STAGES, msra_per_stage, variant_key

__all__ = [
    'ARCH_SETTINGS', 'EfficientViTM', 'CascadedGroupAttention', 'DeployedCascadedGroupAttention', 'SandwichBlock',
    'PatchMerging', 'efficientvit_m0', 'efficientvit_m1', 'efficientvit_m2', 'efficientvit_m3', 'efficientvit_m4',
    'efficientvit_m5', 'relative_offset_index',
]

#: Hyper-parameters of the published variants: the registry's table (:data:`evit_mm.models.registry.MSRA_ARCHS`,
#: which explains the M0 kernels), where a variant is declared.
ARCH_SETTINGS: dict[str, dict[str, tuple]] = MSRA_ARCHS

_ARCH_KEYS = ('embed_dims', 'depths', 'num_heads', 'kernels', 'key_dims')
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

    #: the factor of ``q^T k`` (the inference form has it folded into the query convs)
    @property
    def query_scale(self) -> float:
        return self.scale

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
            attn = torch.baddbmm(bias[i], q.transpose(1, 2), k.reshape(-1, self.key_dim, length),
                                 alpha=self.query_scale)
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


class DeployedCascadedGroupAttention(CascadedGroupAttention):
    """The inference form of a BN-folded :class:`CascadedGroupAttention`, swapped in by :func:`evit_mm.deploy`.

    The (heads, N, N) bias is gathered once into the non-persistent buffer ``bias`` and the ``1/sqrt(key_dim)``
    query scale is folded into the depthwise q convs (``softmax(q^T k * s)`` = ``softmax((s q)^T k)``), so a call
    (and an ONNX graph) has neither the gather nor the scaling. Same outputs to float rounding; the state dict
    keeps the trained layout. Inference only: later changes to ``attention_biases`` are not seen.
    """

    query_scale = 1.0

    def __init__(self, trained: CascadedGroupAttention):
        nn.Module.__init__(self)  # not CascadedGroupAttention's: the layers are the trained ones
        if not all(isinstance(dw, nn.Conv2d) and dw.bias is not None for dw in trained.dws):
            raise ValueError('the inference form needs the BN-folded q convs: fuse() the model first')
        for name in ('num_heads', 'key_dim', 'val_dim', 'window_size', 'scale', '_split'):
            setattr(self, name, getattr(trained, name))
        self.qkvs, self.proj = trained.qkvs, trained.proj
        self.dws = copy.deepcopy(trained.dws)  # scaled below; the trained module stays as it was
        self.attention_biases = trained.attention_biases
        self.register_buffer('attention_bias_idxs', trained.attention_bias_idxs, persistent=False)
        with torch.no_grad():
            for dw in self.dws:
                dw.weight.mul_(self.scale)
                dw.bias.mul_(self.scale)
            self.register_buffer('bias', self.attention_biases[:, self.attention_bias_idxs].detach().clone(),
                                 persistent=False)
        self.clear_bias_cache()

    def attention_bias(self) -> torch.Tensor:
        return self.bias


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


def _resolve_arch(arch: str | Mapping[str, Any]) -> dict[str, tuple]:
    if isinstance(arch, str):
        name = variant_key(arch)
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
class EfficientViTM(EfficientViTBackbone):
    """EfficientViT-M0..M5 backbone returning multi-scale feature maps (strides 16, 32, 64).

    It keeps the contract of every evit_mm backbone (:mod:`evit_mm.models.contract`): ``out_indices``,
    ``feature_info``, ``frozen_stages``, ``norm_eval``, ``fuse()`` / ``is_fused`` and ``load_pretrained``.

    Args:
        arch: ``'m0'`` .. ``'m5'`` (see :data:`ARCH_SETTINGS`) or a dict with ``embed_dims``, ``depths``,
            ``num_heads`` (3 ints each), ``kernels`` (one q-conv kernel size per head of the widest stage) and
            optionally ``key_dims`` (int or 3 ints, default 16).
        out_indices: the stages ``forward`` returns: 0 is the stem (the patch embedding, stride 16,
            ``embed_dims[0]`` channels), 1 (stride 16, ``embed_dims[0]``), 2 (stride 32), 3 (stride 64).  Negative
            indices count from the end.  The default ``(1, 2, 3)`` is what Cream's detection backbone returns.
        frozen_stages: ``-1`` freezes nothing; ``0`` freezes the patch embedding (Cream's detection code does
            exactly this for any ``frozen_stages >= 0``); ``k`` in 1..3 freezes the patch embedding and stages
            ``1..k`` (downsampling included): the mmdet ResNet convention.
        norm_eval: keep every BatchNorm in eval mode (frozen running statistics) while training.
            Cream's detection backbone hard-wires this to True.
        window_size: attention window, an int or one per stage.  7 everywhere is the reference's detection
            setting; the ImageNet models at 224x224 effectively use (7, 7, 4).
        kernels: override the per-head q-conv kernel sizes of ``arch`` (e.g. ``(7, 5, 3, 3)`` for an M0 trained
            with Cream's detection code; see :data:`ARCH_SETTINGS`).
        in_channels: image channels.
    """

    def __init__(self, arch: str | Mapping[str, Any] = 'm4', out_indices: Sequence[int] = (1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, window_size: int | Sequence[int] = 7,
                 kernels: Sequence[int] | None = None, in_channels: int = 3):
        super().__init__()
        settings = _resolve_arch(arch)
        if kernels is not None:
            settings['kernels'] = tuple(kernels)
        embed_dims = msra_per_stage(settings['embed_dims'], 'embed_dims')
        depths = msra_per_stage(settings['depths'], 'depths')
        num_heads = msra_per_stage(settings['num_heads'], 'num_heads')
        key_dims = msra_per_stage(settings['key_dims'], 'key_dims')
        kernels = tuple(settings['kernels'])
        if len(kernels) < max(num_heads) or any(k % 2 == 0 or k < 1 for k in kernels):
            raise ValueError(f'kernels must hold an odd size per head ({max(num_heads)} heads), got {kernels}')
        self.window_sizes = msra_per_stage(window_size, 'window_size')
        self.arch_settings = dict(embed_dims=embed_dims, depths=depths, num_heads=num_heads, key_dims=key_dims,
                                  kernels=kernels)
        self.arch_name = arch if isinstance(arch, str) else None
        self.embed_dims = embed_dims

        c0 = embed_dims[0]
        self.patch_embed = nn.Sequential(
            ConvBN(in_channels, c0 // 8, 3, 2, 1), nn.ReLU(inplace=True),
            ConvBN(c0 // 8, c0 // 4, 3, 2, 1), nn.ReLU(inplace=True),
            ConvBN(c0 // 4, c0 // 2, 3, 2, 1), nn.ReLU(inplace=True),
            ConvBN(c0 // 2, c0, 3, 2, 1))
        self.stages = nn.ModuleList(
            Stage(embed_dims[max(i - 1, 0)], embed_dims[i], depths[i], num_heads[i], key_dims[i],
                  self.window_sizes[i], kernels, downsample=i > 0)
            for i in range(MSRA_NUM_STAGES))
        self._setup_stages(channels=(embed_dims[0], *embed_dims), strides=(STAGE_STRIDES[0], *STAGE_STRIDES),
                           out_indices=out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval)

    def _stage_module_names(self) -> list[str]:
        return ['patch_embed'] + [f'stages.{i}' for i in range(MSRA_NUM_STAGES)]

    def no_weight_decay(self) -> set[str]:
        """Names of the relative-position bias tables (conventionally trained without weight decay)."""
        return {name for name, _ in self.named_parameters() if 'attention_biases' in name}

    def _fuse(self) -> None:
        """Every ConvBN becomes the plain conv it equals in eval mode (the residual depthwise convs also take in
        their identity), using the current running statistics."""
        def swap(module: nn.Module) -> None:
            for name, child in module.named_children():
                if isinstance(child, ConvBN):
                    setattr(module, name, child.fused())
                else:
                    swap(child)
        swap(self)

    def _convert_checkpoint(self, state_dict, fmt):
        """Cream (classification or detection), timm or evit_mm layouts (:func:`convert_msra_state_dict`); the
        bias tables are resized to this model's windows."""
        return convert_msra.convert_msra_state_dict(state_dict, fmt=fmt, window_size=self.window_sizes,
                                                    return_report=True)

    def _mismatch_hint(self, err: CheckpointMismatchError, state_dict) -> str:
        """When the q-conv kernels are the only difference, the kernels to build the model with."""
        if err.missing or err.unexpected or not err.shape_mismatch or \
                not all('.attn.dws.' in k for k, *_ in err.shape_mismatch):
            return ''
        try:
            kernels = convert_msra.infer_msra_arch(state_dict)['kernels']
        except (KeyError, ValueError):
            return ''
        return (f'the checkpoint\'s q-conv kernels are {kernels}, the model\'s {self.arch_settings["kernels"]}; '
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
