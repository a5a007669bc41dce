"""Optimizer construction for SAM training: mmengine's default constructor, minus frozen sub-modules.

The reference's parameter-wise rule (no weight decay on parameters whose name contains ``norm`` or ``bias``) is
mmengine's own ``paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.), 'bias': dict(decay_mult=0.)})``
(``custom_keys`` match substrings of parameter names), set in the configs. What mmengine's constructor lacks is a
quiet way to leave out a frozen part (phase 1 freezes the prompt encoder and mask decoder): it logs a warning
per frozen parameter. :class:`SamOptimWrapperConstructor` skips modules without a trainable parameter.
"""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

__all__ = ['SamOptimWrapperConstructor']


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SamOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` that leaves out sub-modules whose parameters are all frozen."""

    def add_params(self, params, module, prefix: str = '', is_dcn_module=None) -> None:
        if not any(p.requires_grad for p in module.parameters()):
            return
        super().add_params(params, module, prefix, is_dcn_module)
