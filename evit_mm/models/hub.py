"""Published weights, fetched by name: download, check, cache (pure Python + torch; no mm imports).

Where a file comes from and where it is kept follows what users of timm and torchvision already know:

- **Hugging Face files** (MIT's classification, segmentation and SAM checkpoints) go through
  ``huggingface_hub.hf_hub_download`` into the Hugging Face cache (``$HF_HOME/hub``, default
  ``~/.cache/huggingface/hub``), honouring ``HF_HOME``, ``HF_HUB_OFFLINE=1`` and ``HF_ENDPOINT`` (another server,
  e.g. a mirror).
- **Other files** (Cream's GitHub release assets, Meta's SAM ViT checkpoints) go through torch.hub's
  ``download_url_to_file`` into ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), like
  ``torch.hub.load_state_dict_from_url``. ``EVIT_MM_URL_BASE`` replaces the scheme and host of these URLs (a
  mirror; the tests point it at a local server).
- ``EVIT_MM_WEIGHTS_DIR``: a folder of weights you already have, looked in first (files under their published
  names). A file copied to ``$TORCH_HOME/hub/checkpoints/<published name>`` is found too, whatever its source.

Every download is atomic: it is written under a temporary name, checked (the sha256 where it is known, e.g. the
prefix in segment_anything's file names; that it is a PyTorch checkpoint at all) and only then becomes a cache
entry, so a dropped connection or an HTML error page never poses as weights. A failure raises
:class:`WeightsUnavailableError` naming the URL, the exact path to put the file at, and ``EVIT_MM_WEIGHTS_DIR``.
"""
from __future__ import annotations

import hashlib
import os
import os.path as osp
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

__all__ = ['Weights', 'WeightsUnavailableError', 'fetch', 'fetch_url', 'cache_path', 'WEIGHTS_DIR_ENV',
           'URL_BASE_ENV', 'is_checkpoint_file']

WEIGHTS_DIR_ENV = 'EVIT_MM_WEIGHTS_DIR'
URL_BASE_ENV = 'EVIT_MM_URL_BASE'
_HF_HOST = 'https://huggingface.co/'


@dataclass(frozen=True)
class Weights:
    """One published checkpoint file.

    Args:
        tag: its name within the model (``'in1k'``, ``'r288'``, ``'cityscapes'``, ``'sa1b'``, ``'coco'``).
        url: where it is published. ``https://huggingface.co/<repo>/resolve/main/<file>`` URLs are fetched
            through ``huggingface_hub``, every other one through torch.hub.
        fmt: its layout (what :meth:`~evit_mm.models.contract.LoadsPretrained.load_pretrained` recognises).
        sha256: the start (or all) of its sha256, where published.
        metrics: the published results of this file (``{'top1': 77.1}``, ``{'mIoU': 80.547}`` ...).
        resolution: the input size it was trained / evaluated at.
        source: where the numbers come from.
    """

    tag: str
    url: str
    fmt: str
    sha256: Optional[str] = None
    metrics: dict = field(default_factory=dict)
    resolution: Any = None
    source: str = ''

    @property
    def filename(self) -> str:
        return osp.basename(urlparse(self.url).path)

    @property
    def hf_file(self) -> Optional[tuple[str, str]]:
        """``(repo_id, filename)`` for a Hugging Face file, else None."""
        if not self.url.startswith(_HF_HOST):
            return None
        repo, sep, filename = self.url[len(_HF_HOST):].partition('/resolve/main/')
        return (repo, filename) if sep else None


class WeightsUnavailableError(RuntimeError):
    """The weights could not be fetched (offline, a failed or refused download); the message says what to do."""


def _torch_hub_dir() -> str:
    import torch.hub
    return osp.join(torch.hub.get_dir(), 'checkpoints')


def cache_path(weights: Weights) -> str:
    """Where a copy of ``weights`` is found without any download: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return osp.join(_torch_hub_dir(), weights.filename)


def is_checkpoint_file(path: str) -> Optional[str]:
    """None if ``path`` looks like a complete PyTorch/safetensors checkpoint, else why not (cheap: reads the zip's
    central directory, which a truncated file lacks, or the first bytes)."""
    size = osp.getsize(path)
    if size == 0:
        return 'it is empty'
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            return f'its zip archive is damaged ({err})'
        return None if any(n.endswith('data.pkl') for n in names) else 'it is a zip file but not a PyTorch checkpoint'
    with open(path, 'rb') as f:
        head = f.read(16)
    if head.startswith(b'PK\x03\x04'):
        return (f'it is truncated: a zip archive ({size} bytes) without its end, as an interrupted download leaves '
                'it')
    if path.endswith('.safetensors') and size > 8:
        header = int.from_bytes(head[:8], 'little')
        return None if 8 + header <= size else 'its safetensors header points past the end (truncated)'
    if head[:1] == b'\x80':  # a pickle: the legacy (pre-1.6) torch.save format
        return None
    text = head.lstrip()[:1]
    what = 'an HTML/text page' if text in (b'<', b'{', b'E', b'N') else f'{size} bytes that are no checkpoint'
    return f'it is {what}, not a PyTorch checkpoint (the start: {head[:16]!r}); the download or the file is wrong'


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: str, weights: Weights) -> None:
    problem = is_checkpoint_file(path)
    if problem is None and weights.sha256:
        found = _sha256(path)
        if not found.startswith(weights.sha256):
            problem = f'its sha256 is {found}, the published file\'s starts with {weights.sha256}'
    if problem:
        raise WeightsUnavailableError(f'refused, not cached: {problem}')


def _mirror(url: str) -> str:
    base = os.environ.get(URL_BASE_ENV, '').rstrip('/')
    if not base:
        return url
    parsed = urlparse(url)
    return base + parsed.path + (f'?{parsed.query}' if parsed.query else '')


def _offline() -> bool:
    return os.environ.get('HF_HUB_OFFLINE', '').strip().lower() in ('1', 'true', 'yes', 'on')


def _advice(weights: Weights, url: str, reason: str, name: str) -> WeightsUnavailableError:
    offline = ' (HF_HUB_OFFLINE is set)' if _offline() else ''
    return WeightsUnavailableError(
        f'cannot get the weights of {name} ({weights.filename}){offline}: {reason}\n'
        f'  URL: {url}\n'
        f'  If you have the file, put it at\n    {cache_path(weights)}\n'
        f'  or in a folder of weights named by {WEIGHTS_DIR_ENV} (e.g. {WEIGHTS_DIR_ENV}=/data/weights with '
        f'/data/weights/{weights.filename}).')


def _local_copy(weights: Weights) -> Optional[str]:
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    for candidate in ([osp.join(osp.expanduser(folder), weights.filename)] if folder else []) + [cache_path(weights)]:
        if osp.isfile(candidate):
            return candidate
    return None


def _hf_cache() -> str:
    """The Hugging Face hub cache, read at call time (huggingface_hub reads its variables once, at import)."""
    return os.environ.get('HF_HUB_CACHE') or osp.join(
        os.environ.get('HF_HOME') or osp.join(os.environ.get('XDG_CACHE_HOME') or osp.expanduser('~/.cache'),
                                              'huggingface'), 'hub')


def _download_hf(weights: Weights) -> str:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    repo, filename = weights.hf_file
    cached = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache())
    if isinstance(cached, str) and osp.isfile(cached):  # a cache hit sends no request at all (timm's behaviour)
        return cached
    path = hf_hub_download(repo, filename, cache_dir=_hf_cache(), endpoint=os.environ.get('HF_ENDPOINT') or None,
                           local_files_only=_offline())
    try:
        _verify(path, weights)
    except WeightsUnavailableError:
        _forget_hf(path)
        raise
    return path


def _forget_hf(path: str) -> None:
    """Remove a refused file from the Hugging Face cache (its snapshot link and the blob it points to)."""
    blob = osp.realpath(path)
    for p in (path, blob):
        if osp.lexists(p):
            os.remove(p)


def _download_torch_hub(weights: Weights, url: str, progress: bool) -> str:
    from torch.hub import download_url_to_file
    dst = cache_path(weights)
    os.makedirs(osp.dirname(dst), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{weights.filename}.', suffix='.partial', dir=osp.dirname(dst))
    os.close(fd)
    try:
        download_url_to_file(url, tmp, progress=progress)
        _verify(tmp, weights)
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return dst


def fetch(weights: Weights, name: str = '', progress: Optional[bool] = None) -> str:
    """The local path of ``weights``: a copy in ``EVIT_MM_WEIGHTS_DIR`` or ``$TORCH_HOME/hub/checkpoints``, the
    Hugging Face cache, or a download (progress bar on a terminal). Raises :class:`WeightsUnavailableError`."""
    name = name or weights.filename
    progress = os.isatty(2) if progress is None else progress
    local = _local_copy(weights)
    if local:
        return local
    url = weights.url if weights.hf_file else _mirror(weights.url)
    if weights.hf_file:
        endpoint = os.environ.get('HF_ENDPOINT', '').rstrip('/')
        if endpoint:
            url = endpoint + weights.url[len(_HF_HOST) - 1:]
    try:
        if weights.hf_file:
            return _download_hf(weights)
        if _offline():
            raise OSError('offline mode: no download was tried')
        return _download_torch_hub(weights, url, progress)
    except WeightsUnavailableError as err:
        raise _advice(weights, url, str(err), name) from None
    except Exception as err:  # noqa: BLE001 - network, HTTP and hub errors all end here, with the advice
        reason = f'{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ""}'
        raise _advice(weights, url, reason, name) from err


def fetch_url(url: str, progress: Optional[bool] = None) -> str:
    """A checkpoint at ``url`` (not a registered name), through the same checked, atomic download and cache."""
    return fetch(Weights(tag='url', url=url, fmt='auto'), name=url, progress=progress)
