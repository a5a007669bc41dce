"""A disk cache of teacher image embeddings for phase 1 (distillation), so that training never runs the teacher.

Layout of a cache folder (written by ``tools/sam_cache_teacher_embeddings.py``):

* ``meta.json``: the teacher, its input size, the embedding shape and dtype, the shard size, whether flipped
  images were embedded too, the dataset's length;
* per shard ``k`` (images ``k * shard_size`` ... of the dataset, in its order): ``shard_<k>.npy``
  ``(n, 256, 64, 64)``, ``shard_<k>_hflip.npy`` (the horizontally flipped images, with ``--hflip``) and
  ``shard_<k>.json`` (the image ids of the rows, and the ids that could not be read). The json is written last
  and every file is written under a temporary name then renamed, so a shard exists completely or not at all:
  an interrupted run resumes by skipping the shards that exist.

ViT-H embeddings take 2 MiB per image in float16 (4 MiB in float32; 256 x 64 x 64 values).

Opening a cache (:class:`EmbeddingCache`) checks every shard's arrays against ``meta.json`` by their ``.npy``
headers and sizes (no data is read): a truncated file, a shard of another shape (e.g. a 32x32 teacher grid in a
cache of 64x64 targets) or dtype, or one row count that does not match its index stops with a
:class:`BadCacheShard` error naming the file and the command that rebuilds that shard.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ['EmbeddingCache', 'BadCacheShard', 'shard_files', 'write_shard', 'read_meta', 'write_meta',
           'rebuild_command']

META = 'meta.json'
TOOL = 'tools/sam_cache_teacher_embeddings.py'


class BadCacheShard(ValueError):
    """A shard of a teacher-embedding cache does not match its ``meta.json`` (truncated, wrong shape or dtype)."""


def shard_files(root: str, k: int) -> Dict[str, str]:
    base = osp.join(root, f'shard_{k:06d}')
    return {'emb': base + '.npy', 'hflip': base + '_hflip.npy', 'index': base + '.json'}


def _save_npy(path: str, array: np.ndarray) -> None:
    tmp = path + '.tmp.npy'
    np.save(tmp, array)
    os.replace(tmp, path)


def write_shard(root: str, k: int, ids: List[str], embeddings: np.ndarray, hflip: Optional[np.ndarray] = None,
                skipped: Optional[List[str]] = None) -> None:
    """Write shard ``k`` atomically (arrays first, the index json last)."""
    files = shard_files(root, k)
    if len(ids) != len(embeddings) or (hflip is not None and len(hflip) != len(ids)):
        raise ValueError('one embedding per id expected')
    _save_npy(files['emb'], embeddings)
    if hflip is not None:
        _save_npy(files['hflip'], hflip)
    tmp = files['index'] + '.tmp'
    with open(tmp, 'w') as f:
        json.dump({'ids': list(ids), 'skipped': list(skipped or [])}, f)
    os.replace(tmp, files['index'])


def read_meta(root: str) -> dict:
    path = osp.join(root, META)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{root} is not a teacher-embedding cache (no {META}); build one with '
                                'tools/sam_cache_teacher_embeddings.py')
    with open(path) as f:
        return json.load(f)


def write_meta(root: str, meta: dict) -> None:
    os.makedirs(root, exist_ok=True)
    path = osp.join(root, META)
    if osp.isfile(path):
        old = read_meta(root)
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise ValueError(f'{root} holds a cache built with other settings (old, new): {diff}; use another '
                             'folder or delete it')
        return
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, path)


def rebuild_command(root: str, k: int, meta: dict) -> str:
    """The commands that rebuild shard ``k`` of the cache in ``root`` alone: delete its files, then run the cache
    tool on that one shard (``--part k --num-parts <number of shards>`` selects exactly shard ``k``)."""
    num_shards = -(-int(meta['num_images']) // int(meta['shard_size']))
    flags = f"--shard-size {meta['shard_size']} --dtype {meta['dtype']}" + (' --hflip' if meta.get('hflip') else '')
    base = osp.join(root, f'shard_{k:06d}')
    return (f'rm -f {base}.npy {base}_hflip.npy {base}.json && python {TOOL} CONFIG --out {root} {flags} '
            f'--part {k} --num-parts {num_shards}   (CONFIG: the phase-1 config the cache was built with, '
            f'teacher {meta.get("teacher", "?")})')


def _npy_header(path: str):
    """``(shape, dtype, data offset)`` from a ``.npy`` file's header, without reading its data."""
    with open(path, 'rb') as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        return tuple(shape), dtype, f.tell()


def check_shard(root: str, k: int, meta: dict, rows: int) -> None:
    """Raise :class:`BadCacheShard` (naming the file, what is wrong and the rebuild command) unless shard ``k``'s
    arrays are ``(rows, *meta['shape'])`` of ``meta['dtype']`` and their files are complete."""
    files = shard_files(root, k)
    expected_shape, expected_dtype = (rows, *(int(d) for d in meta['shape'])), np.dtype(meta['dtype'])
    for kind in ('emb', 'hflip') if meta.get('hflip') else ('emb', ):
        path = files[kind]
        problem = None
        if not osp.isfile(path):
            problem = 'is missing (its index json exists)'
        else:
            try:
                shape, dtype, offset = _npy_header(path)
            except (ValueError, OSError, SyntaxError) as err:
                problem = f'is not a readable .npy file ({err})'
            else:
                size, needed = os.path.getsize(path), offset + int(np.prod(shape)) * dtype.itemsize
                if shape != expected_shape:
                    problem = (f'holds an array of shape {shape}, but {META} says {expected_shape} ({rows} images of '
                               f'the {"x".join(str(d) for d in meta["shape"])} teacher embedding)')
                elif dtype != expected_dtype:
                    problem = f'holds {dtype}, but {META} says {expected_dtype}'
                elif size < needed:
                    problem = f'is truncated: {size} bytes, {needed} needed for {shape} {dtype}'
        if problem:
            raise BadCacheShard(f'teacher-embedding cache {root}: {path} {problem}. Rebuild that shard:\n  '
                                + rebuild_command(root, k, meta))


class EmbeddingCache:
    """Read access to a cache folder: ``cache.get(img_id)`` -> ``{'teacher_embedding': array(, 'teacher_embedding
    _hflip': array)}``. Shards are memory-mapped on first use in each process (the object pickles without
    them, for dataloader workers)."""

    def __init__(self, root: str):
        self.root = root
        self.meta = read_meta(root)
        self.index: Dict[str, Tuple[int, int]] = {}
        k = 0
        while True:
            files = shard_files(root, k)
            if not osp.isfile(files['index']):
                if not any(osp.isfile(shard_files(root, j)['index']) for j in range(k + 1, self.num_shards)):
                    break
                k += 1
                continue
            with open(files['index']) as f:
                ids = json.load(f)['ids']
            check_shard(root, k, self.meta, len(ids))
            for row, img_id in enumerate(ids):
                self.index[str(img_id)] = (k, row)
            k += 1
        self._maps: Dict[Tuple[int, str], np.ndarray] = {}

    @property
    def num_shards(self) -> int:
        return -(-int(self.meta['num_images']) // int(self.meta['shard_size']))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, img_id) -> bool:
        return str(img_id) in self.index

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_maps'] = {}
        return state

    def _array(self, k: int, kind: str) -> np.ndarray:
        key = (k, kind)
        if key not in self._maps:
            path = shard_files(self.root, k)[kind]
            try:
                self._maps[key] = np.load(path, mmap_mode='r')
            except (ValueError, OSError) as err:  # changed since the cache was opened
                raise BadCacheShard(f'teacher-embedding cache {self.root}: {path} cannot be read ({err}). Rebuild '
                                    f'that shard:\n  {rebuild_command(self.root, k, self.meta)}') from None
        return self._maps[key]

    def get(self, img_id) -> Dict[str, np.ndarray]:
        img_id = str(img_id)
        if img_id not in self.index:
            raise KeyError(f'image {img_id} is not in the teacher-embedding cache {self.root} ({len(self)} images); '
                           'complete it with tools/sam_cache_teacher_embeddings.py (it resumes where it stopped)')
        k, row = self.index[img_id]
        out = {'teacher_embedding': np.array(self._array(k, 'emb')[row], dtype=np.float32)}
        if self.meta.get('hflip'):
            out['teacher_embedding_hflip'] = np.array(self._array(k, 'hflip')[row], dtype=np.float32)
        return out
