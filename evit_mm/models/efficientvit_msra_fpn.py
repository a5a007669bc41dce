"""``EfficientViTFPN``: the FPN variant of Cream's EfficientViT detection code, in pure PyTorch.

The EfficientViT-M backbone has strides 16/32/64, so the finer pyramid levels that the detection heads expect
come from **transposed convolutions** (kernel 2, stride 2) applied to the finest lateral after the top-down
pathway; each of them is followed by a 3x3 output conv.  Everything else is mmdet's classic FPN.

Cream's two configurations (backbone M4, ``in_channels=[128, 256, 384]``, ``out_channels=256``,
``start_level=0``, ``num_outs=5``)::

    RetinaNet   num_extra_trans_convs=1, add_extra_convs='on_input'
                -> strides 8 (transposed conv), 16, 32, 64 (laterals), 128 (3x3 stride-2 conv on the C5 input)
    Mask R-CNN  num_extra_trans_convs=2
                -> strides 4, 8 (transposed convs), 16, 32, 64 (laterals)

The constructor takes Cream's arguments (those of mmdet 2.x's FPN plus ``num_extra_trans_convs``), and the
parameter names equal Cream's (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``,
``extra_trans_convs.{i}.conv``, ``extra_fpn_convs.{i}.conv``), so the neck weights of Cream's released
detectors load unchanged.  Differences from Cream:

* ``num_extra_trans_convs=0`` works (plain FPN); Cream raises ``NameError``.
* No mmcv: ``conv_cfg`` must be None (plain ``nn.Conv2d``); ``norm_cfg`` may be None or a dict of type
  ``BN``/``SyncBN``/``GN``/``IN``; ``act_cfg`` may be None or a common activation
  (``ReLU``, ``LeakyReLU``, ``ReLU6``, ``SiLU``/``Swish``, ``GELU``, ``HSwish``, ...).  The layer names follow
  mmcv's ``ConvModule`` (``conv``, then ``bn``/``gn``/``in``, then ``activate``).
* ``end_level`` follows Cream: an **exclusive** index, ``-1`` meaning all levels (mmdet 3.x's FPN code adds 1
  to it, i.e. treats it as inclusive, although its docstring still says exclusive).  With an explicit
  ``end_level`` Cream cannot add transposed levels; here ``num_outs = end_level - start_level +
  num_extra_trans_convs`` is allowed.
* Cream's quirk is kept for checkpoint compatibility: ``extra_trans_convs[i]`` makes the ``i``-th transposed
  level counting from the coarse end (stride 8 first), while ``extra_fpn_convs[i]`` is applied to the
  ``i``-th output counting from the fine end (stride 4 first).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .contract import Fusable
from .layers import ConvNormAct, fuse_conv_norm_acts

__all__ = ['EfficientViTFPN']

_NORMS = {'BN': ('bn', nn.BatchNorm2d), 'BN2d': ('bn', nn.BatchNorm2d), 'SyncBN': ('bn', nn.SyncBatchNorm),
          'GN': ('gn', nn.GroupNorm), 'IN': ('in', nn.InstanceNorm2d)}
_ACTS = {'ReLU': nn.ReLU, 'LeakyReLU': nn.LeakyReLU, 'ReLU6': nn.ReLU6, 'PReLU': nn.PReLU, 'ELU': nn.ELU,
         'SiLU': nn.SiLU, 'Swish': nn.SiLU, 'GELU': nn.GELU, 'Sigmoid': nn.Sigmoid, 'Tanh': nn.Tanh,
         'HSwish': nn.Hardswish, 'HSigmoid': nn.Hardsigmoid}


def _build_norm(cfg: dict, channels: int) -> tuple[str, nn.Module]:
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    if kind not in _NORMS:
        raise ValueError(f'norm_cfg type {kind!r} is not supported; use one of {sorted(_NORMS)} or None')
    requires_grad = cfg.pop('requires_grad', True)
    name, cls = _NORMS[kind]
    if kind == 'GN':
        layer = nn.GroupNorm(cfg.pop('num_groups'), channels, **cfg)
    else:
        layer = cls(channels, **cfg)
    layer.requires_grad_(requires_grad)
    return name, layer


def _build_act(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    kind = cfg.pop('type', None)
    if kind not in _ACTS:
        raise ValueError(f'act_cfg type {kind!r} is not supported; use one of {sorted(_ACTS)} or None')
    cfg.pop('inplace', None)
    return _ACTS[kind](**cfg)


def _conv_module(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 norm_cfg: dict | None = None, act_cfg: dict | None = None, transposed: bool = False) -> ConvNormAct:
    """conv -> optional norm -> optional activation, named like mmcv's ``ConvModule`` (``conv``, then
    ``bn``/``gn``/``in``, then ``activate``). The conv has a bias exactly when there is no norm layer (mmcv's
    ``bias='auto'``)."""
    norm_name, norm = _build_norm(norm_cfg, out_channels) if norm_cfg is not None else ('norm', None)
    act = _build_act(act_cfg) if act_cfg is not None else None
    return ConvNormAct(in_channels, out_channels, kernel_size, stride, bias=norm is None, norm=norm, act=act,
                       padding=padding, transposed=transposed, norm_name=norm_name, act_name='activate')


class EfficientViTFPN(Fusable, nn.Module):
    """FPN with extra finer levels made by transposed convs (Cream's ``EfficientViTFPN``).

    Args:
        in_channels: channels of each backbone level (e.g. ``[128, 256, 384]`` for M4).
        out_channels: channels of every output level.
        num_outs: number of outputs, transposed-conv levels included.
        start_level: first backbone level used (the transposed convs start from it).
        end_level: end backbone level, **exclusive** (Cream/mmdet 2.x semantics); -1 means the last level.
        add_extra_convs: False (extra coarse levels by max pooling) or ``'on_input'`` / ``'on_lateral'`` /
            ``'on_output'`` (3x3 stride-2 convs on that source); True means ``'on_input'`` when
            ``extra_convs_on_inputs`` else ``'on_output'`` (deprecated mmdet 2.x spelling).
        extra_convs_on_inputs: see ``add_extra_convs=True``.
        relu_before_extra_convs: ReLU before the second and later extra convs.
        no_norm_on_lateral: no norm layer in the lateral and transposed convs.
        num_extra_trans_convs: number of finer levels made by 2x2 stride-2 transposed convs on the finest
            lateral (1 for RetinaNet: stride 8; 2 for Mask R-CNN: strides 4 and 8).
        conv_cfg: must be None (plain convs).
        norm_cfg: None or a norm dict (see the module docstring).
        act_cfg: None or an activation dict.
        upsample_cfg: ``F.interpolate`` arguments for the top-down pathway (default nearest, to the size of
            the finer map unless ``scale_factor`` is given).

    ``forward`` takes the backbone features and returns ``num_outs`` maps, finest first.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: bool | str = False, extra_convs_on_inputs: bool = True,
                 relu_before_extra_convs: bool = False, no_norm_on_lateral: bool = False,
                 num_extra_trans_convs: int = 0, conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 act_cfg: dict | None = None, upsample_cfg: dict | None = None):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError(f'in_channels must be a list of ints, got {in_channels!r}')
        if conv_cfg is not None and conv_cfg.get('type') not in ('Conv', 'Conv2d'):
            raise ValueError(f'conv_cfg {conv_cfg!r} is not supported by the pure-torch EfficientViTFPN')
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.num_extra_trans_convs = num_extra_trans_convs
        self.upsample_cfg = dict(mode='nearest') if upsample_cfg is None else dict(upsample_cfg)

        if end_level == -1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError(f'num_outs={num_outs} < the {self.num_ins - start_level} backbone levels used')
        else:
            if not start_level < end_level <= self.num_ins:
                raise ValueError(f'end_level={end_level} must be in ({start_level}, {self.num_ins}]')
            if num_outs != end_level - start_level + num_extra_trans_convs:
                raise ValueError('with an explicit end_level no extra coarse level is allowed: need num_outs == '
                                 'end_level - start_level + num_extra_trans_convs')
            self.backbone_end_level = end_level
        self.start_level = start_level
        self.end_level = end_level

        if isinstance(add_extra_convs, str):
            if add_extra_convs not in ('on_input', 'on_lateral', 'on_output'):
                raise ValueError(f'add_extra_convs={add_extra_convs!r}; expected on_input/on_lateral/on_output')
        elif add_extra_convs is True:
            if extra_convs_on_inputs:
                warnings.warn('"extra_convs_on_inputs" is deprecated, use add_extra_convs="on_input"',
                              DeprecationWarning, stacklevel=2)
            add_extra_convs = 'on_input' if extra_convs_on_inputs else 'on_output'
        elif add_extra_convs is not False:
            raise TypeError(f'add_extra_convs must be a bool or a str, got {add_extra_convs!r}')
        self.add_extra_convs = add_extra_convs

        lateral_norm = None if no_norm_on_lateral else norm_cfg
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(_conv_module(in_channels[i], out_channels, 1, norm_cfg=lateral_norm,
                                                   act_cfg=act_cfg))
            self.fpn_convs.append(_conv_module(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                                               act_cfg=act_cfg))

        extra_levels = num_outs - self.backbone_end_level + start_level - num_extra_trans_convs
        if extra_levels < 0:
            raise ValueError(f'num_outs={num_outs} is smaller than the backbone levels used plus '
                             f'num_extra_trans_convs={num_extra_trans_convs}')
        self.num_extra_levels = extra_levels
        if self.add_extra_convs:
            for i in range(extra_levels):
                src = self.in_channels[self.backbone_end_level - 1] \
                    if i == 0 and self.add_extra_convs == 'on_input' else out_channels
                self.fpn_convs.append(_conv_module(src, out_channels, 3, stride=2, padding=1, norm_cfg=norm_cfg,
                                                   act_cfg=act_cfg))

        self.extra_trans_convs = nn.ModuleList()
        self.extra_fpn_convs = nn.ModuleList()
        for _ in range(num_extra_trans_convs):
            self.extra_trans_convs.append(_conv_module(out_channels, out_channels, 2, stride=2, norm_cfg=lateral_norm,
                                                       act_cfg=act_cfg, transposed=True))
            self.extra_fpn_convs.append(_conv_module(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                                                     act_cfg=act_cfg))
        self._reset_parameters()

    def init_weights(self) -> None:
        """Cream's initialisation: Xavier-uniform convs with zero bias (as mmdet's FPN); the transposed convs
        keep mmcv ``ConvModule``'s Kaiming-normal (fan-out, ReLU) init; norm layers start at weight 1, bias 0.
        (The constructor already initialises this way; calling it again re-draws the weights.)"""
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight, gain=1.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _fuse(self) -> None:
        """Fold the BatchNorms of the conv layers (the transposed levels keep theirs)."""
        fuse_conv_norm_acts(self)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != self.num_ins:
            raise ValueError(f'expected {self.num_ins} feature maps, got {len(inputs)}')
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]

        # top-down pathway
        for i in range(len(laterals) - 1, 0, -1):
            if 'scale_factor' in self.upsample_cfg:
                up = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up

        # finer levels: transposed convs on the finest (merged) lateral, listed finest first
        extra_laterals = []
        prev = laterals[0]
        for trans_conv in self.extra_trans_convs:
            prev = trans_conv(prev)
            extra_laterals.insert(0, prev)

        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]

        # coarser levels
        num_coarse = self.num_outs - len(outs) - len(extra_laterals)
        if num_coarse > 0:
            if not self.add_extra_convs:
                for _ in range(num_coarse):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == 'on_input':
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == 'on_lateral':
                    source = laterals[-1]
                else:
                    source = outs[-1]
                used = len(laterals)
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, used + num_coarse):
                    x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](x))

        extra_outs = [conv(lat) for conv, lat in zip(self.extra_fpn_convs, extra_laterals)]
        return tuple(extra_outs + outs)
