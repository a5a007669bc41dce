"""Reading checkpoints and loading them strictly, with a readable key diff (pure PyTorch)."""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ['CHECKPOINT_SAFE_GLOBALS', 'CheckpointMismatchError', 'read_checkpoint', 'unwrap_state_dict',
           'load_state_dict_strict', 'format_key_diff']

#: Python objects (besides tensors and containers) that the official training scripts store in their checkpoints
#: and that are safe to unpickle: Cream's and MIT EfficientViT's main.py save an ``argparse.Namespace``.
CHECKPOINT_SAFE_GLOBALS = [argparse.Namespace]

#: Wrapper keys under which the known training codebases store the weights, tried in order.
_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_ema')


class CheckpointMismatchError(RuntimeError):
    """A state dict does not match a model. ``missing``, ``unexpected`` and ``shape_mismatch`` hold the details."""

    def __init__(self, message: str, missing=(), unexpected=(), shape_mismatch=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.shape_mismatch = list(shape_mismatch)


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a checkpoint object (``{'model': ...}``, ``{'state_dict': ...}``, ...)."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f'expected a state dict or a checkpoint dict, got {type(obj).__name__}')
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            return unwrap_state_dict(inner)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError('the checkpoint holds no tensors (top-level keys: '
                         f'{sorted(obj)[:10]}{" ..." if len(obj) > 10 else ""})')
    return dict(obj)


def read_checkpoint(src: str | os.PathLike | Mapping | nn.Module, map_location='cpu') -> dict[str, torch.Tensor]:
    """Read a local checkpoint file (or take a dict) and return its state dict.

    Files are read with ``weights_only=True`` (plus :data:`CHECKPOINT_SAFE_GLOBALS`): a checkpoint of weights
    needs nothing else, and this never runs code from the file.
    """
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'checkpoint not found: {path}')
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            return load_file(path, device=str(map_location))
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            src = torch.load(path, map_location=map_location, weights_only=True)
    return unwrap_state_dict(src)


def _limited(keys, limit=20):
    keys = sorted(keys)
    lines = [f'    {k}' for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f'    ... and {len(keys) - limit} more')
    return lines


def format_key_diff(missing, unexpected, shape_mismatch=(), limit=20) -> str:
    """Human-readable report of the differences between a model and a state dict."""
    lines = []
    if missing:
        lines += [f'  missing in the checkpoint ({len(missing)}):'] + _limited(missing, limit)
    if unexpected:
        lines += [f'  unexpected in the checkpoint ({len(unexpected)}):'] + _limited(unexpected, limit)
    if shape_mismatch:
        lines.append(f'  shape mismatch ({len(shape_mismatch)}):')
        lines += [f'    {k}: checkpoint {tuple(a)} vs model {tuple(b)}' for k, a, b in shape_mismatch[:limit]]
    return '\n'.join(lines)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = 'checkpoint'):
    """``model.load_state_dict(state_dict, strict=True)``, but a mismatch raises a :class:`CheckpointMismatchError`
    listing every missing, unexpected and wrongly shaped key, and leaves the model's weights untouched."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape_mismatch = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in own.items()
                      if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape_mismatch:
        raise CheckpointMismatchError(
            f'{source} does not match {type(model).__name__} '
            f'({len(own)} keys in the model, {len(state_dict)} in the checkpoint):\n'
            + format_key_diff(missing, unexpected, shape_mismatch),
            missing, unexpected, shape_mismatch)
    model.load_state_dict(state_dict, strict=True)
    return model
