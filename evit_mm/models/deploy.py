"""Deploy mode for evit_mm models: ``evit_mm.deploy(model)`` (this module's :func:`deploy`).

One call turns a trained model (a backbone, an mmdet/mmseg model holding one, a seg head, an EfficientViT-SAM
image encoder, or any ``nn.Module`` containing them) into its inference form:

1. **BatchNorm folding.**  Every evit_mm module with a ``fuse()`` method folds its BatchNorms into the preceding
   convs (EfficientViT-M also folds the identity of its residual depthwise convs into their kernels).
2. **Inference-only modules, swapped in** (:func:`swap_inference_modules`; the training modules have no deploy
   state and no deploy branch in their forwards):

   - every EfficientViT-M attention becomes a
     :class:`~evit_mm.models.efficientvit_msra.DeployedCascadedGroupAttention`: its relative-position bias gathered
     once into a constant buffer, the ``1/sqrt(key_dim)`` query scale folded into the query convs;
   - every fused ``ConvNormAct`` (EfficientViT-B/L/XL, the seg head, the SAM neck, the FPN) becomes a
     :class:`~evit_mm.models.fuse.OneDNNConvAct` where oneDNN is available: the conv and its activation in one
     oneDNN call for fp32 CPU inference, the plain ops everywhere else (autograd, autocast, GPUs, ONNX export).
3. **channels_last** (default on).  Every 4-d weight is stored NHWC.  oneDNN's CPU convolutions (and cuDNN's under
   AMP) are faster in that layout: on the 2-core Xeon of docs/benchmarks.md the depthwise 3x3 convs run 2.5x and
   the stride-2 patch-embedding convs 1.3-1.6x faster, which is most of evit_mm's lead over timm there.  Inputs
   may stay NCHW: the first convolution switches the layout because its weight is NHWC.  Outputs are
   channels_last tensors (same values and shapes; call ``.contiguous()`` before ``.view()`` on them).
4. **torch.compile** (optional, ``compile=True``).

The model is put in eval mode and changed in place (the returned module is the same object unless compiled).
The result is for inference only: its state dict has the fused layout and it cannot load checkpoints any more,
and a forward in training mode (after ``model.train()``) raises :class:`DeployedModelTrainingError`, naming the
swapped modules: their folded weights are copies the optimizer would not train (rebuild the model and load the
trained checkpoint to train further).
Outputs agree with the eval-mode model to float rounding (about 1e-6 relative; ``tests/test_models/test_deploy.py``).
"""
from __future__ import annotations

import types
from typing import Any, Optional

import torch
from torch import nn

from .efficientvit_msra import CascadedGroupAttention, DeployedCascadedGroupAttention
from .fuse import OneDNNConvAct
from .layers import ConvNormAct

__all__ = ['deploy', 'fuse_model', 'swap_inference_modules', 'is_deployed', 'DeployedModelTrainingError']


class DeployedModelTrainingError(RuntimeError):
    """A module swapped in by :func:`deploy` was run in training mode."""


def _inference_only(module: nn.Module, args) -> None:
    """Forward pre-hook of every swapped-in module: refuses a forward in training mode."""
    if module.training:
        names = getattr(module, '_evit_mm_deployed_as', type(module).__name__)
        raise DeployedModelTrainingError(
            f'{names} is an inference-only module swapped in by evit_mm.deploy, and it is run in training mode '
            '(model.train()). A deployed model cannot be trained: its BatchNorms are folded and the swapped '
            'modules hold copies of the weights that an optimizer would not update. Train the model before '
            'deploying it (or rebuild it and load the trained checkpoint); for inference call model.eval().')


def _fusable(module: nn.Module) -> bool:
    """evit_mm's own modules with an in-place ``fuse()``.  Other libraries' ``fuse()`` methods (timm's return a
    new module) are never called."""
    # a method defined on the class (a submodule may be *named* fuse, e.g. EfficientViTSR's fuse conv)
    return type(module).__module__.startswith('evit_mm.') and isinstance(getattr(type(module), 'fuse', None),
                                                                         types.FunctionType)


@torch.no_grad()
def fuse_model(model: nn.Module) -> int:
    """Call ``fuse()`` on the outermost evit_mm modules that have one, in place.  Returns how many were fused."""
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        if _fusable(module):
            module.fuse()
            count += 1
            return
        for child in module.children():
            visit(child)

    visit(model)
    return count


@torch.no_grad()
def swap_inference_modules(model: nn.Module) -> int:
    """Replace, in place, every submodule of ``model`` that has an inference-only form by that form (after
    :func:`fuse_model`: the forms need the BN-folded layers). Exact types only: a subclass may compute something
    else. Returns how many were swapped."""
    def inference_form(module: nn.Module) -> Optional[nn.Module]:
        if type(module) is CascadedGroupAttention:
            return DeployedCascadedGroupAttention(module)
        if type(module) is ConvNormAct and OneDNNConvAct.applies_to(module):
            return OneDNNConvAct(module)
        return None

    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            replacement = inference_form(child)
            if replacement is not None:
                path = f'{parent_name}.{name}' if parent_name else name
                replacement._evit_mm_deployed_as = f'{path} ({type(replacement).__name__})'
                replacement.train(child.training)  # a new module is in training mode; the model is in eval
                replacement.register_forward_pre_hook(_inference_only)
                setattr(parent, name, replacement)
                count += 1
    return count


def is_deployed(model: nn.Module) -> bool:
    """Whether :func:`deploy` was applied to ``model``."""
    return bool(getattr(model, '_evit_mm_deployed', False))


def deploy(model: nn.Module, channels_last: bool = True, compile: bool = False,
           compile_kwargs: Optional[dict[str, Any]] = None) -> nn.Module:
    """The inference form of ``model`` (see the module docstring): eval mode, BNs folded, inference-only modules
    swapped in, NHWC weights (``channels_last``), optionally ``torch.compile``-d (``compile_kwargs`` go to
    ``torch.compile``).  Works in place; returns the model (or its compiled wrapper).

    Raises ``ValueError`` when the model holds no evit_mm module that can be fused (deploying anything else is
    most likely a mistake: use ``torch.compile`` directly).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'deploy() takes an nn.Module, got {type(model).__name__}')
    model.eval()
    if not is_deployed(model):
        if fuse_model(model) == 0 and not any(getattr(m, 'is_fused', False) for m in model.modules()):
            raise ValueError(f'{type(model).__name__} contains no evit_mm model with a fuse() method '
                             '(EfficientViTM, EfficientViTB/L, EfficientViTSegHead, the SAM image encoder, ...)')
        swap_inference_modules(model)
        model._evit_mm_deployed = True
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model, **(compile_kwargs or {}))
    return model
