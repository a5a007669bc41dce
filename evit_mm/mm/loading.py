"""Checked loading of ``load_from`` checkpoints into an mmengine Runner's model (what tools/test.py and
tools/train.py use; usable from one's own scripts too).

mmengine loads ``load_from`` non-strictly: a checkpoint of another model loads nothing and the run evaluates or
fine-tunes random weights. :func:`use_checked_loading` makes a runner load it through
:func:`load_checkpoint_checked` instead: strictly (every missing, unexpected or wrongly shaped key listed in the
error), refusing NaN/inf weights, converting a raw Cream EfficientViT-M detector checkpoint in memory::

    from evit_mm.mm.loading import use_checked_loading
    runner = Runner.from_cfg(cfg)
    use_checked_loading(runner)   # strict=False / allow_nonfinite=True relax it
    runner.test()

Resuming (``resume=True``) is checked for NaN/inf weights too, with the same message and override, by
:class:`evit_mm.mm.hooks.AtomicCheckpointHook` (every Runner's checkpoint hook once evit_mm is imported).

This module needs mmengine and :mod:`evit_mm.models` only (no mmdet / mmseg / mmagic).
"""
from __future__ import annotations

import os.path as osp
from collections import OrderedDict

from evit_mm.models.checkpoint import (CheckpointMismatchError, NonFiniteWeightsError, check_finite, format_key_diff,
                                       strip_prefix, unwrap_state_dict)
from evit_mm.models.convert_msra import cream_detector_to_evit_mm, detect_msra_format
from evit_mm.models.efficientvit_msra import EfficientViTM

__all__ = ['CONVERTER', 'cream_detector_format', 'convert_cream_detector', 'model_state_dict', 'load_strict',
           'load_checkpoint_checked', 'use_checked_loading', 'check_finite_checkpoint', 'NONFINITE_OVERRIDE']

#: The command that converts an official EfficientViT-M (Cream) checkpoint once, named in the error messages.
CONVERTER = 'python tools/convert_efficientvit_msra.py'
#: How to load or resume from a checkpoint with NaN/inf weights anyway (named in the refusal).
NONFINITE_OVERRIDE = '--allow-nonfinite (allow_nonfinite=True) loads it anyway'


def check_finite_checkpoint(checkpoint, filename: str) -> None:
    """Refuse a checkpoint whose weights (its ``state_dict``, or the dict itself) hold NaN or inf: a
    :class:`~evit_mm.models.checkpoint.NonFiniteWeightsError` naming the file, the keys and the override. The one
    check behind ``load_from`` (:func:`load_checkpoint_checked`) and ``--resume``
    (:class:`evit_mm.mm.hooks.AtomicCheckpointHook`)."""
    state_dict = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else checkpoint
    try:
        check_finite(state_dict, filename)
    except NonFiniteWeightsError as err:
        raise NonFiniteWeightsError(f'{err}; {NONFINITE_OVERRIDE}', err.keys) from None


def cream_detector_format(state_dict) -> str | None:
    """'cream-det' / 'cream-cls' if ``state_dict`` is a raw Cream EfficientViT-M detector (backbone in Cream's
    layout under ``backbone.``), else None."""
    try:
        backbone = strip_prefix(state_dict, 'backbone.', select=True)
        fmt = detect_msra_format(backbone) if backbone else None
    except ValueError:  # not Cream's layout
        return None
    return fmt if fmt and fmt.startswith('cream') else None


def convert_cream_detector(model, state_dict, filename: str):
    """A raw Cream detector checkpoint, converted in memory for ``model`` (whose backbone must be an
    EfficientViTM); otherwise a ``SystemExit`` with the converter command."""
    from mmengine.logging import print_log
    backbone = getattr(model, 'backbone', None)
    stem = osp.splitext(osp.basename(filename))[0]
    command = f'{CONVERTER} {filename} {stem}_evit_mm.pth'
    if not isinstance(backbone, EfficientViTM):
        raise SystemExit(f'{filename} is a raw Cream EfficientViT-M detector checkpoint (backbone in Cream\'s '
                         f'layout), and this model\'s backbone is {type(backbone).__name__}, not EfficientViTM. '
                         f'Convert it first:\n  {command}')
    out, report = cream_detector_to_evit_mm(state_dict, window_size=backbone.window_sizes)
    print_log(f'{filename}: a raw Cream detector checkpoint ({report.format}), converted in memory '
              f'({report.summary().splitlines()[0]}); to convert it once: {command}', logger='current')
    return out


def model_state_dict(checkpoint, filename: str):
    """The weights of an mmengine checkpoint (``state_dict``) or of another trainer's (``model``, ...), with
    mmengine's ``module.`` prefix removed (the BatchNorm versions in ``_metadata`` kept, as mmengine keeps them)."""
    if not isinstance(checkpoint, dict):
        raise SystemExit(f'{filename} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    try:
        found = checkpoint['state_dict'] if 'state_dict' in checkpoint else unwrap_state_dict(checkpoint)
        state_dict = strip_prefix(found, 'module.')
    except (TypeError, ValueError) as err:
        raise SystemExit(f'{filename}: {err}') from None
    if not hasattr(state_dict, '_metadata'):
        state_dict._metadata = OrderedDict()
    return state_dict


def load_strict(model, state_dict, filename: str) -> None:
    """``model.load_state_dict(state_dict)``; any missing (but BN counters), unexpected or wrongly shaped key raises
    a ``CheckpointMismatchError`` that lists them all. The model's own load pre-hooks (e.g. the segmentor's renaming
    of official keys) apply."""
    seen = {}

    def record(module, keys):  # the root's post-hook runs after every child: the complete lists
        seen.update(missing=list(keys.missing_keys), unexpected=list(keys.unexpected_keys))

    handle = model.register_load_state_dict_post_hook(record)
    shapes = []
    try:
        model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # wrongly shaped tensors (torch reports them even when not strict)
        shapes = [line.strip() for line in str(err).splitlines() if 'size mismatch' in line]
        if not shapes:
            raise
    finally:
        handle.remove()
    missing = [k for k in seen.get('missing', []) if not k.endswith('num_batches_tracked')]
    unexpected = seen.get('unexpected', [])
    if missing or unexpected or shapes:
        lines = [format_key_diff(missing, unexpected)] if missing or unexpected else []
        if shapes:
            lines += [f'  shape mismatch ({len(shapes)}):'] + [f'    {line}' for line in shapes[:20]]
        raise CheckpointMismatchError(
            f'{filename} does not match the {type(model).__name__} of this config:\n' + '\n'.join(lines)
            + '\n(the checkpoint of another model? --no-strict (strict=False) loads the matching tensors and skips '
            'the rest)',
            missing, unexpected, shapes)


def load_checkpoint_checked(runner, filename: str, strict: bool = True, allow_nonfinite: bool = False,
                            map_location='cpu'):
    """Load ``filename`` into ``runner.model``: strictly by default (every missing, unexpected or wrongly shaped
    key listed in the error), refusing NaN/inf weights, converting a raw Cream detector checkpoint in memory.
    Returns the checkpoint, as ``Runner.load_checkpoint`` does."""
    from mmengine.model import is_model_wrapper
    from mmengine.runner.checkpoint import _load_checkpoint, load_state_dict

    checkpoint = _load_checkpoint(filename, map_location=map_location)
    runner.call_hook('after_load_checkpoint', checkpoint=checkpoint)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    state_dict = model_state_dict(checkpoint, filename)
    if cream_detector_format(state_dict):
        state_dict = convert_cream_detector(model, state_dict, filename)
    if not allow_nonfinite:
        check_finite_checkpoint(state_dict, filename)
    if not strict:
        load_state_dict(model, state_dict, strict=False, logger='current')
    else:
        load_strict(model, state_dict, filename)
    runner._has_loaded = True
    runner.logger.info(f'Load checkpoint from {filename} ({"strict" if strict else "non-strict"})')
    return checkpoint


def use_checked_loading(runner, strict: bool = True, allow_nonfinite: bool = False) -> None:
    """Make ``runner``'s ``load_from`` go through :func:`load_checkpoint_checked` (strict by default).

    mmengine loads ``load_from`` in ``Runner.load_or_resume`` with ``self.load_checkpoint(path)``, after the
    weights are initialised, and non-strictly. This replaces ``load_checkpoint`` on this runner instance only;
    resuming (``resume=True``) keeps mmengine's own loading, whose NaN/inf check (the runner's
    :class:`~evit_mm.mm.hooks.AtomicCheckpointHook`) follows ``allow_nonfinite`` too.
    """
    for hook in getattr(runner, 'hooks', ()):
        if hasattr(hook, 'allow_nonfinite'):  # evit_mm.mm.hooks.AtomicCheckpointHook
            hook.allow_nonfinite = allow_nonfinite
    original = runner.load_checkpoint

    def load_checkpoint(filename, map_location='cpu', **kwargs):
        if getattr(runner, '_resume', False):
            return original(filename, map_location=map_location, **kwargs)
        return load_checkpoint_checked(runner, filename, strict=strict, allow_nonfinite=allow_nonfinite,
                                       map_location=map_location)

    runner.load_checkpoint = load_checkpoint
