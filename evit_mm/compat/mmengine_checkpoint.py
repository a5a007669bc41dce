"""mmengine 0.10.7 + torch >= 2.6: loading mmengine's own local checkpoints.

mmengine 0.10.7 calls ``torch.load(filename, map_location)`` for local files. Since torch 2.6 that means
``weights_only=True``, and an mmengine checkpoint holds more than tensors: its ``message_hub`` pickles
``HistoryBuffer`` objects (with numpy arrays and a ``getattr(HistoryBuffer, 'min')`` reference), so ``resume``,
``load_from`` and ``mim test`` fail with ``UnpicklingError: Weights only load failed``. mmengine fixed it on its
unreleased main branch by switching local loads to ``weights_only=False``.

evit_mm keeps ``weights_only=True`` and allow-lists exactly what mmengine writes: ``HistoryBuffer``, the numpy
array/scalar/dtype reconstructors, and a ``getattr`` that only resolves ``HistoryBuffer``'s statistics methods.
The loader is installed through mmengine's public ``CheckpointLoader.register_scheme(prefixes='', force=True)``,
so it affects mmengine's local-file loads only, never ``torch.load`` elsewhere. A checkpoint that needs more
(pickled custom classes) fails with a message naming the globals; ``EVIT_MM_TRUST_CHECKPOINTS=1`` loads such a
file, which you trust, with ``weights_only=False``.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle

import numpy as np
import torch

TRUST_ENV = 'EVIT_MM_TRUST_CHECKPOINTS'

#: Statistics methods that mmengine's HistoryBuffer registers on itself (pickled by reference through getattr).
_HISTORY_BUFFER_METHODS = frozenset({'min', 'max', 'mean', 'current'})


def _numpy_globals():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:
        from numpy.core import multiarray
    found = [np.ndarray, np.dtype, multiarray.scalar, multiarray._reconstruct]
    dtypes = getattr(np, 'dtypes', None)  # numpy >= 1.25 pickles dtypes as np.dtypes.<Name>DType
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith('DType')]
    return found


def _history_buffer():
    from mmengine.logging.history_buffer import HistoryBuffer
    return HistoryBuffer


def _restricted_getattr(obj, name, *default):
    """Stands in for ``builtins.getattr`` while unpickling: only ``HistoryBuffer.<statistics method>``."""
    buffer_cls = _history_buffer()
    if obj is buffer_cls and (name in _HISTORY_BUFFER_METHODS or name in buffer_cls._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a weights-only checkpoint')


def mmengine_safe_globals():
    """The allow-list for mmengine checkpoints, for ``torch.serialization.safe_globals``."""
    from ..models.checkpoint import CHECKPOINT_SAFE_GLOBALS  # argparse.Namespace of the official trainers
    return [_history_buffer(), *_numpy_globals(), *CHECKPOINT_SAFE_GLOBALS,
            (_restricted_getattr, 'builtins.getattr')]


def load_local_checkpoint(filename, map_location=None):
    """Load a local checkpoint the way mmengine's ``load_from_local`` should on torch >= 2.6."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    if os.environ.get(TRUST_ENV) == '1':
        return torch.load(filename, map_location=map_location, weights_only=False)
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        try:
            return torch.load(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
            except Exception:  # noqa: BLE001 - only used to improve the message
                unsafe = []
            raise pickle.UnpicklingError(
                f'{filename} holds Python objects that a weights-only load refuses'
                + (f' ({", ".join(unsafe)})' if unsafe else '') + '. If you trust this file, load it with '
                f'{TRUST_ENV}=1 (weights_only=False). Original error: {err}') from err


_PATCHED = False


def patch_mmengine_checkpoint() -> bool:
    """Register :func:`load_local_checkpoint` as mmengine's loader for local paths. Returns False if mmengine
    is not installed. Idempotent."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError:
        return False
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
    _PATCHED = True
    return True
