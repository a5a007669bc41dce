"""Deploy-mode helpers (pure PyTorch): folding BatchNorm into the neighbouring conv/linear layer, and
:class:`OneDNNConvAct`, the inference form of a conv and its activation as one oneDNN call on the CPU."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ['bn_scale_shift', 'fuse_conv_bn', 'fuse_linear_bn', 'fuse_bn_linear', 'onednn_post_op',
           'onednn_applies', 'OneDNNConvAct']


@torch.no_grad()
def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm):
    """The per-channel affine map ``y = x * scale + shift`` that an eval-mode BatchNorm computes."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """A Conv2d (with bias) equal to ``bn(conv(x))`` in eval mode."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


@torch.no_grad()
def fuse_linear_bn(linear: nn.Linear, bn: nn.modules.batchnorm._BatchNorm) -> nn.Linear:
    """A Linear equal to ``bn(linear(x))`` in eval mode."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True,
                      device=linear.weight.device, dtype=linear.weight.dtype)
    fused.weight.copy_(linear.weight * scale[:, None])
    bias = linear.bias if linear.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


@torch.no_grad()
def fuse_bn_linear(bn: nn.modules.batchnorm._BatchNorm, linear: nn.Linear) -> nn.Linear:
    """A Linear equal to ``linear(bn(x))`` in eval mode (BN *before* the linear layer)."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True,
                      device=linear.weight.device, dtype=linear.weight.dtype)
    fused.weight.copy_(linear.weight * scale[None, :])
    bias = linear.bias if linear.bias is not None else torch.zeros(linear.out_features, device=shift.device,
                                                                     dtype=shift.dtype)
    fused.bias.copy_(bias + linear.weight @ shift)
    return fused


# ------------------------------------------------------------------------------------------------ oneDNN post-ops
def onednn_post_op(act: Optional[nn.Module]) -> Optional[tuple]:
    """The post-op arguments (attr, scalars, algorithm) of ``torch.ops.mkldnn._convolution_pointwise`` that
    compute ``act`` after the conv (None: an activation oneDNN has no post-op for)."""
    if act is None:
        return 'none', [], ''
    if isinstance(act, nn.GELU):
        return 'gelu', [], act.approximate  # 'tanh' (the reference's) or 'none' (erf)
    if isinstance(act, nn.ReLU6):
        return 'hardtanh', [0.0, 6.0], ''
    for cls, attr in ((nn.ReLU, 'relu'), (nn.Hardswish, 'hardswish'), (nn.SiLU, 'swish')):
        if type(act) is cls:
            return attr, [], ''
    return None


def onednn_applies(x: torch.Tensor) -> bool:
    """Whether a fused oneDNN call may replace the plain ops: fp32 CPU inference outside autograd, autocast,
    tracing for ONNX and TorchScript, with oneDNN enabled (``torch.backends.mkldnn.flags(enabled=False)`` turns
    the fused calls off too)."""
    return (x.device.type == 'cpu' and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled('cpu')
            and not torch.onnx.is_in_onnx_export() and not torch.jit.is_scripting() and not torch.jit.is_tracing())


class OneDNNConvAct(nn.Module):
    """The inference form of a BN-folded conv+activation layer, swapped in by :func:`evit_mm.deploy`.

    fp32 inference on the CPU (no autograd, no autocast, not while exporting to ONNX or tracing) runs the conv and
    its activation as one oneDNN convolution with the activation as a post-op
    (``torch.ops.mkldnn._convolution_pointwise``, the kernel torch.compile's CPU backend emits for conv+act): one
    pass over the output instead of two (GELU alone was 28 % of EfficientViT-L1's time on one CPU thread, all of
    it memory traffic). Same values to float rounding; every other case runs the conv, then the activation.

    Built from a layer with a ``conv`` (a plain zero-padded ``nn.Conv2d``), an activation (``act_layer``, under the
    attribute ``act_name``) and nothing else in between (:meth:`applies_to`); it keeps the layer's state-dict keys.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        if not self.applies_to(layer):
            raise ValueError(f'{type(layer).__name__} has a norm, a dropout, an activation oneDNN has no post-op for, '
                             'or a conv oneDNN does not take: it has no oneDNN form')
        self.conv = layer.conv
        self.act_name = layer.act_name
        self.add_module(layer.act_name, layer.act_layer)
        self.post_op = onednn_post_op(layer.act_layer)

    @staticmethod
    def applies_to(layer: nn.Module) -> bool:
        """Whether ``layer`` (a fused ``ConvNormAct``) can become a :class:`OneDNNConvAct`."""
        conv = getattr(layer, 'conv', None)
        return (torch.backends.mkldnn.is_available() and type(conv) is nn.Conv2d and conv.padding_mode == 'zeros'
                and getattr(layer, 'norm_layer', None) is None and getattr(layer, 'dropout', None) is None
                and onednn_post_op(getattr(layer, 'act_layer', None)) is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if onednn_applies(x):
            attr, scalars, algorithm = self.post_op
            return torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, conv.padding, conv.stride,
                                                           conv.dilation, conv.groups, attr, scalars, algorithm)
        act = self._modules[self.act_name]
        return conv(x) if act is None else act(conv(x))

    def extra_repr(self) -> str:
        return f'post_op={self.post_op[0]!r}'
