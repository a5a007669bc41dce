"""mmengine 0.10.7 + torch >= 2.6: loading mmengine's own local checkpoints, and downloads, safely.

mmengine 0.10.7 calls ``torch.load(filename, map_location)`` for local files. Since torch 2.6 that means
``weights_only=True``, and an mmengine checkpoint holds more than tensors: its ``message_hub`` pickles
``HistoryBuffer`` objects (with numpy arrays, ``bytes`` and a ``getattr(HistoryBuffer, 'min')`` reference), so
``resume``, ``load_from`` and ``mim test`` fail with ``UnpicklingError: Weights only load failed``. mmengine fixed
it on its unreleased main branch by switching local loads to ``weights_only=False``. Downloads (``http(s)://``,
``torchvision://``, ``open-mmlab://``, ``mmcls://``) go through ``torch.hub.load_state_dict_from_url``, whose
default is ``weights_only=False``: a downloaded ``Pretrained`` file is unpickled with full trust.

evit_mm keeps ``weights_only=True`` everywhere and allow-lists exactly what mmengine writes: ``HistoryBuffer``,
the numpy array/scalar/dtype reconstructors, ``bytes``, and a ``getattr`` that only resolves ``HistoryBuffer``'s
statistics methods. The loaders are installed through mmengine's public ``CheckpointLoader.register_scheme(...,
force=True)``, so they affect mmengine's checkpoint loads only, never ``torch.load`` elsewhere. Downloads are
saved where torch.hub saves them and then loaded like a local file. A checkpoint that needs more (pickled custom
classes) fails with a message naming the file and the globals; only the files listed (by path) in
``EVIT_MM_TRUST_CHECKPOINTS`` are then loaded with ``weights_only=False``.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
from urllib.parse import urlparse

import numpy as np
import torch

from ...models.checkpoint import torch_load_file

TRUST_ENV = 'EVIT_MM_TRUST_CHECKPOINTS'

#: Values that used to mean "trust every file": now refused with an explanation.
_TRUST_ALL_VALUES = frozenset({'1', 'true', 'yes', 'on', 'all', '*'})

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
    from ...models.checkpoint import CHECKPOINT_SAFE_GLOBALS  # argparse.Namespace of the official trainers
    # bytes: an empty HistoryBuffer pickles its numpy arrays' empty buffers as builtins.bytes
    return [_history_buffer(), *_numpy_globals(), *CHECKPOINT_SAFE_GLOBALS, bytes,
            (_restricted_getattr, 'builtins.getattr')]


def trusted_checkpoints() -> list[str]:
    """The real paths listed in ``EVIT_MM_TRUST_CHECKPOINTS`` (``os.pathsep``-separated)."""
    value = os.environ.get(TRUST_ENV, '')
    return [osp.realpath(osp.expanduser(p)) for p in value.split(os.pathsep) if p.strip()]


def is_trusted(filename: str) -> bool:
    """Whether ``filename`` is one of the files listed in ``EVIT_MM_TRUST_CHECKPOINTS``."""
    return osp.realpath(osp.expanduser(filename)) in trusted_checkpoints()


def _refusal(filename: str, err: pickle.UnpicklingError) -> pickle.UnpicklingError:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(filename)
    except Exception:  # noqa: BLE001 - only used to improve the message
        unsafe = []
    what = f' ({", ".join(unsafe)})' if unsafe else ''
    real = osp.realpath(filename)
    value = os.environ.get(TRUST_ENV, '')
    if value.strip().lower() in _TRUST_ALL_VALUES:
        advice = (f'{TRUST_ENV}={value} no longer trusts every file: it is a list of the files you trust, '
                  f'separated by "{os.pathsep}". If you trust this one: {TRUST_ENV}={real}')
    else:
        advice = f'If you trust this file, list it: {TRUST_ENV}={real} (several files separated by "{os.pathsep}")'
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first = next((line for line in lines if 'Unsupported global' in line or 'WeightsUnpickler' in line),
                 lines[0] if lines else type(err).__name__)
    return pickle.UnpicklingError(f'{filename} holds Python objects that a weights-only load refuses{what}. '
                                  f'{advice}; it is then loaded with weights_only=False, which can run code '
                                  f'from the file. Original error: {first}')


def load_local_checkpoint(filename, map_location=None):
    """Load a local checkpoint the way mmengine's ``load_from_local`` should on torch >= 2.6.

    ``weights_only=True`` with :func:`mmengine_safe_globals`; a file listed in ``EVIT_MM_TRUST_CHECKPOINTS``
    that needs more is loaded with ``weights_only=False``. Empty or truncated files raise
    :class:`~evit_mm.models.checkpoint.CheckpointFileError` naming the file.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        try:
            return torch_load_file(filename, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            if is_trusted(filename):
                return torch_load_file(filename, map_location=map_location, weights_only=False)
            raise _refusal(filename, err) from err


def rank0_first(fetch):
    """``fetch()`` on rank 0 first, then (after a barrier) on the other ranks, which find its result cached."""
    from mmengine.dist import get_dist_info
    rank, world_size = get_dist_info()
    result = fetch() if rank == 0 else None
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            result = fetch()
    return result


def _download(url: str, model_dir: str | None = None) -> str:
    """Download ``url`` into torch.hub's checkpoint folder (once; local rank 0 first) and return the path."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(url).path))

    def fetch():
        if not osp.isfile(cached):
            os.makedirs(model_dir, exist_ok=True)
            torch.hub.download_url_to_file(url, cached, progress=os.isatty(2))
        return cached

    return rank0_first(fetch)


def load_http_checkpoint(filename, map_location=None, model_dir=None):
    """mmengine's ``http(s)://`` loader, weights-only: the download is loaded by :func:`load_local_checkpoint`."""
    return load_local_checkpoint(_download(filename, model_dir), map_location)


def _zoo_loader(scheme: str):
    """A loader for ``torchvision://`` / ``open-mmlab://`` / ``mmcls://`` names that downloads weights-only."""
    from mmengine.runner import checkpoint as mmckpt

    def load(filename, map_location=None):
        prefix = next(p for p in _ZOO_PREFIXES[scheme] if filename.startswith(p))
        name = filename[len(prefix):]
        if scheme == 'torchvision':
            urls = mmckpt.get_torchvision_models()
        elif scheme == 'mmcls':
            urls = mmckpt.get_mmcls_models()
        else:
            urls = mmckpt.get_external_models()
            name = mmckpt.get_deprecated_model_names().get(name, name)
        url = urls[name]
        if url.startswith(('http://', 'https://')):
            checkpoint = load_http_checkpoint(url, map_location)
        else:  # open-mmlab:// names that point into the mmengine home folder
            checkpoint = load_local_checkpoint(osp.join(mmckpt._get_mmengine_home(), url), map_location)
        return mmckpt._process_mmcls_checkpoint(checkpoint) if scheme == 'mmcls' else checkpoint

    load.__name__ = f'load_from_{scheme}_weights_only'  # mmengine logs "Loads checkpoint by <name[10:]> backend"
    return load


def load_from_local_weights_only(filename, map_location=None):
    """:func:`load_local_checkpoint`, under the name mmengine's log line expects (``load_from_<backend>``)."""
    return load_local_checkpoint(filename, map_location)


def load_from_http_weights_only(filename, map_location=None):
    """:func:`load_http_checkpoint`, under the name mmengine's log line expects (``load_from_<backend>``)."""
    return load_http_checkpoint(filename, map_location)


_ZOO_PREFIXES = {'torchvision': ('modelzoo://', 'torchvision://'), 'open-mmlab': ('open-mmlab://', 'openmmlab://'),
                 'mmcls': ('mmcls://',)}


_PATCHED = False


def patch_mmengine_checkpoint() -> bool:
    """Register :func:`load_local_checkpoint` as mmengine's loader for local paths, and weights-only loaders for
    downloads. Returns False if mmengine is not installed. Idempotent."""
    global _PATCHED
    if _PATCHED:
        return True
    try:
        from mmengine.runner.checkpoint import CheckpointLoader
    except ImportError:
        return False
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http_weights_only, force=True)
    for scheme, prefixes in _ZOO_PREFIXES.items():
        CheckpointLoader.register_scheme(prefixes=prefixes, loader=_zoo_loader(scheme), force=True)
    from ..weights import load_from_evit  # evit://NAME: evit_mm's published checkpoints by name
    CheckpointLoader.register_scheme(prefixes='evit://', loader=load_from_evit, force=True)
    _PATCHED = True
    return True
