"""Fold the BatchNorms of any conv network (not only evit_mm's) into the convolutions that feed them."""
from __future__ import annotations

import copy

import torch
from torch import nn

from .fuse import fuse_conv_bn


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into the conv that runs just before it (timm's
    ``BatchNormAct2d`` becomes its activation), found by running ``example`` with hooks: what Cream's speed test
    does to every model it times (it removes the BNs), for models that have no folding of their own
    (MobileNetV3).  ``model`` is left untouched; the caller checks the outputs."""
    model = copy.deepcopy(model).eval()
    order, hooks = [], []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            hooks.append(module.register_forward_hook(lambda m, i, o: order.append(m)))
    model(example)
    for h in hooks:
        h.remove()
    where = {id(m): (parent, name) for parent in model.modules() for name, m in parent.named_children()}
    for prev, module in zip(order, order[1:]):
        if isinstance(module, nn.BatchNorm2d) and type(prev) is nn.Conv2d and prev.out_channels == module.num_features:
            parent, name = where[id(prev)]
            setattr(parent, name, fuse_conv_bn(prev, module))
            parent, name = where[id(module)]
            act, drop = getattr(module, 'act', nn.Identity()), getattr(module, 'drop', nn.Identity())
            setattr(parent, name, nn.Sequential(drop, act) if not isinstance(drop, nn.Identity) else act)
    return model
