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
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ['EmbeddingCache', 'shard_files', 'write_shard', 'read_meta', 'write_meta']

META = 'meta.json'


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
                for row, img_id in enumerate(json.load(f)['ids']):
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
            self._maps[key] = np.load(shard_files(self.root, k)[kind], mmap_mode='r')
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
