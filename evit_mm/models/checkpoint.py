"""Reading checkpoints and loading them strictly, with a readable key diff (pure PyTorch).

Every evit_mm loader goes through this module: :func:`read_checkpoint` (a path or a dict, weights only),
:func:`strip_prefix` (the one prefix stripper), :func:`load_state_dict_strict` (all-or-nothing, with the key diff)
and :class:`LoadReport` (what every ``load_pretrained`` returns).
"""
from __future__ import annotations

import argparse
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ['CHECKPOINT_SAFE_GLOBALS', 'CheckpointMismatchError', 'CheckpointFileError', 'NonFiniteWeightsError',
           'torch_load_file', 'read_checkpoint', 'unwrap_state_dict', 'nonfinite_keys', 'check_finite',
           'load_state_dict_strict', 'format_key_diff', 'strip_prefix', 'describe_source', 'LoadReport']

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


class CheckpointFileError(ValueError):
    """A checkpoint file cannot be read: empty, truncated or not a PyTorch file. The message names the file."""


class NonFiniteWeightsError(ValueError):
    """A state dict holds NaN or infinite values. ``keys`` lists the tensors that do."""

    def __init__(self, message: str, keys=()):
        super().__init__(message)
        self.keys = list(keys)


def strip_prefix(state_dict: Mapping[str, Any], prefix: str, select: bool = False) -> 'OrderedDict[str, Any]':
    """``state_dict`` with ``prefix`` removed from the keys that start with it (``'module.'`` of DataParallel,
    ``'backbone.'`` of a detector, ...).

    ``select=False`` keeps the other keys as they are; ``select=True`` keeps only the keys under ``prefix``
    (an empty dict when there are none). Key order is kept, and so is PyTorch's ``_metadata`` (the BatchNorm
    versions), renamed the same way. Without ``select``, two keys that would become one (``module.x`` and ``x``)
    raise ``ValueError``.
    """
    if not prefix:
        return OrderedDict(state_dict)
    out: 'OrderedDict[str, Any]' = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith(prefix):
            new = key[len(prefix):]
            if not select and new in state_dict:
                raise ValueError(f'removing the prefix {prefix!r} makes {key!r} collide with {new!r}')
            out[new] = value
        elif not select:
            out[key] = value
    metadata = getattr(state_dict, '_metadata', None)
    if metadata is not None:
        stem = prefix[:-1] if prefix.endswith('.') else prefix
        out._metadata = OrderedDict(
            (('' if k == stem else k[len(prefix):]) if k == stem or k.startswith(prefix) else k, v)
            for k, v in metadata.items() if not select or k == stem or k.startswith(prefix))
    return out


def describe_source(src: Any, source: str | None = None) -> str:
    """How error messages name a checkpoint: ``source`` if given, else the path, else ``'state dict'``."""
    if source:
        return str(source)
    return os.fspath(src) if isinstance(src, (str, os.PathLike)) else 'state dict'


@dataclass
class LoadReport:
    """What a ``load_pretrained`` call did; every evit_mm model returns one.

    Attributes:
        source: the checkpoint's name (its path, or ``'state dict'``).
        format: the layout it was recognised as (``'cream-cls'``, ``'timm'``, ``'official'``, ``'sam'`` ...).
        loaded: how many tensors were loaded into the model (strictly: all of the model's).
        part: the prefix the model's weights were read from (``'backbone.'`` of a detector or seg checkpoint,
            ``'image_encoder.'`` of a SAM one, ``'head.'`` ...), ``''`` when the whole dict was the model's.
        dropped: keys left out on purpose (a classifier head, index buffers).
        resized: ``(key, old shape, new shape)`` of tensors resized to the model (attention-bias tables).
        added: keys the checkpoint lacked and that were filled in (BatchNorm step counters, as 0).
        unrecognised: keys no rule of the format renamed (kept, so that the strict load reports them).
        other: the rest of the checkpoint, not for this model (a detector's neck and head, a SAM decoder ...).
    """
    source: str = 'state dict'
    format: str = ''
    loaded: int = 0
    part: str = ''
    dropped: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    unrecognised: list[str] = field(default_factory=list)
    other: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def from_detector(self) -> bool:
        """Whether the weights were a detector's backbone (``backbone.*`` next to other parts)."""
        return self.part == 'backbone.' and bool(self.other)

    def summary(self) -> str:
        where = f' (the {self.part}* part)' if self.part else ''
        lines = [f'{self.source}: format {self.format}{where}' + (f', {self.loaded} tensors loaded'
                                                                    if self.loaded else '')]
        if self.dropped:
            lines.append(f'dropped {len(self.dropped)} keys (classifier head / index buffers)')
        for key, old, new in self.resized:
            lines.append(f'resized {key}: {old} -> {new} (bicubic, as Cream\'s detection code)')
        if self.added:
            lines.append(f'added {len(self.added)} missing BN num_batches_tracked counters (as 0)')
        if self.unrecognised:
            lines.append(f'{len(self.unrecognised)} keys were not recognised and were kept as they are')
        if self.other:
            lines.append(f'{len(self.other)} keys belong to other parts of the checkpoint and were not loaded')
        return '\n'.join(lines)


def _is_weights_only_refusal(err: BaseException) -> bool:
    return isinstance(err, pickle.UnpicklingError) and 'Weights only load failed' in str(err)


def torch_load_file(path: str, map_location=None, weights_only: bool = True):
    """``torch.load(path)`` whose failures name the file and the cause.

    An empty file raises :class:`CheckpointFileError` (instead of a bare ``EOFError``), as does a truncated or
    corrupt one (instead of PyTorch's ``PytorchStreamReader failed ...``, which does not say which file). A
    weights-only refusal (``pickle.UnpicklingError``) is passed on unchanged for the caller to explain.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointFileError(f'{path} is empty (0 bytes): the download or the save that wrote it did not '
                                  'complete; fetch or save it again')
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        if _is_weights_only_refusal(err):
            raise
        reason = str(err).split('. ')[0] or type(err).__name__
        raise CheckpointFileError(f'{path} ({size} bytes) cannot be read as a PyTorch checkpoint: it is truncated '
                                  f'or corrupt, or not a checkpoint at all ({type(err).__name__}: {reason})'
                                  ) from err


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
    """Read a checkpoint file (or take a dict) and return its state dict. ``src`` may be a path, an ``evit://NAME``
    published checkpoint or an ``http(s)://`` URL (both fetched once into the cache, see :mod:`evit_mm.models.hub`).

    Files are read with ``weights_only=True`` (plus :data:`CHECKPOINT_SAFE_GLOBALS`): a checkpoint of weights
    needs nothing else, and this never runs code from the file.
    """
    if isinstance(src, (str, os.PathLike)):
        from .registry import resolve_checkpoint  # evit://NAME and http(s):// URLs: fetched and cached
        path = resolve_checkpoint(src)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'checkpoint not found: {path}')
        if path.endswith('.safetensors'):
            from safetensors.torch import load_file
            try:
                return load_file(path, device=str(map_location))
            except Exception as err:  # noqa: BLE001 - safetensors' errors do not name the file
                raise CheckpointFileError(f'{path} ({os.path.getsize(path)} bytes) cannot be read as a safetensors '
                                          f'file: it is empty, truncated or corrupt ({err})') from err
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            src = torch_load_file(path, map_location=map_location, weights_only=True)
    return unwrap_state_dict(src)


def nonfinite_keys(state_dict: Mapping[str, Any]) -> list[str]:
    """The keys of the floating-point tensors of ``state_dict`` that hold a NaN or an infinity."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and not v.is_meta and (v.is_floating_point() or v.is_complex())
            and not bool(torch.isfinite(v).all())]


def check_finite(state_dict: Mapping[str, Any], source: str = 'checkpoint') -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``source`` and the keys if any tensor holds NaN or inf.

    Such weights load without complaint and then produce NaN outputs (a diverged run saved its last state, or a
    file was damaged); every evit_mm loader refuses them instead.
    """
    bad = nonfinite_keys(state_dict)
    if bad:
        shown = ', '.join(bad[:10]) + (f' ... and {len(bad) - 10} more' if len(bad) > 10 else '')
        raise NonFiniteWeightsError(f'{source} holds NaN or infinite values in {len(bad)} of its '
                                    f'{len(state_dict)} tensors: {shown} (a diverged training run, or a damaged '
                                    'file); refusing to load it', bad)


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


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = 'checkpoint',
                           allow_nonfinite: bool = False):
    """``model.load_state_dict(state_dict, strict=True)``, but a mismatch raises a :class:`CheckpointMismatchError`
    listing every missing, unexpected and wrongly shaped key, and leaves the model's weights untouched.
    NaN or infinite values raise :class:`NonFiniteWeightsError` unless ``allow_nonfinite``."""
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
    if not allow_nonfinite:
        check_finite(state_dict, source)
    model.load_state_dict(state_dict, strict=True)
    return model
