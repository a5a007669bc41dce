"""An optimizer-wrapper constructor for "head lr multiplier + no weight decay on norms and biases".

mmengine's ``DefaultOptimWrapperConstructor`` applies ``paramwise_cfg.custom_keys`` *instead of* its other rules:
a parameter matched by ``custom_keys={'decode_head': dict(lr_mult=10.)}`` gets ``lr * 10`` and the *full* weight
decay, even if it is a BatchNorm weight or a bias and ``norm_decay_mult=0`` / ``bias_decay_mult=0`` are set.
So the two halves of the usual segmentation recipe (a 10x learning rate for the randomly initialised head;
no decay on norms and biases, as the EfficientViT reference trainers' ``no_wd_keys=['norm', 'bias']``) cannot
be combined with it.

:class:`EfficientViTOptimWrapperConstructor` is the default constructor with one change: for parameters matched
by a custom key that sets no ``decay_mult`` of its own, ``norm_decay_mult``, ``bias_decay_mult`` and
``flat_decay_mult`` still apply, in mmengine's order of precedence (norm, then bias, then 1-D). Everything else
(lr multipliers, custom keys that do set ``decay_mult``, ``dwconv_decay_mult``, ``bypass_duplicate``) is
unchanged.
"""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch.nn import GroupNorm, LayerNorm
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ['EfficientViTOptimWrapperConstructor']

_NORMS = (_BatchNorm, _InstanceNorm, GroupNorm, LayerNorm)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class EfficientViTOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` whose norm / bias / flat decay rules also reach custom-key parameters
    (see the module docstring)."""

    def add_params(self, params, module, prefix: str = '', is_dcn_module=None) -> None:
        first = len(params)
        super().add_params(params, module, prefix, is_dcn_module)
        if prefix or self.base_wd is None:
            return  # the recursive calls; the fix-up runs once, on the whole model
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        if not custom_keys:
            return
        norm_mult = self.paramwise_cfg.get('norm_decay_mult', None)
        bias_mult = self.paramwise_cfg.get('bias_decay_mult', None)
        flat_mult = self.paramwise_cfg.get('flat_decay_mult', None)
        if norm_mult is None and bias_mult is None and flat_mult is None:
            return
        sorted_keys = sorted(sorted(custom_keys), key=len, reverse=True)  # mmengine's matching order
        info = {}
        for module_name, mod in module.named_modules():
            is_norm = isinstance(mod, _NORMS)
            for name, param in mod.named_parameters(recurse=False):
                info[id(param)] = (f'{module_name}.{name}' if module_name else name, name, is_norm, param.ndim)
        for group in params[first:]:
            param = group['params'][0]
            if id(param) not in info:
                continue
            full_name, name, is_norm, ndim = info[id(param)]
            key = next((k for k in sorted_keys if k in (full_name if '.' in full_name else f'.{full_name}')), None)
            if key is None or 'decay_mult' in custom_keys[key]:
                continue
            if is_norm and norm_mult is not None:
                mult = norm_mult
            elif name == 'bias' and bias_mult is not None:
                mult = bias_mult
            elif ndim == 1 and flat_mult is not None:
                mult = flat_mult
            else:
                continue
            group['weight_decay'] = self.base_wd * mult
