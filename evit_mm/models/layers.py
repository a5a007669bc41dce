"""Building blocks shared by every evit_mm model (pure PyTorch).

* :class:`ConvNormAct` -- the one ``[Dropout2d] -> conv -> [norm] -> [activation]`` layer, with an in-place
  ``fuse()`` that folds a BatchNorm into the conv. EfficientViT-B/L/XL, the seg head and the SAM neck use it
  directly; EfficientViT-M's ``ConvBN`` is a subclass (no activation, BN init scale, ``fused()``), and the FPN
  builds its mmcv-style ``ConvModule`` layers from it.
* :class:`DAGHead` -- the reference's ``DAGBlock`` as a head: ``inputs -> input_ops[i] -> merge (add/cat) ->
  middle -> output_ops``. :class:`~evit_mm.models.seg_head.EfficientViTSegHead` and
  :class:`~evit_mm.models.sam.SamNeck` are DAG heads that differ only in how they build the ops.
* :class:`Resize` -- bicubic resizing by a factor or to a size, computed like the reference's ``UpSampleLayer``.
* :class:`OpSequence`, :func:`build_act` -- the reference's ``OpSequential`` key layout, activations by name.

State-dict keys
---------------
The official checkpoints are loaded strictly by key name, and the three families name the norm layer
differently: ``norm`` (mit-han-lab: ``...conv.weight``, ``...norm.weight``), ``bn`` (this package's EfficientViT-M
and Cream's ``Conv2d_BN``) and ``bn``/``gn``/``in`` with the activation under ``activate`` (mmcv's
``ConvModule``, the names of Cream's FPN weights). :class:`ConvNormAct` therefore takes the two attribute names
(``norm_name``, ``act_name``) as constructor arguments: the module is registered under that name, so
``state_dict()`` and ``load_state_dict()`` see exactly the family's keys with no renaming hooks. The conv is
always ``conv``. Read the layers through those names (``layer.norm`` for the default, ``layer.bn`` for
``ConvBN``) or generically through :attr:`ConvNormAct.norm_layer` / :attr:`ConvNormAct.act_layer`.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint as _grad_checkpoint

from .contract import Fusable
from .fuse import fuse_conv_bn

__all__ = ['ActType', 'build_act', 'ConvNormAct', 'fuse_conv_norm_acts', 'OpSequence', 'Resize', 'DAGHead',
           'stage_number']

#: Activations by the names the reference configs use. "gelu" is the tanh approximation, as in the reference.
_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    'relu': nn.ReLU,
    'relu6': nn.ReLU6,
    'hswish': nn.Hardswish,
    'silu': nn.SiLU,
    'gelu': partial(nn.GELU, approximate='tanh'),
}
_HAS_INPLACE = {'relu', 'relu6', 'hswish', 'silu'}

ActType = Union[str, Callable[[], nn.Module], nn.Module, None]


def build_act(act: ActType, inplace: bool = False) -> Optional[nn.Module]:
    """An activation module from a name (``'hswish'``, ``'gelu'`` = tanh-GELU, ...), a module class/factory,
    a module (returned as is) or ``None`` (no activation). ``inplace`` is honoured by the named activations
    that support it."""
    if act is None or isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        if act not in _ACTIVATIONS:
            raise ValueError(f'unknown activation {act!r}; known: {sorted(_ACTIVATIONS)}')
        return _ACTIVATIONS[act](inplace=True) if inplace and act in _HAS_INPLACE else _ACTIVATIONS[act]()
    return act()


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no per-device query
        return torch.is_autocast_enabled() if device_type == 'cuda' else torch.is_autocast_cpu_enabled()
    except RuntimeError:  # a device type autocast does not know (e.g. 'meta', used to count FLOPs)
        return False


class ConvNormAct(Fusable, nn.Module):
    """``[Dropout2d] -> Conv2d -> [norm] -> [activation]``.

    Args:
        in_channels, out_channels, kernel_size, stride, groups, bias: of the conv.
        norm: ``True`` (``BatchNorm2d`` with eps ``norm_eps``), ``False``/``None`` (no norm) or a norm module.
        act: an activation name, class/factory or module (see :func:`build_act`), or ``None``. Named
            activations run in place (their input is this layer's own fresh conv/BN output, which neither
            backward needs), saving an allocation per layer.
        dropout: ``Dropout2d`` probability before the conv (0: none).
        padding: ``None`` is "same" padding (``kernel_size // 2``, odd kernels only).
        transposed: an ``nn.ConvTranspose2d`` instead of the conv (the FPN's upsampling levels).
        norm_name, act_name: the attribute (state-dict) names of the norm and the activation; see the module
            docstring.

    ``fuse()`` folds a BatchNorm into the conv (eval-mode statistics) and removes it; afterwards the layer is a
    plain conv+bias(+act). Other norms, and a BN after a transposed conv, stay as they are.
    :func:`evit_mm.deploy` then swaps a fused layer for :class:`~evit_mm.models.fuse.OneDNNConvAct` (the conv and
    its activation as one oneDNN call on the CPU).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, bias: bool = False, norm: Union[bool, nn.Module, None] = True,
                 act: ActType = None, norm_eps: float = 1e-5, dropout: float = 0.0, *,
                 padding: Optional[int] = None, transposed: bool = False, norm_name: str = 'norm',
                 act_name: str = 'act'):
        super().__init__()
        if padding is None:
            if kernel_size % 2 != 1:
                raise ValueError(f'kernel_size must be odd for "same" padding, got {kernel_size}')
            padding = kernel_size // 2
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else None
        conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = conv_cls(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        if norm is True:
            norm = nn.BatchNorm2d(out_channels, eps=norm_eps)
        self.norm_name, self.act_name = norm_name, act_name
        self.add_module(norm_name, norm if isinstance(norm, nn.Module) else None)
        self.add_module(act_name, build_act(act, inplace=True))

    @property
    def norm_layer(self) -> Optional[nn.Module]:
        """The norm module (whatever its attribute name), ``None`` when there is none (or after ``fuse()``)."""
        return self._modules[self.norm_name]

    @property
    def act_layer(self) -> Optional[nn.Module]:
        """The activation module (whatever its attribute name), or ``None``."""
        return self._modules[self.act_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        x = self.conv(x)
        norm, act = self.norm_layer, self.act_layer
        if norm is not None:
            x = norm(x)
        if act is not None:
            x = act(x)
        return x

    def _fuse(self) -> None:
        """Fold a BatchNorm into a plain conv (not into a transposed one)."""
        if isinstance(self.norm_layer, _BatchNorm) and type(self.conv) is nn.Conv2d:
            self.conv = fuse_conv_bn(self.conv, self.norm_layer)
            setattr(self, self.norm_name, None)


@torch.no_grad()
def fuse_conv_norm_acts(module: nn.Module) -> nn.Module:
    """``fuse()`` every :class:`ConvNormAct` inside ``module`` (in place). Returns ``module``."""
    for m in module.modules():
        if isinstance(m, ConvNormAct):
            m.fuse()
    return module


class OpSequence(nn.Module):
    """A sequence of modules applied in order, stored under ``op_list`` (the reference's key layout).

    With ``with_cp=True`` each op is run under activation checkpointing while training.
    """

    def __init__(self, ops: Sequence[nn.Module], with_cp: bool = False):
        super().__init__()
        self.op_list = nn.ModuleList(ops)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            if self.with_cp and self.training and x.requires_grad:
                x = _grad_checkpoint(op, x, use_reentrant=False)
            else:
                x = op(x)
        return x

    def __len__(self) -> int:
        return len(self.op_list)

    def __getitem__(self, idx):
        return self.op_list[idx]


class Resize(nn.Module):
    """Resizing as the reference's ``UpSampleLayer``: to a fixed ``size`` or by an integer ``factor`` (exactly
    one of them), bicubic and ``align_corners=False`` by default. The identity when the input already has the
    target size; otherwise half-precision inputs are computed (and returned) in fp32 with autocast disabled.

    ``size`` (optional, per call) overrides the target. The seg head passes it only when ``factor`` would not
    reproduce the finest feature's size (inputs whose size is not a multiple of 32); the reference crashes in
    that case, so this is a deliberate, behaviour-preserving extension.
    """

    def __init__(self, size: Union[int, Sequence[int], None] = None, factor: Optional[int] = None,
                 mode: str = 'bicubic', align_corners: bool = False):
        super().__init__()
        if (size is None) == (factor is None):
            raise ValueError(f'Resize takes exactly one of size and factor, got size={size!r}, factor={factor!r}')
        if size is not None:
            size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        self.size = size
        self.factor = None if factor is None else int(factor)
        self.mode = mode
        self.align_corners = align_corners

    def forward(self, x: torch.Tensor, size: Optional[Sequence[int]] = None) -> torch.Tensor:
        natural = self.size or (x.shape[-2] * self.factor, x.shape[-1] * self.factor)
        target = natural if size is None else tuple(size)
        if target == tuple(x.shape[-2:]):
            return x
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        kw = dict(scale_factor=self.factor) if self.factor is not None and target == natural else dict(size=target)
        if _autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return F.interpolate(x, mode=self.mode, align_corners=self.align_corners, **kw)
        return F.interpolate(x, mode=self.mode, align_corners=self.align_corners, **kw)

    def extra_repr(self) -> str:
        target = f'size={self.size}' if self.size else f'factor={self.factor}'
        return f'{target}, mode={self.mode!r}, align_corners={self.align_corners}'


def stage_number(fid: str) -> int:
    """``K`` of a reference feature id ``'stageK'``."""
    if not (isinstance(fid, str) and fid.startswith('stage') and fid[5:].isdigit()):
        raise ValueError(f'feature id {fid!r} is not of the form "stageK"')
    return int(fid[5:])


def _run_branch(op: nn.Module, x: torch.Tensor, size: Optional[Sequence[int]]) -> torch.Tensor:
    """An input branch; a trailing :class:`Resize` of an :class:`OpSequence` branch gets ``size``."""
    if size is None or not (isinstance(op, OpSequence) and isinstance(op.op_list[-1], Resize)):
        return op(x)
    *first, resize = op.op_list
    for m in first:
        x = m(x)
    return resize(x, size=size)


class DAGHead(Fusable, nn.Module):
    """The reference's ``DAGBlock`` as a head: ``input_ops[i](inputs[i])`` -> merged (``'add'``: summed in order;
    ``'cat'``: concatenated along channels) -> ``middle`` -> every op of ``output_ops``.

    The module names (``input_ops.{i}``, ``middle``, ``output_ops.{j}``) are the reference's state-dict keys.
    Subclasses select the inputs from the backbone features and call :meth:`forward_dag`.
    """

    def __init__(self, input_ops: Sequence[nn.Module], middle: nn.Module, output_ops: Sequence[nn.Module],
                 merge: str = 'add'):
        super().__init__()
        if merge not in ('add', 'cat'):
            raise ValueError(f"merge must be 'add' or 'cat', got {merge!r}")
        self.input_ops = nn.ModuleList(input_ops)
        self.merge = merge
        self.middle = middle
        self.output_ops = nn.ModuleList(output_ops)

    def forward_dag(self, xs: Sequence[torch.Tensor], size: Optional[Sequence[int]] = None):
        """Run the DAG on ``xs`` (one tensor per input op, in order). ``size`` is passed to a trailing
        :class:`Resize` of each input branch. Returns the output op's tensor (a tuple for several)."""
        if len(xs) != len(self.input_ops):
            raise ValueError(f'{type(self).__name__} has {len(self.input_ops)} inputs, got {len(xs)} tensors')
        ys = [_run_branch(op, x, size) for op, x in zip(self.input_ops, xs)]
        if self.merge == 'cat':
            out = torch.cat(ys, dim=1)
        else:
            out = ys[0]
            for y in ys[1:]:
                out = out + y
        # Resized branches are fp32 for half inputs (as in the reference). Under autocast the next conv casts;
        # without it, go back to the weights' dtype so that a plain bf16/fp16 model runs.
        w = next(self.output_ops.parameters())
        if out.dtype != w.dtype and not _autocast_enabled(out.device.type):
            out = out.to(w.dtype)
        out = self.middle(out)
        outs = tuple(op(out) for op in self.output_ops)
        return outs[0] if len(outs) == 1 else outs

    def _fuse(self) -> None:
        fuse_conv_norm_acts(self)
