"""Check that a detector's neck gives the feature strides its heads expect.

EfficientViT-M's stages have strides 16 / 32 / 64, not a ResNet's 4 / 8 / 16 / 32. Swapping it into a stock
mmdet config without moving the neck's levels (``start_level``, ``num_outs``, ``add_extra_convs``, or
``EfficientViTFPN``'s ``num_extra_trans_convs``) still builds and trains, but the pyramid's strides then differ
from those of the anchors (or points, or RoI extractors): every anchor sits at the wrong scale, and nothing
says so. :func:`check_pyramid_strides` measures the strides the neck really produces and compares them with
the heads'; :class:`PyramidStrideCheckHook` runs it at the start of every train, val and test run. The backbone
cannot do this itself: it never sees the neck or the heads.
"""
from __future__ import annotations

import warnings

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmdet.registry import HOOKS

__all__ = ['PyramidStrideWarning', 'check_pyramid_strides', 'head_strides', 'neck_strides', 'PyramidStrideCheckHook']


class PyramidStrideWarning(UserWarning):
    """The feature strides of a detector's neck and those of its heads disagree."""


def _stride(s) -> int:
    return int(s[0] if isinstance(s, (tuple, list)) else s)  # mmdet stores (w, h) pairs; they are square here


def head_strides(detector) -> dict[str, tuple[list[int], bool]]:
    """The strides each head of ``detector`` expects: ``{name: (strides, exact)}``.

    ``exact`` is True for prior generators (anchors, points: one per neck level, so the lists must be equal) and
    False for RoI extractors (they use the first ``len(strides)`` neck levels).
    """
    found = {}
    for name in ('bbox_head', 'rpn_head'):
        gen = getattr(getattr(detector, name, None), 'prior_generator', None)
        if gen is not None and getattr(gen, 'strides', None) is not None:
            found[f'{name}.prior_generator'] = ([_stride(s) for s in gen.strides], True)
    roi_head = getattr(detector, 'roi_head', None)
    for name in ('bbox_roi_extractor', 'mask_roi_extractor'):
        extractors = getattr(roi_head, name, None)
        if extractors is None:
            continue
        stages = extractors if isinstance(extractors, torch.nn.ModuleList) else [extractors]
        for i, ext in enumerate(stages):  # a cascade has one extractor per stage
            if getattr(ext, 'featmap_strides', None) is not None:
                key = f'roi_head.{name}' + (f'[{i}]' if len(stages) > 1 else '')
                found[key] = ([_stride(s) for s in ext.featmap_strides], False)
    return found


@torch.no_grad()
def neck_strides(detector, size: int = 512) -> list[int]:
    """The strides of the maps ``detector.neck`` returns, measured on one ``size`` x ``size`` zero image.

    The backbone and the neck run in eval mode (their BN statistics do not move); afterwards every submodule is
    back in its own mode, through ``train()`` (which some backbones override, e.g. for ``norm_eval``). Strides
    above ``size`` are reported as ``size``: choose ``size`` above the largest expected one.
    """
    modules = [detector.backbone, detector.neck]
    modes = [(m, m.training) for top in modules for m in top.modules()]
    param = next(detector.backbone.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=param.device if param is not None else 'cpu',
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    try:
        for m in modules:
            m.eval()
        outs = detector.neck(detector.backbone(x))
    finally:
        for m, mode in modes:  # parents first: a parent's train() resets its children, which are then corrected
            if m.training != mode:
                m.train(mode)
    return [size // int(f.shape[-2]) for f in outs]


def _has_pyramid(model) -> bool:
    return getattr(model, 'backbone', None) is not None and getattr(model, 'neck', None) is not None


def _find_detector(model):
    if _has_pyramid(model):
        return model
    inner = getattr(model, 'detector', None)  # e.g. BoxPromptedSAM: the detector whose boxes prompt SAM
    return inner if _has_pyramid(inner) else None


def check_pyramid_strides(model, warn: bool = True) -> list[str]:
    """Compare the strides ``model``'s neck produces with those its heads expect.

    Returns one line per disagreeing head (empty when everything agrees, or when the model has no neck or no
    head with strides), and, with ``warn``, issues them as one :class:`PyramidStrideWarning` naming both stride
    lists. The neck's strides are measured with one forward pass of the backbone and the neck on a zero image
    (see :func:`neck_strides`), so any backbone and neck are checked as they really are.
    """
    detector = _find_detector(model)
    heads = head_strides(detector) if detector is not None else {}
    if not heads:
        return []
    size = max(256, 4 * max(max(s) for s, _ in heads.values()))
    try:
        pyramid = neck_strides(detector, size)
    except Exception as err:  # noqa: BLE001 - a neck this check cannot run must not stop the run it guards
        warnings.warn(f'{type(detector).__name__}: the neck\'s strides could not be measured on a {size}x{size} '
                      f'zero image ({type(err).__name__}: {err}); they were not checked', PyramidStrideWarning,
                      stacklevel=2)
        return []
    problems = []
    for name, (expected, exact) in heads.items():
        got = pyramid if exact else pyramid[:len(expected)]
        if got != expected:
            problems.append(f'{name} expects strides {expected}, but the neck gives {pyramid}')
    if problems and warn:
        backbone = getattr(detector.backbone, 'out_strides', None)
        origin = f' (backbone strides {list(backbone)})' if backbone is not None else ''
        warnings.warn(
            f'{type(detector).__name__}: the neck\'s feature strides{origin} disagree with the heads\': '
            + '; '.join(problems) + '. Anchors/RoIs would sit at the wrong scale. Move the neck\'s levels '
            '(start_level, num_outs, add_extra_convs; EfficientViTFPN: num_extra_trans_convs) or the heads\' '
            'strides (see docs/efficientvit_m.md, "Swapping the backbone into any mmdet config").',
            PyramidStrideWarning, stacklevel=2)
    return problems


@HOOKS.register_module()
class PyramidStrideCheckHook(Hook):
    """Runs :func:`check_pyramid_strides` on the runner's model before every train, val or test run.

    Enable it with ``custom_hooks = [dict(type='PyramidStrideCheckHook')]`` (evit_mm's detection configs do).
    ``strict=True`` raises a ``ValueError`` instead of warning.
    """

    priority = 'VERY_LOW'

    def __init__(self, strict: bool = False):
        self.strict = strict

    def before_run(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        problems = check_pyramid_strides(model, warn=not self.strict)
        if problems and self.strict:
            raise ValueError('feature strides disagree: ' + '; '.join(problems))
        if not problems:
            print_log('PyramidStrideCheckHook: the neck\'s strides match the heads\'', logger='current')
